//! Fuzzes the frame codec: any bytes, decoded as every message type, must give a value or
//! an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vg_wire::{codec, ns, storage, RemoteError};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode::<ns::Request>(data);
    let _ = codec::decode::<Result<ns::Response, RemoteError>>(data);
    let _ = codec::decode::<storage::Request>(data);
    let _ = codec::decode::<Result<storage::Response, RemoteError>>(data);
    let _ = codec::from_bytes::<ns::Request>(data);
    let _ = codec::from_bytes::<storage::Request>(data);
    // Whatever decodes must encode again.
    if let Ok(request) = codec::from_bytes::<ns::Request>(data) {
        let frame = codec::encode(&request).expect("a decoded request encodes");
        codec::decode::<ns::Request>(&frame).expect("and decodes back");
    }
});
