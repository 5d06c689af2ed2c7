//! Whatever any Redis client PUBLISHes on the PubSub channel, a node reads it (or ignores it)
//! without a panic, within its size, depth and memory bounds; a payload it delivers encodes back.
//!
//! The memory bound is checked twice: the decoded term's own accounting ([`Term::footprint`])
//! never passes `max_term_bytes`, and the heap the decoder really takes, measured by the
//! allocator below, never passes the decompressed bytes plus that budget (plus zlib's state).
#![no_main]

use fawkes::cluster::message::{self, Inbound};
use fawkes::cluster::term::{self, Bounds};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes live and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// zlib's inflate state and window, and the reader's buffers around them.
const ZLIB: usize = 64 * 1024;

const BOUNDS: Bounds = Bounds {
    max_bytes: 1 << 16,
    max_depth: 32,
    // Small enough that a compressed input can reach it: 64 KiB of empty lists is 2 MiB.
    max_term_bytes: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let decoded = term::decode(data, BOUNDS);
    let took = PEAK.load(Relaxed) - base;
    assert!(
        took <= BOUNDS.max_bytes + BOUNDS.max_term_bytes + ZLIB,
        "decoding took {took} bytes of heap (result: {:?})",
        decoded.as_ref().map(|t| t.footprint())
    );
    if let Ok(t) = &decoded {
        assert!(t.footprint() <= BOUNDS.max_term_bytes, "{}", t.footprint());
    }
    drop(decoded);

    if let Inbound::Deliver(r) = message::decode(data, "fuzz", BOUNDS) {
        let again = message::encode("other", &r.topic, &r.event, &r.payload);
        assert_eq!(
            message::decode(&again, "fuzz", Bounds::default()),
            Inbound::Deliver(r)
        );
    }
});
