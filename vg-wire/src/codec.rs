//! The frame codec: the only place that calls bincode.
//!
//! A frame is an 8-byte header (`b"vg"`, protocol version, a zero byte, payload length
//! as u32 little-endian) followed by a bincode payload of at most [`MAX_FRAME`] bytes.
//! The length is checked before anything is allocated, and bincode itself runs with the
//! same limit, so a hostile length prefix inside the payload cannot allocate either.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// Magic bytes that start every frame.
pub const MAGIC: [u8; 2] = *b"vg";
/// Protocol version carried in every frame header (and in the TLS ALPN).
pub const VERSION: u8 = 12;
/// Largest payload accepted: bounds memory per stream.
pub const MAX_FRAME: u32 = 32 << 20;
/// Length of the frame header.
pub const HEADER_LEN: usize = 8;

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_FRAME as u64)
}

/// Serialises a value without a header (for records on disk, which carry their own).
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    options().serialize(value).map_err(|e| Error::BadFrame {
        reason: e.to_string(),
    })
}

/// Deserialises a value written by [`to_bytes`]; never panics on bad input.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    options().deserialize(bytes).map_err(|e| Error::BadFrame {
        reason: e.to_string(),
    })
}

/// [`to_bytes`] without the frame's bound, for files: a snapshot of a large namespace
/// is larger than any frame.
pub fn to_file_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::DefaultOptions::new()
        .serialize(value)
        .map_err(|e| Error::BadFrame {
            reason: e.to_string(),
        })
}

/// Deserialises a value written by [`to_file_bytes`] (or [`to_bytes`]); never panics on
/// bad input.
pub fn from_file_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::DefaultOptions::new()
        .deserialize(bytes)
        .map_err(|e| Error::BadFrame {
            reason: e.to_string(),
        })
}

/// Deserialises the leading value of bytes written by [`to_file_bytes`]: the first
/// fields of a tuple, without decoding the rest.
pub fn from_file_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::DefaultOptions::new()
        .allow_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| Error::BadFrame {
            reason: e.to_string(),
        })
}

/// Encodes a value as one frame, header included.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let payload = to_bytes(value)?;
    if payload.len() > MAX_FRAME as usize {
        return Err(Error::BadFrame {
            reason: format!(
                "frame of {} bytes exceeds the limit of {MAX_FRAME}",
                payload.len()
            ),
        });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Checks a frame header and returns the payload length.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<usize> {
    if header[..2] != MAGIC {
        return Err(Error::BadFrame {
            reason: "not a vg frame (bad magic)".into(),
        });
    }
    if header[2] != VERSION {
        return Err(Error::Version { theirs: header[2] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_FRAME {
        return Err(Error::BadFrame {
            reason: format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        });
    }
    Ok(len as usize)
}

/// Decodes a whole frame held in memory.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T> {
    let header: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| Error::BadFrame {
            reason: "truncated frame header".into(),
        })?;
    let len = decode_header(header)?;
    let payload = &frame[HEADER_LEN..];
    if payload.len() != len {
        return Err(Error::BadFrame {
            reason: format!("frame says {len} bytes, has {}", payload.len()),
        });
    }
    from_bytes(payload)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<()> {
    let frame = encode(value)?;
    writer.write_all(&frame).await.map_err(|e| Error::BadFrame {
        reason: format!("write: {e}"),
    })
}

/// Reads one frame; a bad header, oversized length or malformed payload is an error, as
/// is a stream that ends before it.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(reader: &mut R) -> Result<T> {
    let mut header = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut header)
        .await
        .map_err(|e| Error::BadFrame {
            reason: format!("read header: {e}"),
        })?;
    read_payload(reader, &header).await
}

/// Reads one frame, or `None` if the stream ends where a frame would start: the peer is
/// done with a stream it kept for several requests, or went away (its stream reset, its
/// connection lost) between two of them, which leaves no request to answer.
pub async fn read_frame_or_end<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> Result<Option<T>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut header[got..]).await {
            Ok(0) | Err(_) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::BadFrame {
                    reason: format!("read header: the stream ended after {got} bytes"),
                })
            }
            Ok(n) => got += n,
            Err(e) => {
                return Err(Error::BadFrame {
                    reason: format!("read header: {e}"),
                })
            }
        }
    }
    read_payload(reader, &header).await.map(Some)
}

/// Reads and decodes the payload of a frame whose header was read.
async fn read_payload<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
    header: &[u8; HEADER_LEN],
) -> Result<T> {
    let len = decode_header(header)?;
    let mut payload = vec![0u8; len];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(|e| Error::BadFrame {
            reason: format!("read {len}-byte payload: {e}"),
        })?;
    from_bytes(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns;

    fn sample() -> ns::Request {
        ns::Request::Mkdir {
            parent: 1,
            name: b"docs".to_vec(),
            perm: 0o755,
            umask: 0o022,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn round_trip() {
        let frame = encode(&sample()).unwrap();
        let back: ns::Request = decode(&frame).unwrap();
        assert!(matches!(back, ns::Request::Mkdir { parent: 1, ref name, .. } if name == b"docs"));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let frame = encode(&sample()).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode::<ns::Request>(&frame[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut frame = encode(&sample()).unwrap();
        frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode::<ns::Request>(&frame).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode(&sample()).unwrap();
        let theirs = VERSION.wrapping_add(1);
        frame[2] = theirs;
        let err = decode::<ns::Request>(&frame).unwrap_err();
        assert!(
            matches!(err, Error::Version { theirs: t } if t == theirs),
            "{err:?}"
        );
        let named = format!("protocol version {theirs}");
        assert!(err.to_string().contains(&named), "{err}");
    }

    #[test]
    fn huge_inner_length_prefix_does_not_allocate() {
        // A Vec length prefix of 2^60 elements inside a small payload.
        let mut payload = vec![4u8]; // variant Mkdir? any; what matters is no panic/alloc
        payload.extend_from_slice(&[0xff; 16]);
        assert!(from_bytes::<ns::Request>(&payload).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e3779b97f4a7c15u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = from_bytes::<ns::Request>(&bytes);
            let _ = from_bytes::<crate::storage::Request>(&bytes);
            let _ = decode::<ns::Response>(&bytes);
        }
    }

    #[tokio::test]
    async fn stream_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &sample()).await.unwrap();
        write_frame(&mut buf, &sample()).await.unwrap();
        let mut reader = &buf[..];
        let _: ns::Request = read_frame(&mut reader).await.unwrap();
        let _: ns::Request = read_frame(&mut reader).await.unwrap();
        assert!(read_frame::<_, ns::Request>(&mut reader).await.is_err());
    }

    #[tokio::test]
    async fn a_kept_stream_ends_cleanly_only_between_frames() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &sample()).await.unwrap();
        let mut reader = &buf[..];
        let first = read_frame_or_end::<_, ns::Request>(&mut reader).await;
        assert!(matches!(first, Ok(Some(ns::Request::Mkdir { .. }))));
        assert!(matches!(
            read_frame_or_end::<_, ns::Request>(&mut reader).await,
            Ok(None)
        ));
        // Cut inside the header, then inside the payload: errors, not a clean end.
        for cut in [3, HEADER_LEN + 2] {
            let mut reader = &buf[..cut];
            assert!(read_frame_or_end::<_, ns::Request>(&mut reader)
                .await
                .is_err());
        }
    }
}
