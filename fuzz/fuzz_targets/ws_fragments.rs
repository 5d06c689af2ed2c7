//! Whatever bytes a client sends, in pieces of any size, the WebSocket reader holds no more
//! than its limits allow: the message being put together at most `MAX_SIZE` bytes and
//! `MAX_FRAGMENTS` frames, the bytes not parsed yet at most one frame's header and `MAX_SIZE`;
//! what it hands over is within the limit (text is UTF-8), and its accounting of the bytes it
//! held comes back to zero.
#![no_main]

use fawkes::metrics::ENGINE;
use fawkes::transport::ws_read::{Incoming, Reader, MAX_CLIENT_HEADER};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering::Relaxed;

const MAX_SIZE: usize = 64;
const MAX_FRAGMENTS: usize = 4;

fuzz_target!(|data: &[u8]| {
    // The first byte sizes the reads (1 to 64 bytes); the rest is what the client sends.
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let mut r = Reader::new(MAX_SIZE, MAX_FRAGMENTS, &[]);
    read(&mut r, wire, usize::from(first % 64) + 1);
    drop(r);
    assert_eq!(ENGINE.assembling_bytes.load(Relaxed), 0, "accounting");
});

fn read(r: &mut Reader, wire: &[u8], chunk: usize) {
    // Frames of the message in progress handed over so far.
    let mut fragments = 0;
    for piece in wire.chunks(chunk) {
        r.extend(piece);
        loop {
            let next = r.parse();
            let held = r.assembling();
            assert!(held <= MAX_SIZE, "{held} bytes held for a message");
            assert_eq!(
                ENGINE.assembling_bytes.load(Relaxed),
                held as i64,
                "accounting"
            );
            match next {
                None => {
                    let buffered = r.buffered();
                    assert!(
                        buffered <= MAX_CLIENT_HEADER + MAX_SIZE,
                        "{buffered} bytes buffered"
                    );
                    break;
                }
                // The connection ends here.
                Some(Err(_)) => {
                    assert_eq!(held, 0, "an error gives the message back");
                    return;
                }
                Some(Ok(Incoming::Fragment)) => {
                    fragments += 1;
                    assert!(fragments <= MAX_FRAGMENTS, "{fragments} fragments");
                }
                Some(Ok(Incoming::Text(t))) => {
                    assert!(t.len() <= MAX_SIZE && fragments < MAX_FRAGMENTS);
                    assert!(std::str::from_utf8(&t).is_ok());
                    fragments = 0;
                }
                Some(Ok(Incoming::Binary(b))) => {
                    assert!(b.len() <= MAX_SIZE && fragments < MAX_FRAGMENTS);
                    fragments = 0;
                }
                Some(Ok(Incoming::Ping(p))) => assert!(p.len() <= 125),
                Some(Ok(Incoming::Pong | Incoming::Close(_))) => {}
            }
        }
    }
}
