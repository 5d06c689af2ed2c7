//! Whatever any Redis client PUBLISHes on the PubSub channel, a node reads it (or ignores it)
//! without a panic, within its size and depth bounds; a payload it delivers encodes back.
#![no_main]

use fawkes::cluster::message::{self, Inbound};
use fawkes::cluster::term::Bounds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bounds = Bounds {
        max_bytes: 1 << 16,
        max_depth: 32,
    };
    if let Inbound::Deliver(r) = message::decode(data, "fuzz", bounds) {
        let again = message::encode("other", &r.topic, &r.event, &r.payload);
        assert_eq!(
            message::decode(&again, "fuzz", Bounds::default()),
            Inbound::Deliver(r)
        );
    }
});
