//! The V2 binary frame decoder never panics, whatever a client sends.
#![no_main]

use fawkes::protocol::{FrameKind, Serializer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Serializer::V2.decode(FrameKind::Binary, data);
});
