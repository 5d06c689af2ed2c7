//! Messages sent in fragments, over real sockets: their limits (frames per message, bytes, the
//! message rate) and what the server holds for them, read from its own accounting
//! (`fawkes_assembling_bytes`) and from the process's resident memory.
//!
//! The tests of this file take turns: that accounting, and the memory, are the process's.

mod support;

use fawkes::metrics::ENGINE;
use fawkes::{Config, Limits};
use protocol_tests::client::{Client, Fragment};
use protocol_tests::matcher::Vars;
use std::iter::{once, repeat_n};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use Fragment::{Continue, Last, Text};

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn limits(f: impl FnOnce(&mut Limits)) -> Config {
    let mut c = Config::default();
    f(&mut c.limits);
    c
}

/// Bytes the server holds for messages being put together, all sockets together.
fn held() -> i64 {
    ENGINE.assembling_bytes.load(Relaxed)
}

const V2: &str = "vsn=2.0.0";
const HEARTBEAT_REPLY: &str = r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#;

/// Waits until the server has read everything sent before: a pong comes after it.
async fn sync(c: &mut Client) {
    c.ping(b"sync").await.unwrap();
    c.expect_pong(b"sync").await.unwrap();
}

#[test]
fn a_message_in_one_frame_more_than_the_limit_closes_the_socket_with_1009() {
    let _turn = one_at_a_time();
    let server = support::start(limits(|l| {
        l.max_fragments = 32;
        l.max_frame_size = 1000;
    }));
    rt().block_on(async {
        let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
        // A heartbeat in exactly 32 frames is put together and answered.
        let heartbeat = once(Text(br#"[null,"1","phoenix","#))
            .chain(repeat_n(Continue(b""), 29))
            .chain([Continue(br#""heartbeat","#), Last(b"{}]")]);
        c.send_fragments(heartbeat).await.unwrap();
        c.expect(HEARTBEAT_REPLY, &mut Vars::new()).await.unwrap();
        assert_eq!(held(), 0, "the message's buffer went with it");

        // 32 frames of a message not finished yet: the socket is open, and what the server
        // holds for it is what came, within the byte limit.
        let start = [b'x'; 900];
        c.send_fragments(once(Text(&start)).chain(repeat_n(Continue(b""), 31)))
            .await
            .unwrap();
        sync(&mut c).await;
        let h = held();
        assert!((900..=1000).contains(&h), "{h} bytes held");
        // The 33rd frame: closed with 1009 (an empty reason, as every close), nothing held.
        c.send_fragments([Continue(b"")]).await.unwrap();
        c.expect_close(1009).await.unwrap();
        assert_eq!(held(), 0);
        // Others are served as before.
        let mut other = Client::connect("other", &server.url(), V2).await.unwrap();
        other
            .send(r#"[null,"1","phoenix","heartbeat",{}]"#)
            .await
            .unwrap();
        other
            .expect(HEARTBEAT_REPLY, &mut Vars::new())
            .await
            .unwrap();
    });
}

/// Fragments adding up to more than `max_frame_size` close the socket with 1009, as one frame
/// over it does (they used to end it without a close frame). Twenty sockets each just under
/// the limit hold at most twenty times it.
#[test]
fn fragments_over_the_byte_limit_close_with_1009_and_what_is_held_stays_within_it() {
    let _turn = one_at_a_time();
    let server = support::start(limits(|l| l.max_frame_size = 1000));
    rt().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
            let part = [b'x'; 50];
            c.send_fragments(once(Text(&part)).chain(repeat_n(Continue(&part), 18)))
                .await
                .unwrap();
            sync(&mut c).await;
            clients.push(c);
        }
        let h = held();
        assert!(
            (20 * 950..=20 * 1000).contains(&h),
            "{h} bytes held for 20 messages of 950 bytes"
        );
        for c in &mut clients {
            c.send_fragments([Continue(&[b'x'; 51])]).await.unwrap();
            c.expect_close(1009).await.unwrap();
        }
        assert_eq!(held(), 0);
    });
}

/// The shape of the reported attack: a text frame, then a million empty continuation frames
/// on one socket (allowed here). The server holds nothing for them: its resident memory grows
/// by far less than the 32 MB a part kept per fragment took, and the message they end is
/// whole.
#[test]
fn a_million_empty_continuation_frames_hold_nothing() {
    let _turn = one_at_a_time();
    let server = support::start(limits(|l| {
        l.max_fragments = 2_000_000;
        l.max_messages_per_second = 0;
    }));
    rt().block_on(async {
        let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
        c.send_fragments([Text(b""), Continue(b"")]).await.unwrap();
        sync(&mut c).await;
        let before = resident_bytes();
        for _ in 0..100 {
            c.send_fragments(repeat_n(Continue(b""), 10_000))
                .await
                .unwrap();
        }
        sync(&mut c).await;
        let grown = resident_bytes().saturating_sub(before);
        assert_eq!(held(), 0);
        assert!(
            grown < 12 << 20,
            "resident memory grew by {grown} bytes over a million empty fragments"
        );
        c.send_fragments([Last(br#"[null,"1","phoenix","heartbeat",{}]"#)])
            .await
            .unwrap();
        c.expect(HEARTBEAT_REPLY, &mut Vars::new()).await.unwrap();
    });
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Each fragment counts against `max_messages_per_second` like a whole message: a heartbeat
/// in 60 frames at 20 per second (a burst of 20, then 40 more) is answered after 2 s, not at
/// once.
#[test]
fn fragments_count_against_the_message_rate() {
    let _turn = one_at_a_time();
    let server = support::start(limits(|l| {
        l.max_messages_per_second = 20;
        l.max_fragments = 100;
    }));
    rt().block_on(async {
        let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
        let started = Instant::now();
        let heartbeat = once(Text(br#"[null,"1","phoenix","heartbeat","#))
            .chain(repeat_n(Continue(b""), 58))
            .chain(once(Last(b"{}]")));
        c.send_fragments(heartbeat).await.unwrap();
        c.expect(HEARTBEAT_REPLY, &mut Vars::new()).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(1800),
            "answered after {:?}",
            started.elapsed()
        );
    });
}

/// A frame whose header announces more than `max_frame_size` is refused once more than that
/// has arrived: the server does not buffer the rest (it used to, up to the announced length).
#[test]
fn a_frame_announcing_more_than_the_limit_closes_before_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _turn = one_at_a_time();
    let server = support::start(limits(|l| l.max_frame_size = 1000));
    rt().block_on(async {
        let host = server.addr.to_string();
        let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        let upgrade = format!(
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(upgrade.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        // A masked text frame announcing 1 GiB, then 2000 bytes of it.
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&[b'x'; 2000]);
        tcp.write_all(&frame).await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 4 {
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
                .await
                .expect("no close frame within 5 s")
                .unwrap();
            assert!(n > 0, "closed without a close frame: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..4], &[0x88, 0x02, 0x03, 0xf1], "close 1009, no reason");
    });
}
