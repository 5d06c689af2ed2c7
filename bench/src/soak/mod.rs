//! `soak`: hours of churn against a server running the conformance fixture, watching that
//! nothing grows and nothing is lost.
//!
//! A steady population of `--clients` clients, half V1 and half V2, `--longpoll-percent` of
//! them (10 %) on LongPoll and the rest on WebSocket, each joined to `community:feed` (where
//! one publisher pushes `new_post` with a sequence number at `--rate` per second) and to a
//! presence room `channel:soak<k>`. Each second `--churn-percent` of them leave, in turn
//! abruptly (a TCP reset; a LongPoll client stops mid-poll), cleanly (a close frame; on
//! LongPoll a `phx_leave` per channel) or by going silent (no heartbeat, no poll: the server
//! must close them at its idle timeout, or end the LongPoll session after its window), and as
//! many new ones connect, join and track presence. Every `--sample-secs` the server's memory,
//! descriptors, threads (from `/proc`, with `--server-pid`) and its gauges (from
//! `--metrics-url`: connections, topics, presence entries, queued bytes, tasks, heap) are
//! sampled and printed as a table row.
//!
//! With `--demo-users N` it drives `fawkes serve --demo` instead: N users made through
//! `POST /demo/users`, clients connecting with their tokens, the broadcasts feed posts written
//! over REST (`new_post` on `community:feed`) with as many collection records (`change` on
//! `collection:soak`, the clients' second topic in place of the presence rooms), the oldest
//! deleted past 500 so that the collection, which each join receives whole, stays one size.
//! The clients' third topic is one of `--chat-rooms` chat rooms (presence keyed by user), where
//! ten users push numbered `new_message`s at `--rate` ([`chat`]) and a visitor joins and leaves
//! over REST.
//!
//! With `--restart-cmd`, one node is restarted every `--restart-every-secs`, each in turn (a
//! rolling deploy): the clients a restart closes and the connects refused while it runs count as
//! its drops, not errors, and the REST writes go to the next node when one does not take them.
//!
//! Deliveries are accounted per client: the sequence numbers of `new_post` (and of its room's
//! `new_message`) must arrive without a gap or a repeat, from the first one published after its
//! join until it leaves (or the end).
//! The last line is the verdict: `verdict: pass`, or `verdict: fail: <what>` when a gauge's
//! last third is more than 5 % (or its noise floor) above or below its first third, a delivery
//! was lost or repeated, or an error happened that the churn did not cause.

use crate::conn::{heartbeat, Incoming, Ws};
use crate::longpoll::LongPoll;
use crate::report::Report;
use crate::Bench;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

mod chat;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How long the soak runs, in minutes.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Clients joined at any time.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Share of the clients that leave (and are replaced) each second, in percent.
    #[arg(long, default_value_t = 1.0)]
    pub churn_percent: f64,
    /// `new_post` broadcasts per second on `community:feed`.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    pub sample_secs: u64,
    /// Presence rooms (`channel:soak<k>`) the clients are spread over.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// A server node's `/metrics` URL (`http://host:port/metrics`), for its gauges; repeat for
    /// each node (the sums are sampled).
    #[arg(long)]
    pub metrics_url: Vec<String>,
    /// Drive `fawkes serve --demo` instead of the conformance fixture: create this many users
    /// through `POST /demo/users` and connect with their tokens; broadcasts are feed posts
    /// written through `POST /api/community/posts` (each a `new_post` to every client), and as
    /// many collection records through `POST /api/collections/soak/records` (each a `change`
    /// on `collection:soak`, which every client joins instead of a presence room).
    #[arg(long, default_value_t = 0)]
    pub demo_users: usize,
    /// Share of the clients on LongPoll instead of WebSocket, in percent (V1 and V2 alike);
    /// a silent LongPoll client stops polling, and its session must be gone from the server
    /// after the LongPoll window (`--longpoll-window`, 10 s) and a half.
    #[arg(long, default_value_t = 10.0)]
    pub longpoll_percent: f64,
    /// With `--demo-users`: chat rooms made for the run; each client joins one of them (its
    /// third topic, with presence), ten users push `new_message`s at `--rate` over them, and a
    /// visitor joins and leaves them over REST.
    #[arg(long, default_value_t = 10)]
    pub chat_rooms: usize,
    /// Seconds a silent client waits for the server to close it (the server's idle timeout,
    /// 60 s for Phoenix and Fawkes, plus slack) before that counts as an error.
    #[arg(long, default_value_t = 90)]
    pub idle_close_secs: u64,
    /// A command that restarts one node (stops it, starts it again and returns once it
    /// listens), run every `--restart-every-secs` for each node in turn; `{node}` in it becomes
    /// the node's index (0, 1, ...). Clients the restart closes and connects refused meanwhile
    /// are counted as restart drops, not errors. Without `--server-pid`, RSS, descriptors and
    /// threads then come from each node's `/metrics` (`process_*`), which survive the restart.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Seconds between two restarts (the first one after as long).
    #[arg(long, default_value_t = 600)]
    pub restart_every_secs: u64,
}

impl SoakArgs {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.minutes.max(0.0) * 60.0)
            + Duration::from_secs(self.idle_close_secs + 30)
    }
}

/// How a client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// The TCP connection reset, no close frame (a phone losing its network).
    Abrupt,
    /// A close frame, answered (a tab closed).
    Clean,
    /// Nothing sent any more, the socket left open: the server's idle timeout must close it.
    Silent,
}

const LEAVES: [Leave; 3] = [Leave::Abrupt, Leave::Clean, Leave::Silent];

/// What all clients add up.
#[derive(Default)]
struct Tally {
    /// `new_post` frames received in sequence.
    delivered: AtomicU64,
    /// Sequence numbers that never came (gaps, a late first one, a missing tail).
    lost: AtomicU64,
    /// Sequence numbers that came again.
    repeated: AtomicU64,
    /// Presence frames received (`presence_state`, `presence_diff`).
    presence: AtomicU64,
    /// Collection `change` events received (on `fawkes serve`).
    changes: AtomicU64,
    /// Chat `new_message` frames received in sequence (on `fawkes serve`).
    chat: AtomicU64,
    joins: AtomicU64,
    leaves: [AtomicU64; 3],
    /// Errors the churn did not cause, with the first few reasons.
    errors: AtomicU64,
    reasons: Mutex<Vec<String>>,
    /// Clients joined now.
    live: AtomicU64,
    /// Silent clients still waiting for the server to close them.
    leaving: AtomicU64,
    /// Node restarts done, and the clients they closed or kept from connecting.
    restarts: AtomicU64,
    restart_drops: AtomicU64,
    /// A restart running, or the end of the last one (its closes may still be arriving).
    restart: Mutex<(bool, Option<Instant>)>,
}

/// Errors printed as they happen; the report lists the first ten again.
const LOGGED_ERRORS: u64 = 100;

/// How long after a restart's command returned its closes still count as the restart's.
const RESTART_SETTLE: Duration = Duration::from_secs(15);

impl Tally {
    /// A client closed or refused: the restart's doing while one runs (or just ran), else an
    /// error.
    fn dropped(&self, why: String) {
        let (running, ended) = *self.restart.lock().unwrap();
        if running || ended.is_some_and(|e| e.elapsed() < RESTART_SETTLE) {
            self.restart_drops.fetch_add(1, Relaxed);
        } else {
            self.error(why);
        }
    }

    fn error(&self, why: String) {
        let n = self.errors.fetch_add(1, Relaxed) + 1;
        // As they come, with the time, so that a long run tells what happened when.
        if n <= LOGGED_ERRORS {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            eprintln!("  error {n} (unix time {at}): {why}");
        }
        let mut r = self.reasons.lock().unwrap();
        if r.len() < 10 {
            r.push(why);
        }
    }
}

/// The publisher's progress: the last sequence number sent (before its push is written, so a
/// client joined after reading it gets everything above it), and the posts that may have been
/// written twice (a node that was stopping took one but its answer was lost, and the next node
/// took it again): their second copy is not a repeat.
#[derive(Default)]
struct Published(AtomicU64, Mutex<std::collections::HashSet<u64>>);

/// One client's place in the broadcast sequence.
struct Sequence {
    /// The last sequence number published before the join was confirmed: everything after it
    /// must come.
    floor: u64,
    last: Option<u64>,
}

impl Sequence {
    /// Records `seq`; returns (lost, repeated) it reveals.
    fn receive(&mut self, seq: u64) -> (u64, u64) {
        let expected = self.last.map_or(self.floor + 1, |l| l + 1);
        if seq < expected {
            // At or before what came: a repeat, unless it was published before the join (the
            // very first frames may still be on their way).
            return match self.last {
                Some(_) => (0, 1),
                None => (0, 0),
            };
        }
        self.last = Some(seq);
        (seq - expected, 0)
    }

    /// What is missing from the end, once the publisher stopped at `final_seq`.
    fn tail(&self, final_seq: u64) -> u64 {
        final_seq.saturating_sub(self.last.unwrap_or(self.floor))
    }
}

/// A sample of the gauges, and when.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_secs: f64,
    live: u64,
    gauges: Vec<(&'static str, Option<f64>)>,
}

/// Gauges sampled, with their noise floor: a difference below it never fails the verdict
/// (a few descriptors or kilobytes come and go with the churn itself).
const GAUGES: [(&str, f64); 9] = [
    ("rss_mib", 2.0),
    ("heap_mib", 2.0),
    ("fds", 20.0),
    ("threads", 2.0),
    ("connections", 0.0),
    ("topics", 0.0),
    ("presence", 0.0),
    ("queued_kib", 256.0),
    ("tasks", 0.0),
];

pub async fn run(bench: &Bench, args: &SoakArgs) -> Report {
    let mut report = Report::new("soak");
    bench.describe(&mut report);
    let tally = Arc::new(Tally::default());
    let published = Arc::new(Published::default());
    let run_for = Duration::from_secs_f64(args.minutes.max(0.0) * 60.0);
    let stop = Arc::new(tokio::sync::Notify::new());

    let app = match App::new(bench, args).await {
        Ok(app) => Arc::new(app),
        Err(why) => {
            report.fail(why);
            return report;
        }
    };
    // The publisher: never churned.
    let pub_task = match &app.rest {
        Some(_) => tokio::spawn(publish_rest(
            app.clone(),
            args.rate,
            published.clone(),
            stop.clone(),
        )),
        None => match bench.target.open(0).await {
            Ok(ws) => tokio::spawn(publish(ws, args.rate, published.clone(), stop.clone())),
            Err((_, why)) => {
                report.fail(format!("the publisher could not join: {why}"));
                return report;
            }
        },
    };

    let chat_task = tokio::spawn(chat::publish(
        bench.target.clone(),
        app.clone(),
        args.rate,
        tally.clone(),
        stop.clone(),
    ));

    // The population: one task per slot, each living through generations of clients.
    let (mut leave_tx, mut slots) = (Vec::new(), tokio::task::JoinSet::new());
    let longpoll_every = (args.longpoll_percent > 0.0)
        .then(|| (100.0 / args.longpoll_percent).round().max(1.0) as usize);
    let http = reqwest::Client::new();
    let started = Instant::now();
    for slot in 0..args.clients {
        let (tx, rx) = mpsc::channel(4);
        leave_tx.push(tx);
        let ctx = SlotCtx {
            bench_target: bench.target.clone(),
            app: app.clone(),
            slot,
            rooms: args.rooms.max(1),
            clients: args.clients,
            tally: tally.clone(),
            published: published.clone(),
            idle_close: Duration::from_secs(args.idle_close_secs),
            longpoll_every,
            http: http.clone(),
        };
        slots.spawn(ctx.run(rx));
        // Open at a steady pace, not all at once: the churn comes after.
        if slot % bench.batch.max(1) == bench.batch.max(1) - 1 {
            while tally.live.load(Relaxed) + (bench.batch as u64) < slot as u64 {
                if started.elapsed() > bench.join_budget {
                    report.fail("joins stalled before the population was complete");
                    return report;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    while tally.live.load(Relaxed) < args.clients as u64 {
        if started.elapsed() > bench.join_budget {
            report.fail(format!(
                "only {} of {} clients joined in {} s",
                tally.live.load(Relaxed),
                args.clients,
                bench.join_budget.as_secs()
            ));
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "  {} clients joined in {:.1} s; soaking for {:.1} min",
        args.clients,
        started.elapsed().as_secs_f64(),
        args.minutes
    );

    // Churn and samples until the time is up.
    let begin = Instant::now();
    let per_second = (args.clients as f64 * args.churn_percent / 100.0).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_sample = begin;
    let (mut cursor, mut leave_turn) = (0usize, 0usize);
    let mut samples = Vec::new();
    let restart_every = Duration::from_secs(args.restart_every_secs.max(1));
    let (mut next_restart, mut restarted) = (begin + restart_every, 0usize);
    let mut restart_task: Option<tokio::task::JoinHandle<()>> = None;
    println!("{}", header());
    while begin.elapsed() < run_for {
        tick.tick().await;
        for _ in 0..per_second {
            let how = LEAVES[leave_turn % LEAVES.len()];
            leave_turn += 1;
            // A slot still between generations (its client connecting) is skipped this turn.
            let _ = leave_tx[cursor % args.clients].try_send(how);
            cursor += 1;
        }
        if let Some(cmd) = &args.restart_cmd {
            let idle = restart_task.as_ref().is_none_or(|t| t.is_finished());
            if Instant::now() >= next_restart && idle {
                next_restart += restart_every;
                let node = restarted % bench.target.node_count();
                restarted += 1;
                restart_task = Some(tokio::spawn(restart(
                    cmd.replace("{node}", &node.to_string()),
                    node,
                    tally.clone(),
                )));
            }
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(args.sample_secs.max(1));
            let s = sample(bench, args, &tally, begin).await;
            println!("{}", row(&s, &tally));
            samples.push(s);
        }
    }
    if let Some(t) = restart_task {
        let _ = t.await;
    }
    // Publishing stops; what was published must arrive everywhere.
    stop.notify_waiters();
    let final_seq = pub_task.await.unwrap_or(0);
    let _ = chat_task.await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(leave_tx);
    // Each slot ends its client and reports the tails it missed.
    let mut tails = 0;
    while let Some(done) = slots.join_next().await {
        if let Ok(Some(seqs)) = done {
            tails += seqs.feed.tail(final_seq);
            if let (Some(rest), Some((k, seq))) = (&app.rest, seqs.chat) {
                tails += seq.tail(rest.rooms[k].published.0.load(Relaxed));
            }
        }
    }
    tally.lost.fetch_add(tails, Relaxed);
    // The last silent clients must still be closed by the server.
    let deadline = Instant::now() + Duration::from_secs(args.idle_close_secs + 5);
    while tally.leaving.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let t = &tally;
    report.num("published", "broadcasts published", final_seq, "");
    let mut counts = vec![
        ("delivered", "deliveries", &t.delivered),
        ("lost", "deliveries lost", &t.lost),
        ("repeated", "deliveries repeated", &t.repeated),
        ("presence_frames", "presence frames", &t.presence),
        ("collection_changes", "collection changes", &t.changes),
        ("chat_messages", "chat messages", &t.chat),
        ("joins", "clients joined", &t.joins),
        ("left_abrupt", "left abrupt", &t.leaves[0]),
        ("left_clean", "left clean", &t.leaves[1]),
        ("left_silent", "left silent", &t.leaves[2]),
    ];
    if args.restart_cmd.is_some() {
        counts.push(("restarts", "node restarts", &t.restarts));
        counts.push((
            "restart_drops",
            "clients closed or refused by restarts",
            &t.restart_drops,
        ));
    }
    for (key, label, n) in counts {
        report.num(key, label, n.load(Relaxed), "");
    }
    let twice = published.1.lock().unwrap().len() as u64;
    report.num("written_twice", "posts maybe written twice", twice, "");
    report.num("errors", "errors not injected", t.errors.load(Relaxed), "");
    for r in t.reasons.lock().unwrap().iter() {
        report.note(format!("error: {r}"));
    }
    report.extra(
        "samples",
        samples
            .iter()
            .map(|s| {
                let mut o = serde_json::Map::new();
                o.insert("at_secs".into(), s.at_secs.into());
                o.insert("live".into(), s.live.into());
                for (k, v) in &s.gauges {
                    o.insert((*k).into(), serde_json::json!(v));
                }
                Value::Object(o)
            })
            .collect(),
    );
    let verdict = verdict(&samples, args.idle_close_secs as f64, t);
    report.extra("verdict", verdict.clone().into());
    if verdict != "pass" {
        report.fail(verdict);
    }
    report
}

/// Runs one node's restart command; while it runs (and [`RESTART_SETTLE`] after), closes and
/// refused connects are the restart's. A command that fails is an error.
async fn restart(cmd: String, node: usize, tally: Arc<Tally>) {
    *tally.restart.lock().unwrap() = (true, None);
    eprintln!("  restarting node {node}: {cmd}");
    let run = cmd.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh").arg("-c").arg(run).status()
    })
    .await;
    match status {
        Ok(Ok(s)) if s.success() => {
            tally.restarts.fetch_add(1, Relaxed);
        }
        other => tally.error(format!("restart of node {node} ({cmd}): {other:?}")),
    }
    *tally.restart.lock().unwrap() = (false, Some(Instant::now()));
}

/// The collection `fawkes serve`'s soak writes to.
const COLLECTION: &str = "soak";

/// What the soak drives: the conformance fixture, or `fawkes serve --demo` through REST.
struct App {
    rest: Option<Rest>,
}

/// `fawkes serve`'s REST API: its nodes (`host:port`; the users are made on the first), the
/// demo users' tokens, and this run's mark: its posts read `soak <run> <n>`, and no other
/// post is counted (a database may hold an earlier run's).
struct Rest {
    addrs: Vec<String>,
    tokens: Vec<String>,
    run: u64,
    /// The chat rooms every client joins one of, every demo user a member of each.
    rooms: Vec<chat::Room>,
    /// A user who joins and leaves the rooms over REST, in turn (id, token).
    visitor: (i64, String),
}

impl App {
    async fn new(bench: &Bench, args: &SoakArgs) -> Result<App, String> {
        if args.demo_users == 0 {
            return Ok(App { rest: None });
        }
        let addrs: Vec<String> = (0..bench.target.node_count())
            .map(|n| bench.target.node_addr(n).to_string())
            .collect();
        let addr = &addrs[0];
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (mut tokens, mut users) = (Vec::new(), Vec::new());
        // The last one is the visitor.
        for u in 0..=args.demo_users {
            let body = format!(r#"{{"name":"soak{run}x{u}"}}"#);
            let (status, text) = http(addr, "POST", "/demo/users", None, &body)
                .await
                .map_err(|e| e.why)?;
            if status != 201 {
                return Err(format!(
                    "POST /demo/users answered {status} {text} (is it fawkes serve --demo?)"
                ));
            }
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            let token = v["token"].as_str().ok_or(format!("no token in {text}"))?;
            let id = v["user"]["id"]
                .as_i64()
                .ok_or(format!("no user id in {text}"))?;
            tokens.push(token.to_owned());
            users.push(id);
        }
        let visitor = (users.pop().unwrap_or(0), tokens.pop().unwrap_or_default());
        let mut rest = Rest {
            addrs,
            tokens,
            run,
            rooms: Vec::new(),
            visitor,
        };
        rest.rooms = chat::rooms(&rest, &users, args.chat_rooms.max(1)).await?;
        Ok(App { rest: Some(rest) })
    }
}

/// Records the soak's collection keeps: each new one past it deletes the oldest. A collection
/// that only grows makes every join's reply (the whole collection) grow with it, and past
/// `--collection-join-limit` (10,000 records) joins are refused.
const KEEP_RECORDS: usize = 500;

/// Writes feed posts `soak <run> <n>` and as many collection records at `rate` per second
/// (deleting the oldest record past [`KEEP_RECORDS`]), each as one of the demo users in turn,
/// until stopped; returns the last n whose post was accepted.
async fn publish_rest(
    app: Arc<App>,
    rate: u32,
    published: Arc<Published>,
    stop: Arc<tokio::sync::Notify>,
) -> u64 {
    let Some(rest) = &app.rest else { return 0 };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut kept = std::collections::VecDeque::new();
    let mut seq = 0u64;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return seq,
            _ = tick.tick() => {
                seq += 1;
                published.0.store(seq, Relaxed);
                if let Err(why) = rest.publish(seq, &mut kept, &published).await {
                    eprintln!("  {why}");
                    return seq - 1;
                }
            }
        }
    }
}

impl Rest {
    /// Post `seq` and record `seq`, as one of the demo users in turn, the oldest record
    /// deleted past [`KEEP_RECORDS`] (`kept` holds the records' ids, oldest first), and the
    /// visitor's join or leave of a room.
    async fn publish(
        &self,
        seq: u64,
        kept: &mut std::collections::VecDeque<String>,
        published: &Published,
    ) -> Result<(), String> {
        let token = self.tokens[seq as usize % self.tokens.len()].as_str();
        let records = format!("/api/collections/{COLLECTION}/records");
        let post = format!(r#"{{"body":"soak {} {seq}"}}"#, self.run);
        let (twice, _) = self
            .write(seq, "POST", "/api/community/posts", token, &post, 201)
            .await?;
        if twice {
            published.1.lock().unwrap().insert(seq);
        }
        let record = format!(r#"{{"n":{seq}}}"#);
        let (_, text) = self
            .write(seq, "POST", &records, token, &record, 201)
            .await?;
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| match &v["id"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        kept.extend(id);
        if kept.len() > KEEP_RECORDS {
            let oldest = kept.pop_front().unwrap_or_default();
            let path = format!("{records}/{oldest}");
            self.write(seq, "DELETE", &path, token, "", 204).await?;
        }
        // The chat over REST: the visitor joins a room, and leaves it the next time.
        let room = self.rooms[((seq - 1) / 2) as usize % self.rooms.len()].id;
        let (visitor, token) = (self.visitor.0, self.visitor.1.as_str());
        let members = format!("/api/channels/{room}/members");
        if seq % 2 == 1 {
            let body = format!(r#"{{"user_id":{visitor}}}"#);
            self.write(seq, "POST", &members, token, &body, 204).await?;
        } else {
            let path = format!("{members}/{visitor}");
            self.write(seq, "DELETE", &path, token, "", 204).await?;
        }
        Ok(())
    }

    /// One write, to the nodes in turn from `seq`'s until one answers `expect` (a node that is
    /// restarting does not): whether an earlier node may have taken it too (its answer was lost
    /// after the request went out), and the answer's body.
    async fn write(
        &self,
        seq: u64,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
        expect: u16,
    ) -> Result<(bool, String), String> {
        let (nodes, mut maybe_taken, mut last) = (self.addrs.len(), false, String::new());
        for k in 0..nodes {
            let addr = &self.addrs[(seq as usize + k) % nodes];
            match http(addr, method, path, Some(token), body).await {
                Ok((status, text)) if status == expect => return Ok((maybe_taken, text)),
                Ok((status, text)) => last = format!("{status} {text}"),
                Err(e) => {
                    maybe_taken |= e.sent;
                    last = e.why;
                }
            }
        }
        Err(format!("{method} {path}: {last}"))
    }
}

/// A request that got no answer; `sent` when it may have reached the server (so a write may
/// have been made).
struct NoAnswer {
    sent: bool,
    why: String,
}

/// One HTTP/1.1 request on a connection of its own, to `addr` (`host:port`); (status, body).
/// For REST writes and `/metrics` scrapes.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String), NoAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let failed = |sent, why: String| NoAnswer {
        sent,
        why: format!("{method} {path}: {why}"),
    };
    let connect = timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    );
    let mut tcp = match connect.await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(failed(false, e.to_string())),
        Err(_) => return Err(failed(false, "no connection in 10 s".into())),
    };
    let exchange = async {
        tcp.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| failed(true, "no answer in 10 s".into()))?
        .map_err(|e| failed(true, e.to_string()))?;
    let text = String::from_utf8_lossy(&out);
    let status = (text.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed(true, "not an HTTP answer".into()))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// Pushes `new_post {"seq": n}` at `rate` per second until stopped; returns the last n.
async fn publish(
    mut ws: Ws,
    rate: u32,
    published: Arc<Published>,
    stop: Arc<tokio::sync::Notify>,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut hb = tokio::time::interval(crate::conn::HEARTBEAT_EVERY);
    let (mut seq, mut hbs) = (0u64, 0u64);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return seq,
            _ = tick.tick() => {
                seq += 1;
                published.0.store(seq, Relaxed);
                let frame = format!(r#"["1","p{seq}","community:feed","new_post",{{"seq":{seq}}}]"#);
                if ws.send(Message::Text(frame)).await.is_err() {
                    return seq - 1;
                }
            }
            _ = hb.tick() => {
                hbs += 1;
                let _ = ws.send(heartbeat(hbs)).await;
            }
            // Its own broadcasts and replies: read and dropped.
            m = ws.next() => if let Incoming::Closed(_) = Incoming::from(m) { return seq },
        }
    }
}

struct SlotCtx {
    bench_target: Arc<crate::conn::Target>,
    app: Arc<App>,
    slot: usize,
    rooms: usize,
    clients: usize,
    tally: Arc<Tally>,
    published: Arc<Published>,
    idle_close: Duration,
    /// Every how many pairs of slots one pair is on LongPoll (`None`: none).
    longpoll_every: Option<usize>,
    http: reqwest::Client,
}

/// A client's connection.
enum Link {
    Ws(Box<Ws>),
    Poll(LongPoll),
}

impl Link {
    async fn send(&mut self, text: String) -> Result<(), String> {
        match self {
            Link::Ws(ws) => ws
                .send(Message::Text(text))
                .await
                .map_err(|e| e.to_string()),
            Link::Poll(lp) => lp.send(&text).await,
        }
    }

    /// The next text frame, or why the connection is over.
    async fn next(&mut self) -> Result<String, String> {
        match self {
            Link::Ws(ws) => crate::conn::next_text(ws).await,
            Link::Poll(lp) => lp.next().await,
        }
    }
}

/// A client's places in what is published: the feed, and its chat room's messages.
struct Seqs {
    feed: Sequence,
    /// The room's index in [`Rest::rooms`] and its sequence (on `fawkes serve`).
    chat: Option<(usize, Sequence)>,
}

/// How long after a silent LongPoll client stopped polling its session must be gone: 1.5
/// windows of 10 s, the server's check every quarter window, and slack.
const LONGPOLL_GONE: Duration = Duration::from_secs(25);

impl SlotCtx {
    /// Generations of clients in this slot until the run ends (the channel closes); returns
    /// the last one's sequences, for the tails it missed.
    async fn run(self, mut leave: mpsc::Receiver<Leave>) -> Option<Seqs> {
        let mut generation = 0usize;
        loop {
            // Each generation its own connection index, so its source address rotates.
            let i = self.slot + generation * self.clients;
            generation += 1;
            let (mut link, mut seqs) = match self.open(i).await {
                Ok(x) => x,
                Err(why) => {
                    self.tally.dropped(why);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.tally.joins.fetch_add(1, Relaxed);
            self.tally.live.fetch_add(1, Relaxed);
            let how = self.live(&mut link, &mut seqs, &mut leave).await;
            self.tally.live.fetch_sub(1, Relaxed);
            match how {
                // The run is over: the channel closed.
                None => return Some(seqs),
                Some(Ok(how)) => {
                    let i = LEAVES.iter().position(|l| *l == how).unwrap_or(0);
                    self.tally.leaves[i].fetch_add(1, Relaxed);
                    self.leave(link, how);
                }
                Some(Err(why)) => self.tally.dropped(why),
            }
        }
    }

    /// Half the clients speak V1 (the even slots).
    fn v1(&self) -> bool {
        self.slot.is_multiple_of(2)
    }

    /// A share of the slots, in pairs (one V1, one V2), is on LongPoll.
    fn longpoll(&self) -> bool {
        self.longpoll_every
            .is_some_and(|every| (self.slot / 2).is_multiple_of(every))
    }

    /// The topics a client joins, with their join payloads: the feed, then the fixture's
    /// presence room or, on `fawkes serve`, the collection its writes go to and a chat room.
    fn topics(&self, i: usize) -> Vec<(String, String)> {
        let mut topics = vec![("community:feed".to_owned(), "{}".to_owned())];
        match &self.app.rest {
            Some(rest) => {
                topics.push((format!("collection:{COLLECTION}"), "{}".into()));
                let room = &rest.rooms[self.slot % rest.rooms.len()];
                topics.push((room.topic(), "{}".into()));
            }
            None => topics.push((
                format!("channel:soak{}", self.slot % self.rooms),
                format!(r#"{{"user_id":"u{i}"}}"#),
            )),
        }
        topics
    }

    /// A frame in this client's serializer.
    fn frame(&self, join_ref: &str, ref_: &str, topic: &str, event: &str, payload: &str) -> String {
        if self.v1() {
            format!(
                r#"{{"topic":"{topic}","event":"{event}","payload":{payload},"ref":"{ref_}","join_ref":"{join_ref}"}}"#
            )
        } else {
            format!(r#"["{join_ref}","{ref_}","{topic}","{event}",{payload}]"#)
        }
    }

    /// Connects (V1 or V2, WebSocket or LongPoll, by slot) and joins its topics.
    async fn open(&self, i: usize) -> Result<(Link, Seqs), String> {
        let vsn = if self.v1() { "1.0.0" } else { "2.0.0" };
        let query = match &self.app.rest {
            Some(rest) => format!("token={}&vsn={vsn}", rest.tokens[i % rest.tokens.len()]),
            None => self.bench_target.query(i, vsn),
        };
        let mut link = if self.longpoll() {
            let url = self.bench_target.longpoll_url(i, &query);
            let open = LongPoll::open(&self.http, url);
            timeout(crate::conn::STEP_TIMEOUT, open)
                .await
                .map_err(|_| "longpoll open timed out".to_string())?
                .map(Link::Poll)?
        } else {
            let connect = self.bench_target.connect_query(i, &query);
            timeout(crate::conn::STEP_TIMEOUT, connect)
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map(|ws| Link::Ws(Box::new(ws)))?
        };
        let topics = self.topics(i);
        for (k, (topic, payload)) in topics.iter().enumerate() {
            let r = (k + 1).to_string();
            let frame = self.frame(&r, &r, topic, "phx_join", payload);
            link.send(frame)
                .await
                .map_err(|e| format!("send join: {e}"))?;
        }
        let mut replies = 0;
        let deadline = tokio::time::Instant::now() + crate::conn::STEP_TIMEOUT;
        while replies < topics.len() {
            let text = tokio::time::timeout_at(deadline, link.next())
                .await
                .map_err(|_| "no join replies in time".to_string())??;
            let f = Frame::parse(&text).ok_or_else(|| format!("not a frame: {text}"))?;
            let ours = (f.ref_.as_deref())
                .and_then(|r| r.parse::<usize>().ok())
                .is_some_and(|r| (1..=topics.len()).contains(&r));
            if f.event == "phx_reply" && ours {
                if f.payload.get("status").and_then(Value::as_str) != Some("ok") {
                    return Err(format!("join refused: {text}"));
                }
                replies += 1;
            }
        }
        // Read once every reply is in: a message that came between them was dropped above,
        // and its number is at most this (the publishers count one before sending it).
        let feed = Sequence {
            floor: self.published.0.load(Relaxed),
            last: None,
        };
        let chat = self.app.rest.as_ref().map(|rest| {
            let k = self.slot % rest.rooms.len();
            let floor = rest.rooms[k].published.0.load(Relaxed);
            (k, Sequence { floor, last: None })
        });
        Ok((link, Seqs { feed, chat }))
    }

    /// Reads and heartbeats until told to leave (`Some(Ok)`), the run ends (`None`), or
    /// something goes wrong (`Some(Err)`).
    async fn live(
        &self,
        link: &mut Link,
        seqs: &mut Seqs,
        leave: &mut mpsc::Receiver<Leave>,
    ) -> Option<Result<Leave, String>> {
        let mut hb = crate::conn::heartbeat_timer(self.slot);
        let mut hbs = 0u64;
        loop {
            tokio::select! {
                how = leave.recv() => return how.map(Ok),
                _ = hb.tick() => {
                    hbs += 1;
                    let beat = match self.v1() {
                        true => format!(
                            r#"{{"topic":"phoenix","event":"heartbeat","payload":{{}},"ref":"hb{hbs}"}}"#
                        ),
                        false => format!(r#"[null,"hb{hbs}","phoenix","heartbeat",{{}}]"#),
                    };
                    if let Err(e) = link.send(beat).await {
                        return Some(Err(format!("heartbeat: {e}")));
                    }
                }
                m = link.next() => match m {
                    Ok(t) => {
                        if let Err(why) = self.on_frame(&t, seqs) {
                            return Some(Err(why));
                        }
                    }
                    Err(why) => return Some(Err(format!("client {}: {why}", self.slot))),
                },
            }
        }
    }

    fn on_frame(&self, text: &str, seqs: &mut Seqs) -> Result<(), String> {
        let f = Frame::parse(text).ok_or_else(|| format!("not a frame: {text}"))?;
        // A feed post's or chat message's body `soak <run> <n>`; another run's is not this
        // run's to count.
        let numbered = |rest: &Rest| {
            (f.payload.get("body").and_then(Value::as_str))
                .and_then(|b| b.strip_prefix(&format!("soak {} ", rest.run)))
                .and_then(|n| n.parse::<u64>().ok())
        };
        match f.event.as_str() {
            "new_post" => {
                // The fixture's `{"seq": n}`, or a feed post.
                let n = match &self.app.rest {
                    None => f.payload.get("seq").and_then(Value::as_u64),
                    Some(rest) => numbered(rest),
                };
                let Some(n) = n else { return Ok(()) };
                self.count(&mut seqs.feed, n, &self.published, &self.tally.delivered);
            }
            "new_message" => {
                let (Some(rest), Some((k, seq))) = (&self.app.rest, &mut seqs.chat) else {
                    return Ok(());
                };
                let Some(n) = numbered(rest) else {
                    return Ok(());
                };
                self.count(seq, n, &rest.rooms[*k].published, &self.tally.chat);
            }
            "presence_state" | "presence_diff" => {
                self.tally.presence.fetch_add(1, Relaxed);
            }
            "change" => {
                self.tally.changes.fetch_add(1, Relaxed);
            }
            "phx_reply" => {}
            "phx_error" | "phx_close" => return Err(format!("unexpected {text}")),
            _ => {}
        }
        Ok(())
    }

    /// Counts `n` in `seq`: delivered, and what it reveals lost or repeated (a second copy of
    /// a message that may have been written twice is no repeat).
    fn count(&self, seq: &mut Sequence, n: u64, published: &Published, delivered: &AtomicU64) {
        let (lost, mut repeated) = seq.receive(n);
        if repeated > 0 && published.1.lock().unwrap().contains(&n) {
            repeated = 0;
        }
        delivered.fetch_add(1, Relaxed);
        self.tally.lost.fetch_add(lost, Relaxed);
        self.tally.repeated.fetch_add(repeated, Relaxed);
    }

    /// Ends a client as `how` says, in the background (a silent one waits for the server).
    fn leave(&self, link: Link, how: Leave) {
        let tally = self.tally.clone();
        let idle_close = self.idle_close;
        let leaves: Vec<String> = (self.topics(0).iter().enumerate())
            .map(|(k, (topic, _))| {
                let r = (k + 1).to_string();
                self.frame(&r, &format!("l{r}"), topic, "phx_leave", "{}")
            })
            .collect();
        tokio::spawn(async move {
            match (link, how) {
                (Link::Ws(ws), Leave::Abrupt) => {
                    // SO_LINGER 0: the close sends a reset, as a dropped network would look
                    // once the server next writes.
                    reset_on_close(ws.get_ref());
                }
                (Link::Ws(mut ws), Leave::Clean) => {
                    let _ = timeout(Duration::from_secs(10), async {
                        let _ = ws.as_mut().close(None).await;
                        while ws.next().await.is_some() {}
                    })
                    .await;
                }
                (Link::Ws(mut ws), Leave::Silent) => {
                    tally.leaving.fetch_add(1, Relaxed);
                    // Reads (and drops) until the server gives up on it.
                    let closed = timeout(idle_close, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    if closed.is_err() {
                        tally.error(format!(
                            "a silent client was not closed by the server within {} s",
                            idle_close.as_secs()
                        ));
                    }
                    tally.leaving.fetch_sub(1, Relaxed);
                }
                // Polling stops mid-poll, as when a tab's network goes.
                (Link::Poll(lp), Leave::Abrupt) => drop(lp),
                // phoenix.js leaves each channel, then stops polling.
                (Link::Poll(lp), Leave::Clean) => {
                    for frame in leaves {
                        let _ = timeout(Duration::from_secs(10), lp.send(&frame)).await;
                    }
                }
                (Link::Poll(mut lp), Leave::Silent) => {
                    tally.leaving.fetch_add(1, Relaxed);
                    lp.stop_polling();
                    tokio::time::sleep(LONGPOLL_GONE).await;
                    // A heartbeat on the old session: it must be gone (410).
                    let beat = r#"[null,"hb","phoenix","heartbeat",{}]"#;
                    match lp.post(beat).await {
                        Ok(v) if v["status"] == 410 => {}
                        Ok(v) => tally.error(format!(
                            "a silent LongPoll session was still open after {} s: {v}",
                            LONGPOLL_GONE.as_secs()
                        )),
                        // No answer: a restart's doing while one runs (its node, and so the
                        // session, is gone), else an error.
                        Err(why) => tally.dropped(format!("silent LongPoll check: {why}")),
                    }
                    tally.leaving.fetch_sub(1, Relaxed);
                }
            }
        });
    }
}

/// SO_LINGER with a zero timeout: closing the socket sends a reset, not a FIN (a zero
/// timeout never blocks the close). Best effort.
fn reset_on_close(tcp: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor, and an option value of the size we pass.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A server frame, V1 (an object) or V2 (an array).
struct Frame {
    ref_: Option<String>,
    event: String,
    payload: Value,
}

impl Frame {
    fn parse(text: &str) -> Option<Frame> {
        let v: Value = serde_json::from_str(text).ok()?;
        let s = |v: &Value| v.as_str().map(str::to_owned);
        match v {
            Value::Array(mut a) if a.len() == 5 => Some(Frame {
                ref_: s(&a[1]),
                event: s(&a[3])?,
                payload: a[4].take(),
            }),
            Value::Object(mut o) => Some(Frame {
                ref_: o.get("ref").and_then(s),
                event: o.get("event").and_then(s)?,
                payload: o.remove("payload")?,
            }),
            _ => None,
        }
    }
}

async fn sample(bench: &Bench, args: &SoakArgs, tally: &Tally, begin: Instant) -> Sample {
    let sum = |f: &dyn Fn(&crate::proc::Proc) -> Option<u64>| -> Option<f64> {
        (!bench.server.is_empty())
            .then(|| bench.server.iter().map(f).sum::<Option<u64>>())
            .flatten()
            .map(|v| v as f64)
    };
    let mib = |v: Option<f64>| v.map(|b| b / (1024.0 * 1024.0));
    let mut scraped: Vec<std::collections::HashMap<String, f64>> = Vec::new();
    for url in &args.metrics_url {
        scraped.push(scrape(url).await.unwrap_or_default());
    }
    let metric = |name: &str| -> Option<f64> {
        if scraped.is_empty() {
            return None;
        }
        let mut total = 0.0;
        for m in &scraped {
            let mut found = false;
            for (k, v) in m {
                if k == name || k.starts_with(&format!("{name}{{")) {
                    total += v;
                    found = true;
                }
            }
            if !found {
                return None;
            }
        }
        Some(total)
    };
    Sample {
        at_secs: begin.elapsed().as_secs_f64(),
        live: tally.live.load(Relaxed),
        gauges: vec![
            (
                "rss_mib",
                mib(sum(&|p| p.rss_bytes())).or(mib(metric("process_resident_memory_bytes"))),
            ),
            ("heap_mib", mib(metric("fawkes_heap_bytes"))),
            ("fds", sum(&|p| p.open_fds()).or(metric("process_open_fds"))),
            (
                "threads",
                sum(&|p| p.threads()).or(metric("process_threads")),
            ),
            ("connections", metric("fawkes_connections")),
            ("topics", metric("fawkes_topics")),
            ("presence", metric("fawkes_presence_entries")),
            (
                "queued_kib",
                metric("fawkes_queued_bytes").map(|b| b / 1024.0),
            ),
            ("tasks", metric("fawkes_tasks")),
        ],
    }
}

/// `GET` a Prometheus text exposition over plain HTTP/1.0; its samples by name with labels.
async fn scrape(url: &str) -> Option<std::collections::HashMap<String, f64>> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (status, body) = http(host, "GET", &format!("/{path}"), None, "")
        .await
        .ok()?;
    (status == 200).then(|| {
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    })
}

fn header() -> String {
    let mut h = format!("{:>7} {:>6}", "minute", "live");
    for (g, _) in GAUGES {
        h += &format!(" {g:>11}");
    }
    h + &format!(
        " {:>10} {:>5} {:>5} {:>6}",
        "delivered", "lost", "rep", "errors"
    )
}

fn row(s: &Sample, t: &Tally) -> String {
    let mut r = format!("{:>7.1} {:>6}", s.at_secs / 60.0, s.live);
    for (_, v) in &s.gauges {
        r += &match v {
            Some(v) => format!(" {v:>11.1}"),
            None => format!(" {:>11}", "n/a"),
        };
    }
    r + &format!(
        " {:>10} {:>5} {:>5} {:>6}",
        t.delivered.load(Relaxed),
        t.lost.load(Relaxed),
        t.repeated.load(Relaxed),
        t.errors.load(Relaxed)
    )
}

/// `pass`, or `fail: <what>`: every gauge's mean over the last third of the samples within
/// 5 % (or its noise floor) of the first third's, nothing lost or repeated, no error. Samples
/// before `warm_up` are left out: silent clients pile up until the first of them are closed
/// at the server's idle timeout, and only then is the population steady.
fn verdict(samples: &[Sample], warm_up: f64, t: &Tally) -> String {
    let samples: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at_secs >= warm_up)
        .cloned()
        .collect();
    let mut fails = Vec::new();
    if samples.len() < 3 {
        fails.push(format!(
            "{} samples after the warm-up, at least 3 needed to compare thirds",
            samples.len()
        ));
    } else {
        let third = samples.len() / 3;
        let (first, last) = (&samples[..third], &samples[samples.len() - third..]);
        for (i, (name, floor)) in GAUGES.iter().enumerate() {
            // Over the samples that have the gauge (a node restarting answers no scrape).
            let mean = |part: &[Sample]| -> Option<f64> {
                let vals: Vec<f64> = part.iter().filter_map(|s| s.gauges[i].1).collect();
                (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
            };
            if let (Some(a), Some(b)) = (mean(first), mean(last)) {
                if (b - a).abs() > (a.abs() * 0.05).max(*floor) {
                    fails.push(format!("{name} {a:.1} -> {b:.1}"));
                }
            }
        }
    }
    for (what, n) in [
        ("lost", t.lost.load(Relaxed)),
        ("repeated", t.repeated.load(Relaxed)),
        ("errors", t.errors.load(Relaxed)),
    ] {
        if n > 0 {
            fails.push(format!("{n} {what}"));
        }
    }
    if fails.is_empty() {
        "pass".into()
    } else {
        format!("fail: {}", fails.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_counts_gaps_repeats_and_the_tail() {
        let mut s = Sequence {
            floor: 10,
            last: None,
        };
        // Published before the join: not owed, not a repeat.
        assert_eq!(s.receive(10), (0, 0));
        assert_eq!(s.receive(11), (0, 0));
        assert_eq!(s.receive(14), (2, 0));
        assert_eq!(s.receive(14), (0, 1));
        assert_eq!(s.receive(12), (0, 1));
        assert_eq!(s.tail(20), 6);
        let late = Sequence {
            floor: 5,
            last: None,
        };
        assert_eq!(late.tail(8), 3);
        let mut first_late = Sequence {
            floor: 5,
            last: None,
        };
        assert_eq!(first_late.receive(9), (3, 0));
    }

    #[test]
    fn frames_of_both_serializers() {
        let v2 = Frame::parse(r#"[null,null,"community:feed","new_post",{"seq":3}]"#).unwrap();
        assert_eq!(
            (v2.event.as_str(), v2.payload["seq"].as_u64()),
            ("new_post", Some(3))
        );
        let v1 = Frame::parse(
            r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok"},"ref":"2","join_ref":"2"}"#,
        )
        .unwrap();
        assert_eq!(
            (v1.ref_.as_deref(), v1.event.as_str()),
            (Some("2"), "phx_reply")
        );
        assert!(Frame::parse("[1,2]").is_none());
    }

    #[test]
    fn the_verdict_compares_thirds_against_each_floor() {
        let s = |rss: f64, tasks: f64| Sample {
            at_secs: 0.0,
            live: 0,
            gauges: GAUGES
                .iter()
                .map(|(n, _)| {
                    (
                        *n,
                        match *n {
                            "rss_mib" => Some(rss),
                            "tasks" => Some(tasks),
                            _ => None,
                        },
                    )
                })
                .collect(),
        };
        let t = Tally::default();
        let flat = [s(100.0, 1000.0), s(101.0, 1000.0), s(101.5, 1000.0)];
        assert_eq!(verdict(&flat, 0.0, &t), "pass");
        let growing = [s(100.0, 1000.0), s(110.0, 1000.0), s(120.0, 1100.0)];
        assert_eq!(
            verdict(&growing, 0.0, &t),
            "fail: rss_mib 100.0 -> 120.0, tasks 1000.0 -> 1100.0"
        );
        t.lost.fetch_add(2, Relaxed);
        assert_eq!(verdict(&flat, 0.0, &t), "fail: 2 lost");
        assert!(verdict(&flat[..2], 0.0, &Tally::default()).starts_with("fail: 2 samples"));
        // The ramp before the warm-up is not compared.
        let mut ramp = vec![s(50.0, 500.0)];
        ramp.extend(flat.iter().cloned().map(|mut x| {
            x.at_secs = 100.0;
            x
        }));
        assert!(verdict(&ramp, 0.0, &Tally::default()).starts_with("fail: rss_mib 50.0"));
        assert_eq!(verdict(&ramp, 90.0, &Tally::default()), "pass");
        // A sample without the gauge (a node restarting answered no scrape) is left out of
        // its third's mean, not the whole gauge.
        let mut gap: Vec<Sample> = [100.0, 100.0, 110.0, 110.0, 130.0, 130.0]
            .iter()
            .map(|&rss| s(rss, 1000.0))
            .collect();
        gap[0].gauges[0].1 = None;
        assert_eq!(
            verdict(&gap, 0.0, &Tally::default()),
            "fail: rss_mib 100.0 -> 130.0"
        );
    }

    #[test]
    fn closes_during_a_restart_are_its_drops_not_errors() {
        let t = Tally::default();
        t.dropped("closed".into());
        assert_eq!(
            (t.errors.load(Relaxed), t.restart_drops.load(Relaxed)),
            (1, 0)
        );
        *t.restart.lock().unwrap() = (true, None);
        t.dropped("closed".into());
        // Just after it ended, its closes are still arriving.
        *t.restart.lock().unwrap() = (false, Some(Instant::now()));
        t.dropped("refused".into());
        assert_eq!(
            (t.errors.load(Relaxed), t.restart_drops.load(Relaxed)),
            (1, 2)
        );
        *t.restart.lock().unwrap() = (false, Instant::now().checked_sub(RESTART_SETTLE * 2));
        t.dropped("closed".into());
        assert_eq!(
            (t.errors.load(Relaxed), t.restart_drops.load(Relaxed)),
            (2, 2)
        );
    }
}
