//! A LongPoll POST body, NDJSON or not, parses into frames that the serializer then decodes,
//! without a panic, whatever a client sends.
#![no_main]

use fawkes::protocol::Serializer;
use fawkes::transport::longpoll::parse_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let body = bytes::Bytes::copy_from_slice(rest);
    for (kind, frame) in parse_body(first & 1 == 1, body) {
        let _ = Serializer::V2.decode(kind, &frame);
    }
});
