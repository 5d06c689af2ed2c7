//! Configuration: every connection-facing limit, with its default.

use std::time::Duration;

/// Limits applied to every client connection. Each one, when hit, closes the connection (or
/// refuses the request) with a logged reason; nothing is dropped silently.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket message (after reassembling fragments) a client may send. Over it, the
    /// socket is closed with 1009. Phoenix's default: 10,000,000 bytes.
    pub max_frame_size: usize,
    /// Frames one WebSocket message may come in (its first frame, continuations and last);
    /// over it, the socket is closed with 1009. Each fragment also counts against
    /// `max_messages_per_second`.
    pub max_fragments: usize,
    /// Channels one socket may have joined at once; the next join is refused with
    /// `{"reason":"too many channels joined"}`. Phoenix's default: 100.
    pub max_channels: usize,
    /// Frames (and, separately, mailbox messages) queued for one client before it counts as too
    /// slow and is closed with 1013.
    pub max_queue: usize,
    /// Bytes queued for one client (and, separately, in its mailbox) before it counts as too
    /// slow and is closed with 1013. A single larger frame still goes out into an empty queue.
    pub max_queue_bytes: usize,
    /// Longest topic a client may join, in bytes; a longer one is refused with
    /// `{"reason":"topic over N bytes"}`.
    pub max_topic_bytes: usize,
    /// A socket that sends nothing for this long is closed (1002, as Phoenix on Bandit).
    pub idle_timeout: Duration,
    /// Frames per second one socket may send (a message, a fragment of one or a ping counts
    /// as one), with a one-second burst; beyond it the server reads its frames no faster (TCP
    /// pushes back on the client). 0: no limit.
    pub max_messages_per_second: u32,
    /// Costly pushes (a database query, a large reply: see [`crate::budget`]) one socket may
    /// make per second, with a burst of as many; beyond, the push is refused with
    /// `{"reason":"rate_limited","retry_after_ms":N}`. 0: no limit.
    pub max_costly_pushes_per_second: u32,
    /// Bytes of costly pushes' replies one socket may receive per second; a larger reply goes
    /// out and the socket's next costly push waits until it is paid off. 0: no limit.
    pub max_costly_reply_bytes_per_second: usize,
    /// Largest LongPoll POST body.
    pub max_longpoll_body: usize,
    /// LongPoll sessions alive at once on one mount; a new one beyond is refused (HTTP 503,
    /// `{"status":500}`: phoenix.js retries later). 0: no limit.
    pub max_longpoll_sessions: usize,
    /// New LongPoll sessions one client IP may open per second; beyond, refused (HTTP 429,
    /// `{"status":500}`). 0: no limit (behind a proxy every client shares its address).
    pub max_longpoll_opens_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 10_000_000,
            max_fragments: 4096,
            max_channels: 100,
            max_queue: 1024,
            max_queue_bytes: 4 * 1024 * 1024,
            max_topic_bytes: 1024,
            idle_timeout: Duration::from_secs(60),
            max_messages_per_second: 5000,
            max_costly_pushes_per_second: 20,
            max_costly_reply_bytes_per_second: 1024 * 1024,
            max_longpoll_body: 10_000_000,
            max_longpoll_sessions: 100_000,
            max_longpoll_opens_per_ip: 1000,
        }
    }
}

/// Which `Origin` headers may open a socket.
#[derive(Debug, Clone, Default)]
pub enum CheckOrigin {
    /// Any origin (local development, native clients).
    #[default]
    Off,
    /// Only these: `https://example.com`, `//example.com` (any scheme), `//*.example.com` (the
    /// domain and its subdomains), `http://localhost:4000`. Missing parts match anything.
    Allow(Vec<String>),
}

/// Endpoint configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    pub check_origin: CheckOrigin,
    /// How long shutdown waits for connections to close after telling them to.
    pub shutdown_timeout: Duration,
    /// How long a LongPoll GET waits for messages before answering 204.
    pub longpoll_window: Duration,
    /// Key for signing LongPoll session tokens; a random one per process when `None`.
    pub secret_key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            check_origin: CheckOrigin::Off,
            shutdown_timeout: Duration::from_secs(10),
            longpoll_window: Duration::from_secs(10),
            secret_key: None,
        }
    }
}
