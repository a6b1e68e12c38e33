//! Integration tests of the cluster core: real nameserver and storages on 127.0.0.1 over
//! QUIC with mutual TLS and freshly generated certificates, driven through the client
//! library and the real `vgctl` binary.

mod cluster;
mod core;
mod faults;
mod files;
mod group;
mod security;
mod upgrade;
mod vgctl;
