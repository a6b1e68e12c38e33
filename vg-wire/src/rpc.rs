//! RPC on QUIC: the server accept loop and the client-side dialer.
//!
//! One long-lived connection per peer pair. A request is a frame (plus raw block bytes
//! for uploads); the answer is a frame holding `Result<Response, RemoteError>` (plus raw
//! bytes for reads). A read, and the upload of a large block, has a bidirectional stream
//! of its own, which the client finishes after its request; any other request
//! ([`Dialer::call`], a small block's upload) goes on a stream kept from an earlier one
//! when there is one, and a server that serves several requests per stream ([`at_end`])
//! keeps it open after its answer: a stream per request cost each call 7 to 12 µs of CPU
//! (BENCHMARKS.md, stops 28 and 31).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info_span, warn, Instrument};

use crate::codec;
use crate::error::{Error, ErrorCode, RemoteError, Result};
use crate::storage;
use crate::types::{BlockId, Location, Role};

/// An authenticated peer: who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Common name of its certificate.
    pub name: String,
    /// Role its certificate grants.
    pub role: Role,
    /// Its address.
    pub addr: SocketAddr,
}

impl Peer {
    /// Refuses unless the peer has `role`.
    pub fn require(&self, role: Role, op: &str) -> std::result::Result<(), RemoteError> {
        if self.role == role {
            Ok(())
        } else {
            warn!(peer = %self.name, addr = %self.addr, role = %self.role, op, "refused: needs the {role} role");
            Err(RemoteError::new(
                crate::error::ErrorCode::Forbidden,
                format!(
                    "{op}: refused for {} ({} certificate); needs a {role} certificate",
                    self.name, self.role
                ),
            ))
        }
    }
}

/// Accepts connections until the endpoint is closed; calls `handler` on its own task for
/// every bidirectional stream. Handshake failures (foreign CA, no certificate, expired,
/// wrong protocol) are logged with the peer address and reason, and never reach `handler`.
pub async fn serve<F, Fut>(endpoint: Endpoint, handler: F)
where
    F: Fn(Arc<Peer>, SendStream, RecvStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(%addr, reason = %e, "refused connection: handshake failed");
                    return;
                }
            };
            let peer = match crate::tls::peer_identity(&conn) {
                Ok((name, role)) => Arc::new(Peer { name, role, addr }),
                Err(reason) => {
                    warn!(%addr, %reason, "refused connection: unusable certificate");
                    conn.close(1u32.into(), b"unusable certificate");
                    return;
                }
            };
            let span = info_span!("conn", peer = %peer.name, role = %peer.role, %addr);
            async move {
                debug!("connected");
                loop {
                    match conn.accept_bi().await {
                        Ok((send, recv)) => {
                            tokio::spawn(
                                handler.clone()(peer.clone(), send, recv).in_current_span(),
                            );
                        }
                        Err(e) => {
                            debug!(reason = %e, "connection ended");
                            break;
                        }
                    }
                }
            }
            .instrument(span)
            .await;
        });
    }
}

/// What a server must know of a request before it runs it.
pub trait Operation {
    /// Its name, for logs and refusals.
    fn name(&self) -> &'static str;
    /// The role a peer's certificate must grant to ask it (`None`: any peer of the
    /// cluster).
    fn role(&self) -> Option<Role>;
}

/// Reads a request frame: the front door of both servers. A malformed one is answered
/// here (`Version` for another protocol version, `Invalid` otherwise), as is one the
/// peer's role may not ask (`Forbidden`), and logged, and `None` comes back; `A` is the
/// server's answer type.
pub async fn read_request<Q: DeserializeOwned + Operation, A: Serialize>(
    peer: &Peer,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Option<Q> {
    match codec::read_frame_or_end::<_, Q>(recv).await {
        // The client is done with a stream it kept.
        Ok(None) => None,
        Ok(Some(request)) => match request
            .role()
            .map(|role| peer.require(role, request.name()))
        {
            Some(Err(refusal)) => {
                respond::<A>(send, Err(refusal)).await;
                None
            }
            _ => Some(request),
        },
        Err(e) => {
            warn!(peer = %peer.name, addr = %peer.addr, reason = %e, "refused malformed request");
            let code = match e {
                Error::Version { .. } => ErrorCode::Version,
                _ => ErrorCode::Invalid,
            };
            respond::<A>(send, Err(RemoteError::new(code, e.to_string()))).await;
            None
        }
    }
}

/// Sends the answer to a request and finishes the stream.
pub async fn respond<T: Serialize>(
    send: &mut SendStream,
    answer: std::result::Result<T, RemoteError>,
) {
    reply(send, answer, true).await;
}

/// Sends the answer to a request, and finishes the stream if it is the `last` on it.
pub async fn reply<T: Serialize>(
    send: &mut SendStream,
    answer: std::result::Result<T, RemoteError>,
    last: bool,
) {
    if let Err(e) = codec::write_frame(send, &answer).await {
        debug!(reason = %e, "could not send answer");
    }
    if last {
        let _ = send.finish();
    }
}

/// Whether the peer has finished its side of the stream, polled once without waiting;
/// for a server, right after a request of frames only: a client that sends one request
/// per stream finishes it with the request (its end comes in the same packet), one that
/// keeps the stream does not, and is answered without the end. Call it only where the
/// peer sends nothing more unasked: data found is dropped.
pub async fn at_end(recv: &mut RecvStream) -> bool {
    // Polled once, not under a timeout of zero: tokio's timer fires at its next tick, so
    // a read that is not ready (a kept stream) waited a millisecond for it.
    let mut read = std::pin::pin!(recv.read_chunk(usize::MAX, true));
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(matches!(
            read.as_mut().poll(cx),
            std::task::Poll::Ready(Ok(None))
        ))
    })
    .await
}

/// Reads the end of a stream whose data has all been read, if it is there already (it
/// comes in the packet with the last data). Dropping a receive stream before its end
/// makes quinn send STOP_SENDING: one more packet that needs acknowledging per request,
/// each way, and with two of them the peer acknowledges at once instead of with its next
/// packet. Requests took four datagrams instead of two.
pub async fn read_end(recv: &mut RecvStream) {
    at_end(recv).await;
}

/// Reads an answer frame and turns a remote error into [`Error::Remote`].
pub async fn read_answer<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T> {
    let answer: std::result::Result<T, RemoteError> = codec::read_frame(recv).await?;
    Ok(answer?)
}

/// A peer to dial: its certificate name, role and address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Expected certificate name; also the TLS server name.
    pub name: String,
    /// Expected role.
    pub role: Role,
    /// Address to dial.
    pub addr: SocketAddr,
}

impl Target {
    /// The storage at a location.
    pub fn storage(location: &Location) -> Self {
        Target {
            name: location.name.clone(),
            role: Role::Storage,
            addr: location.addr,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}@{}", self.role, self.name, self.addr)
    }
}

/// The nameserver group as its clients and storages see it: its members, the one that
/// answered last (the leader, as far as they know), and those that could not be reached
/// lately (skipped while another may answer: dialling a dead member costs a timeout).
#[derive(Clone, Debug)]
pub struct Nameservers {
    members: Arc<[Target]>,
    leader: Arc<std::sync::atomic::AtomicUsize>,
    /// Until when each member is taken for dead.
    dead_until: Arc<Mutex<Vec<Option<std::time::Instant>>>>,
}

/// The pause before asking a nameserver that asked to be asked again.
const TRY_AGAIN: Duration = Duration::from_millis(20);

/// How long a member that could not be reached is skipped: about the time a killed
/// member takes to start again, so that one that came back is asked soon.
const DEAD_FOR: Duration = Duration::from_millis(1500);

impl Nameservers {
    /// A group of `members` (at least one).
    pub fn new(members: Vec<Target>) -> Self {
        assert!(!members.is_empty(), "a nameserver group has members");
        Nameservers {
            dead_until: Arc::new(Mutex::new(vec![None; members.len()])),
            members: members.into(),
            leader: Arc::default(),
        }
    }

    /// The member to ask, and its position (for [`Nameservers::passed_over`]).
    pub fn current(&self) -> (usize, &Target) {
        let at = self.leader.load(std::sync::atomic::Ordering::Relaxed) % self.members.len();
        (at, &self.members[at])
    }

    /// Moves on from member `at`, which does not lead or (`unreachable`) could not be
    /// reached, to the next one not taken for dead (unless another call moved on
    /// already).
    pub fn passed_over(&self, at: usize, unreachable: bool) {
        let now = std::time::Instant::now();
        let mut dead = self.dead_until.lock().expect("nameservers lock");
        if unreachable {
            dead[at] = Some(now + DEAD_FOR);
        }
        let n = self.members.len();
        let next = (1..=n)
            .map(|step| (at + step) % n)
            .find(|&i| dead[i].is_none_or(|until| until <= now))
            .unwrap_or((at + 1) % n);
        let _ = self.leader.compare_exchange(
            at,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Sends `request` to the group's leader: while the member asked does not lead or
    /// cannot be reached, asks the next, pausing after each round of them all, until
    /// `patience` has passed; then the last failure. The pause starts at 50 ms and
    /// doubles up to a second while members cannot be reached, but stays short while
    /// they answer that they do not lead: an election or a new leader's first moments
    /// take a fraction of a second.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        dialer: &Dialer,
        request: &Req,
        patience: Duration,
    ) -> Result<Resp> {
        let deadline = std::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(50);
        for tried in 1.. {
            let (at, target) = self.current();
            match dialer.call(target, request).await {
                // The leader, not ready yet: the same member again, shortly.
                Err(e) if e.is_try_again() => {
                    if std::time::Instant::now() + TRY_AGAIN >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(TRY_AGAIN).await;
                }
                Err(e) if e.is_transport() || e.is_not_leader() => {
                    debug!(nameserver = %target.addr, error = %e, "asking the next nameserver");
                    let cap = match e.is_transport() {
                        true => {
                            dialer.forget(target);
                            Duration::from_secs(1)
                        }
                        false => Duration::from_millis(100),
                    };
                    self.passed_over(at, e.is_transport());
                    if tried % self.members.len() == 0 {
                        pause = pause.min(cap);
                        if std::time::Instant::now() + pause >= deadline {
                            return Err(e);
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(cap);
                    }
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }
}

impl std::fmt::Display for Nameservers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<String> = self.members.iter().map(|t| t.addr.to_string()).collect();
        write!(f, "{}", addrs.join(","))
    }
}

/// Dials peers and keeps one connection per peer for reuse.
#[derive(Clone)]
pub struct Dialer {
    endpoint: Endpoint,
    /// For peers elsewhere.
    config: quinn::ClientConfig,
    /// For peers on this machine (see [`crate::tls::transport`]).
    loopback: quinn::ClientConfig,
    conns: Arc<Mutex<HashMap<Target, Connection>>>,
    /// Streams whose peer answered a request and kept them open, for the next requests
    /// to it (at most [`KEPT_PER_PEER`] each).
    kept: Arc<Mutex<HashMap<Target, Vec<Kept>>>>,
    /// Bound on connecting and on each request.
    pub timeout: Duration,
}

impl Dialer {
    /// A dialer on `endpoint` that connects with `config`.
    pub fn new(endpoint: Endpoint, config: quinn::ClientConfig, timeout: Duration) -> Self {
        let mut loopback = config.clone();
        loopback.transport_config(crate::tls::transport(true));
        Dialer {
            endpoint,
            config,
            loopback,
            conns: Arc::default(),
            kept: Arc::default(),
            timeout,
        }
    }

    /// A dialer with this one's configuration on an endpoint of its own, bound like
    /// this one's (same address family, any port), with connections of its own. Made
    /// inside a runtime, its connections are driven by that runtime's threads.
    pub fn rebound(&self) -> Result<Dialer> {
        let local = self.endpoint.local_addr().map_err(|e| Error::Io {
            context: "local address of an endpoint".into(),
            source: e,
        })?;
        Ok(Dialer {
            endpoint: dialing_endpoint(local)?,
            config: self.config.clone(),
            loopback: self.loopback.clone(),
            conns: Arc::default(),
            kept: Arc::default(),
            timeout: self.timeout,
        })
    }

    fn conn_err(target: &Target, reason: impl std::fmt::Display) -> Error {
        Error::Connection {
            peer: target.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The live connection to `target`, dialling it if needed and checking that the
    /// certificate it presents has the expected name and role.
    pub async fn connection(&self, target: &Target) -> Result<Connection> {
        if let Some(conn) = self.conns.lock().expect("dialer lock").get(target) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let config = if target.addr.ip().is_loopback() {
            &self.loopback
        } else {
            &self.config
        };
        let connecting = self
            .endpoint
            .connect_with(config.clone(), target.addr, &target.name)
            .map_err(|e| Self::conn_err(target, e))?;
        let conn = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| Error::Timeout {
                peer: target.to_string(),
                secs: self.timeout.as_secs_f64(),
            })?
            .map_err(|e| Self::conn_err(target, e))?;
        let (name, role) =
            crate::tls::peer_identity(&conn).map_err(|e| Self::conn_err(target, e))?;
        if role != target.role || name != target.name {
            conn.close(1u32.into(), b"unexpected peer");
            return Err(Self::conn_err(
                target,
                format!("presented a certificate for {role} {name}"),
            ));
        }
        self.conns
            .lock()
            .expect("dialer lock")
            .insert(target.clone(), conn.clone());
        Ok(conn)
    }

    /// Opens a request stream to `target`, redialling once if the cached connection died.
    pub async fn open(&self, target: &Target) -> Result<(SendStream, RecvStream)> {
        let Kept { send, recv, .. } = self.open_kept(target).await?;
        Ok((send, recv))
    }

    /// [`Dialer::open`], with the connection the stream is on.
    async fn open_kept(&self, target: &Target) -> Result<Kept> {
        let conn = self.connection(target).await?;
        let (send, recv) = match conn.open_bi().await {
            Ok(streams) => streams,
            Err(_) => {
                self.forget(target);
                let conn = self.connection(target).await?;
                let streams = conn.open_bi().await;
                return streams
                    .map(|(send, recv)| Kept { conn, send, recv })
                    .map_err(|e| Self::conn_err(target, e));
            }
        };
        Ok(Kept { conn, send, recv })
    }

    /// A stream kept for requests to `target`, if one is on a live connection.
    fn take_kept(&self, target: &Target) -> Option<Kept> {
        let mut kept = self.kept.lock().expect("dialer lock");
        let streams = kept.get_mut(target)?;
        std::iter::from_fn(|| streams.pop()).find(|k| k.conn.close_reason().is_none())
    }

    /// Sends a request frame (and `data` after it) on a stream kept for `target`, or a
    /// new one, and reads the answer frame; the stream is kept after it unless the peer
    /// ended it. A peer ends a kept stream after some refusals, and its end may arrive
    /// after the answer that was taken for the last on it: a kept stream that ends
    /// before any answer to the request was never served, and a new one takes it.
    async fn exchange<T: DeserializeOwned>(
        &self,
        target: &Target,
        frame: &[u8],
        data: Option<Bytes>,
    ) -> Result<std::result::Result<T, RemoteError>> {
        loop {
            let (mut stream, reused) = match self.take_kept(target) {
                Some(kept) => (kept, true),
                None => (self.open_kept(target).await?, false),
            };
            let sent = async {
                stream.send.write_all(frame).await?;
                if let Some(data) = data.clone() {
                    stream.send.write_chunk(data).await?;
                }
                Ok::<_, quinn::WriteError>(())
            };
            let answer = match (sent.await, reused) {
                (Ok(()), true) => codec::read_frame_or_end(&mut stream.recv).await?,
                (Ok(()), false) => Some(codec::read_frame(&mut stream.recv).await?),
                (Err(_), true) => None,
                (Err(e), false) => return Err(Self::conn_err(target, e)),
            };
            if let Some(answer) = answer {
                self.keep(target, stream).await;
                return Ok(answer);
            }
            // The connection itself is gone (the peer died): a new stream would redial a
            // dead peer for a timeout, where the caller may ask another.
            if let Some(reason) = stream.conn.close_reason() {
                return Err(Self::conn_err(target, reason));
            }
        }
    }

    /// Keeps a stream whose request was answered for the next request to `target`,
    /// unless the peer ended it with its answer.
    async fn keep(&self, target: &Target, mut stream: Kept) {
        if at_end(&mut stream.recv).await {
            return;
        }
        let mut kept = self.kept.lock().expect("dialer lock");
        let streams = kept.entry(target.clone()).or_default();
        if streams.len() < KEPT_PER_PEER {
            streams.push(stream);
        }
    }

    /// Drops the cached connection to `target` (after a failure), and the streams kept
    /// on it.
    pub fn forget(&self, target: &Target) {
        self.conns.lock().expect("dialer lock").remove(target);
        self.kept.lock().expect("dialer lock").remove(target);
    }

    /// Sends one request and waits for its answer, within the timeout. The request goes
    /// on a stream kept from an earlier call to `target` when there is one, and its stream
    /// is kept after the answer unless the peer ended it. A call given up (timed out,
    /// dropped) drops its stream, which the peer sees as a client gone away.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &Target,
        request: &Req,
    ) -> Result<Resp> {
        let work = async {
            let frame = codec::encode(request)?;
            let answer: std::result::Result<Resp, RemoteError> =
                self.exchange(target, &frame, None).await?;
            Ok(answer?)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                peer: target.to_string(),
                secs: self.timeout.as_secs_f64(),
            }),
        }
    }
}

/// A request stream, and the connection it is on.
struct Kept {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

/// Streams kept per peer: as many as a client has calls to it in flight at once, up to
/// this (each holds a task on the server).
const KEPT_PER_PEER: usize = 64;

/// Blocks up to this size are uploaded on kept streams (a larger one's transfer dwarfs
/// what a stream costs).
const KEPT_BLOCK_MAX: usize = 256 << 10;

/// A server endpoint for `identity` on `addr` (port 0 picks one), and the address it got.
pub fn listen(identity: &crate::tls::Identity, addr: SocketAddr) -> Result<(Endpoint, SocketAddr)> {
    listen_watched(identity, addr).map(|(endpoint, bound, _)| (endpoint, bound))
}

/// [`listen`], and a second handle on the endpoint's UDP socket, to tell whether
/// datagrams wait in it (see [`crate::poll`]).
pub fn listen_watched(
    identity: &crate::tls::Identity,
    addr: SocketAddr,
) -> Result<(Endpoint, SocketAddr, std::net::UdpSocket)> {
    let mut server = identity.server_config()?;
    // Bound to loopback, every peer is on this machine.
    if addr.ip().is_loopback() {
        server.transport_config(crate::tls::transport(true));
    }
    let (endpoint, socket) = endpoint_and_socket(addr, Some(server))?;
    let bound = endpoint.local_addr().map_err(|e| Error::Io {
        context: format!("local address of {addr}"),
        source: e,
    })?;
    Ok((endpoint, bound, socket))
}

/// An endpoint that dials peers of `toward`'s address family, from any port.
pub fn dialing_endpoint(toward: SocketAddr) -> Result<Endpoint> {
    let bind: SocketAddr = match toward.is_ipv4() {
        true => ([0, 0, 0, 0], 0).into(),
        false => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    endpoint(bind, None)
}

/// Makes an endpoint on `addr` that listens when a server config is given (a [`Dialer`]
/// dials from it).
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<Endpoint> {
    endpoint_and_socket(addr, server).map(|(endpoint, _)| endpoint)
}

/// [`endpoint`], and a second handle on its UDP socket.
fn endpoint_and_socket(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<(Endpoint, std::net::UdpSocket)> {
    let bind_err = |e| Error::Io {
        context: format!("bind UDP {addr}"),
        source: e,
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    grow_socket_buffers(&socket);
    let watch = socket.try_clone().map_err(bind_err)?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(crate::tls::LOOPBACK_DATAGRAM)
        .expect("LOOPBACK_DATAGRAM is within QUIC's bounds");
    let endpoint =
        Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime)).map_err(bind_err)?;
    Ok((endpoint, watch))
}

/// Socket buffer size asked for, each way.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Grows the socket's kernel buffers. With the default 208 KiB, a 4 MiB block arriving
/// faster than the runtime drains the socket overflowed it: 1.5% of packets were lost on
/// loopback, each loss shrinking the congestion window, and the losses of larger packets
/// made quinn's path MTU discovery fall back to 1,200 bytes. Root may exceed the
/// `net.core.rmem_max` bound (the `FORCE` options); others get what the bound allows.
fn grow_socket_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let set = |option| {
        // SAFETY: `fd` is an open socket borrowed for the call, and the option value is a
        // c_int that outlives it, with its size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    for (forced, bounded) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !set(forced) && !set(bounded) {
            debug!("could not grow UDP socket buffer (option {bounded})");
        }
    }
}

impl Dialer {
    /// Runs a block transfer to `target` within three request timeouts (a block is larger
    /// than a request).
    async fn transfer<T>(
        &self,
        target: &Target,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.timeout * 3;
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| Error::Timeout {
                peer: target.to_string(),
                secs: limit.as_secs_f64(),
            })?
    }
}

/// Reads bytes `offset..offset+len` of a block from a storage (`len` 0: to the end).
/// Bytes that come with checksums are checked against them, and a whole block must
/// come with them. These are the CRC-32s the storage stored at upload: checking them
/// costs a tenth of re-hashing the block with SHA-256, which took an eighth of the
/// mount's CPU.
pub async fn read_block(
    dialer: &Dialer,
    target: &Target,
    id: BlockId,
    offset: u32,
    len: u32,
) -> Result<Vec<u8>> {
    dialer
        .transfer(target, async {
            let (mut send, mut recv) = dialer.open(target).await?;
            codec::write_frame(&mut send, &storage::Request::Read { id, offset, len }).await?;
            let _ = send.finish();
            let storage::Response::Data { len: got, crcs } = read_answer(&mut recv).await? else {
                return Err(Error::BadFrame {
                    reason: "expected block data".into(),
                });
            };
            let refused = if got > codec::MAX_FRAME || (len != 0 && got != len) {
                Some(format!("{got} bytes for a read of {len} at {offset}"))
            } else if len == 0 && offset == 0 && crcs.is_empty() {
                Some(format!("a whole block of {got} bytes without checksums"))
            } else {
                None
            };
            if let Some(reason) = refused {
                return Err(Error::BadFrame { reason });
            }
            // Chunks as QUIC hands them over, into one buffer that is not zeroed first,
            // checksummed as they come when there are checksums to check.
            let mut data = Vec::with_capacity(got as usize);
            let mut check = (!crcs.is_empty()).then(storage::ChunkCrcs::default);
            while data.len() < got as usize {
                let want = got as usize - data.len();
                match recv.read_chunk(want, true).await {
                    Ok(Some(chunk)) => {
                        data.extend_from_slice(&chunk.bytes);
                        if let Some(check) = &mut check {
                            check.update(&chunk.bytes);
                        }
                    }
                    Ok(None) => {
                        return Err(Dialer::conn_err(target, "stream ended inside the block"))
                    }
                    Err(e) => return Err(Dialer::conn_err(target, e)),
                }
            }
            read_end(&mut recv).await;
            if check.is_some_and(|check| check.finish() != crcs) {
                return Err(Error::Corrupt {
                    peer: target.to_string(),
                });
            }
            Ok(data)
        })
        .await
}

/// Bytes over a buffer that is already shared, without copying it: QUIC keeps a block it
/// sends until the peer acknowledges it, and a copy of every block in flight cost both
/// memory and a `memcpy` per hop.
pub fn share<T: AsRef<[u8]> + Send + Sync + 'static>(data: Arc<T>) -> Bytes {
    struct Owner<T>(Arc<T>);
    impl<T: AsRef<[u8]>> AsRef<[u8]> for Owner<T> {
        fn as_ref(&self) -> &[u8] {
            (*self.0).as_ref()
        }
    }
    Bytes::from_owner(Owner(data))
}

/// Sends an upload request (`Put` or `Forward`) followed by the block's bytes; returns the
/// storages that acknowledged the block. A small block goes on a kept stream, as a
/// [`Dialer::call`] does; a large one on a stream of its own.
pub async fn send_block(
    dialer: &Dialer,
    target: &Target,
    request: &storage::Request,
    data: Bytes,
) -> Result<Vec<String>> {
    dialer
        .transfer(target, async {
            let frame = codec::encode(request)?;
            let answer: std::result::Result<storage::Response, RemoteError> =
                if data.len() <= KEPT_BLOCK_MAX {
                    dialer.exchange(target, &frame, Some(data)).await?
                } else {
                    let (mut send, mut recv) = dialer.open(target).await?;
                    send.write_all(&frame)
                        .await
                        .map_err(|e| Dialer::conn_err(target, e))?;
                    send.write_chunk(data)
                        .await
                        .map_err(|e| Dialer::conn_err(target, e))?;
                    let _ = send.finish();
                    let answer = codec::read_frame(&mut recv).await?;
                    read_end(&mut recv).await;
                    answer
                };
            match answer? {
                storage::Response::Stored { holders } => Ok(holders),
                other => Err(Error::BadFrame {
                    reason: format!("unexpected answer {other:?}"),
                }),
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Ca, Identity, Validity};

    #[test]
    fn the_group_is_asked_in_turn_skipping_members_that_could_not_be_reached() {
        let members = (0..3)
            .map(|i| Target {
                name: format!("ns{i}"),
                role: Role::Nameserver,
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
            })
            .collect();
        let group = Nameservers::new(members);
        assert_eq!(group.current().0, 0);
        group.passed_over(0, true);
        assert_eq!(group.current().0, 1);
        group.passed_over(1, false);
        assert_eq!(group.current().0, 2);
        // The first is skipped while taken for dead.
        group.passed_over(2, false);
        assert_eq!(group.current().0, 1);
        // A caller that saw an older leader does not move the group on again.
        group.passed_over(2, false);
        assert_eq!(group.current().0, 1);
        // All taken for dead: the next in turn all the same.
        group.passed_over(1, true);
        group.passed_over(2, true);
        assert_eq!(group.current().0, 0);
    }

    fn identity(ca: &Ca, dir: &std::path::Path, name: &str, role: Role) -> Identity {
        let pem = ca.issue(name, role, &[], Validity::default()).unwrap();
        let mut paths = crate::tls::write_peer(dir, name, &pem).unwrap();
        paths.ca_cert = dir.join("ca.crt");
        Identity::load(&paths).unwrap()
    }

    /// A peer that answers every read with `data` and the checksums of `claimed`.
    async fn lying_storage(identity: &Identity, data: Vec<u8>, claimed: Vec<u8>) -> Target {
        let (endpoint, addr) = listen(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        tokio::spawn(serve(endpoint, move |_peer, mut send, mut recv| {
            let (data, crcs) = (data.clone(), storage::chunk_crcs(&claimed));
            async move {
                let _: storage::Request = codec::read_frame(&mut recv).await.unwrap();
                let header = Ok::<_, RemoteError>(storage::Response::Data {
                    len: data.len() as u32,
                    crcs,
                });
                codec::write_frame(&mut send, &header).await.unwrap();
                send.write_all(&data).await.unwrap();
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        }));
        Target {
            name: "bob".into(),
            role: Role::Storage,
            addr,
        }
    }

    /// A dialer for client alice on loopback, and the identity of storage bob (their
    /// certificates live in the directory returned).
    fn client_and_storage() -> (tempfile::TempDir, Dialer, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA").unwrap();
        crate::tls::write_file(&dir.path().join("ca.crt"), &ca.pem().cert, 0o644).unwrap();
        let client = identity(&ca, dir.path(), "alice", Role::Client);
        let storage = identity(&ca, dir.path(), "bob", Role::Storage);
        let endpoint = self::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let config = client.client_config().unwrap();
        let dialer = Dialer::new(endpoint, config, Duration::from_secs(5));
        (dir, dialer, storage)
    }

    #[tokio::test]
    async fn block_bytes_are_checked_against_their_checksums() {
        let (_dir, dialer, storage) = client_and_storage();
        let block: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let id = BlockId::of(&block);

        let honest = lying_storage(&storage, block.clone(), block.clone()).await;
        assert_eq!(read_block(&dialer, &honest, id, 0, 0).await.unwrap(), block);

        let mut flipped = block.clone();
        flipped[70_000] ^= 1;
        let liar = lying_storage(&storage, flipped, block.clone()).await;
        let err = read_block(&dialer, &liar, id, 0, 0).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");

        let unchecked = lying_storage(&storage, block.clone(), Vec::new()).await;
        let err = read_block(&dialer, &unchecked, id, 0, 0).await.unwrap_err();
        assert!(err.to_string().contains("without checksums"), "{err}");
    }

    #[tokio::test]
    async fn peers_on_loopback_send_datagrams_larger_than_gso_segments() {
        let (_dir, dialer, storage) = client_and_storage();
        let block: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let id = BlockId::of(&block);
        let target = lying_storage(&storage, block.clone(), block).await;
        // Path MTU discovery probes upwards from 1,200 bytes after the handshake.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let before = dialer.connection(&target).await.unwrap().stats().udp_rx;
            read_block(&dialer, &target, id, 0, 0).await.unwrap();
            let conn = dialer.connection(&target).await.unwrap();
            let after = conn.stats().udp_rx;
            let mean_in = (after.bytes - before.bytes) / (after.datagrams - before.datagrams);
            let mtu_out = conn.stats().path.current_mtu;
            if mean_in > crate::tls::MAX_DATAGRAM.into() && mtu_out > crate::tls::MAX_DATAGRAM {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "datagrams stay small: {mean_in} bytes in, MTU {mtu_out} out"
            );
        }
    }

    /// How [`echo`] serves a stream.
    #[derive(Clone, Copy, PartialEq)]
    enum Echo {
        /// One request, its answer ending the stream.
        OneEach,
        /// Every request until the client ends the stream.
        Kept,
        /// One request, its answer not ending the stream, which ends a moment later.
        EndsLate,
    }

    /// A server that adds one to each request, served as `how` says, and counts its
    /// streams.
    async fn echo(identity: &Identity, how: Echo) -> (Target, Arc<std::sync::atomic::AtomicUsize>) {
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (endpoint, addr) = listen(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let counted = streams.clone();
        tokio::spawn(serve(endpoint, move |_peer, mut send, mut recv| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                while let Ok(Some(n)) = codec::read_frame_or_end::<_, u32>(&mut recv).await {
                    let last = how == Echo::OneEach || at_end(&mut recv).await;
                    reply(&mut send, Ok::<_, RemoteError>(n + 1), last).await;
                    if how == Echo::EndsLate {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = send.finish();
                        return;
                    }
                    if last {
                        return;
                    }
                }
                let _ = send.finish();
            }
        }));
        let target = Target {
            name: "bob".into(),
            role: Role::Storage,
            addr,
        };
        (target, streams)
    }

    #[tokio::test]
    async fn calls_keep_their_stream_where_the_server_keeps_it_open() {
        let (_dir, dialer, storage) = client_and_storage();
        let count = |streams: &std::sync::atomic::AtomicUsize| {
            streams.load(std::sync::atomic::Ordering::Relaxed)
        };
        let (kept, kept_streams) = echo(&storage, Echo::Kept).await;
        for n in 0..10u32 {
            assert_eq!(dialer.call::<_, u32>(&kept, &n).await.unwrap(), n + 1);
        }
        assert_eq!(count(&kept_streams), 1, "one stream for ten calls in turn");
        // Calls at once each need a stream; all of them are kept for later calls.
        let calls: Vec<_> = (0..5u32)
            .map(|n| {
                let (dialer, kept) = (dialer.clone(), kept.clone());
                tokio::spawn(async move { dialer.call::<_, u32>(&kept, &n).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(count(&kept_streams), 5);
        for n in 0..5u32 {
            dialer.call::<_, u32>(&kept, &n).await.unwrap();
        }
        assert_eq!(count(&kept_streams), 5);
        // A forgotten connection takes its streams with it.
        dialer.forget(&kept);
        dialer.call::<_, u32>(&kept, &1).await.unwrap();
        assert_eq!(count(&kept_streams), 6);

        // A server that ends each stream with its answer gets a stream per call.
        let (one_each, one_each_streams) = echo(&storage, Echo::OneEach).await;
        for n in 0..4u32 {
            assert_eq!(dialer.call::<_, u32>(&one_each, &n).await.unwrap(), n + 1);
        }
        assert_eq!(count(&one_each_streams), 4);
        // A stream kept although the server was done with it: the request it never
        // served goes on a new stream.
        let (ends_late, ends_late_streams) = echo(&storage, Echo::EndsLate).await;
        for n in 0..4u32 {
            assert_eq!(dialer.call::<_, u32>(&ends_late, &n).await.unwrap(), n + 1);
        }
        assert_eq!(count(&ends_late_streams), 4);
    }
}
