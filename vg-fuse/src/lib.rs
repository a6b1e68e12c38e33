//! The vg client side: the cluster client library ([`client`]), the FUSE adapter
//! ([`fuse`]), and the connection flags both binaries share ([`args`]).

pub mod args;
pub mod client;
pub mod fuse;
pub mod mount_helper;
