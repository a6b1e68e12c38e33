//! The vg client side: the cluster client library ([`client`]), used by the FUSE daemon
//! and by `vgctl`.

pub mod client;
