//! `GET /metrics`: the counters of [`crate::metrics`], an endpoint's gauges and the latency
//! histograms, in Prometheus's text format (encoded by the `prometheus` crate), optionally
//! behind a bearer token; and the middleware that times HTTP requests. It sits with the server,
//! above the endpoint whose gauges it reads, so that the counters below stay importable by all.

use crate::endpoint::Endpoint;
use crate::metrics::{
    ClusterStats, Transport, BACKEND, BACKEND_REQUEST, DB_POOL_WAIT, DB_QUERY, ENGINE,
    HTTP_REQUESTS,
};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// What `/metrics` reads, and who may.
#[derive(Clone)]
pub struct MetricsConfig {
    pub endpoint: Endpoint,
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

fn counter(r: &Registry, name: &str, help: &str, v: u64) {
    let c = IntCounter::new(name, help).expect("valid counter");
    c.inc_by(v);
    r.register(Box::new(c)).expect("unique metric");
}

fn gauge(r: &Registry, name: &str, help: &str, v: i64) {
    let g = IntGauge::new(name, help).expect("valid gauge");
    g.set(v);
    r.register(Box::new(g)).expect("unique metric");
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str, values: &[(String, u64)]) {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
    for (l, v) in values {
        c.with_label_values(&[l.as_str()]).inc_by(*v);
    }
    r.register(Box::new(c)).expect("unique metric");
}

/// The whole exposition, as text.
pub fn render(endpoint: &Endpoint) -> String {
    let r = Registry::new();
    let e = &ENGINE;

    let open = IntGaugeVec::new(
        Opts::new(
            "fawkes_connections",
            "Open client connections by transport and serializer",
        ),
        &["transport", "serializer"],
    )
    .expect("valid gauge");
    let opened = IntCounterVec::new(
        Opts::new(
            "fawkes_connections_opened_total",
            "Client connections opened by transport and serializer",
        ),
        &["transport", "serializer"],
    )
    .expect("valid counter");
    for t in [Transport::WebSocket, Transport::LongPoll] {
        for (v2, s) in [(false, "v1"), (true, "v2")] {
            open.with_label_values(&[t.label(), s])
                .set(e.open_connections(t, v2));
            opened
                .with_label_values(&[t.label(), s])
                .inc_by(e.opened_total(t, v2));
        }
    }
    r.register(Box::new(open)).expect("unique metric");
    r.register(Box::new(opened)).expect("unique metric");

    let joins = e.joins();
    let accepted: Vec<(String, u64)> = joins.iter().map(|(p, a, _)| (p.clone(), *a)).collect();
    let refused: Vec<(String, u64)> = joins.iter().map(|(p, _, n)| (p.clone(), *n)).collect();
    counter_vec(
        &r,
        "fawkes_joins_total",
        "Channel joins accepted, by topic prefix (the part before ':')",
        "prefix",
        &accepted,
    );
    counter_vec(
        &r,
        "fawkes_joins_refused_total",
        "Channel joins refused, by topic prefix (unmatched: no route)",
        "prefix",
        &refused,
    );
    counter_vec(
        &r,
        "fawkes_closes_total",
        "Connections closed, by WebSocket close code (1006: without a close frame)",
        "code",
        &e.closes(),
    );

    let ps = endpoint.pubsub().counters();
    // Plain counters: (name, help, value).
    for (name, help, v) in [
        (
            "fawkes_frames_in_total",
            "Frames (messages) received from clients",
            &e.inbound.frames,
        ),
        (
            "fawkes_bytes_in_total",
            "Bytes of frames received from clients",
            &e.inbound.bytes,
        ),
        (
            "fawkes_frames_out_total",
            "Frames handed to transports for clients (WebSocket frames, close frames included)",
            &e.outbound.frames,
        ),
        (
            "fawkes_bytes_out_total",
            "Bytes of frames handed to transports for clients, WebSocket headers included",
            &e.outbound.bytes,
        ),
        (
            "fawkes_queue_overflows_total",
            "Clients closed with 1013 because their outbound queue was full",
            &e.queue_overflows,
        ),
        (
            "fawkes_mailbox_overflows_total",
            "Clients closed with 1013 because their mailbox was full",
            &e.mailbox_overflows,
        ),
        (
            "fawkes_costly_pushes_refused_total",
            "Pushes refused because their socket's budget for costly pushes was spent",
            &e.costly_pushes_refused,
        ),
        (
            "fawkes_writes_refused_total",
            "Writes refused at once because too many were already waiting for the database",
            &e.writes_refused,
        ),
        (
            "fawkes_broadcasts_total",
            "Broadcasts published on this node",
            &ps.broadcasts,
        ),
        (
            "fawkes_deliveries_total",
            "Broadcast frames delivered to subscribers",
            &ps.deliveries,
        ),
        (
            "fawkes_encodes_total",
            "Broadcast encodings (one per broadcast and serializer in use)",
            &ps.encodes,
        ),
        (
            "fawkes_inbox_overflows_total",
            "Broadcasts queued behind a full worker inbox (delivered later, in order)",
            &ps.inbox_overflows,
        ),
        (
            "fawkes_inbox_drops_total",
            "Broadcasts not delivered on a worker over twice its inbox behind",
            &ps.inbox_drops,
        ),
    ] {
        counter(&r, name, help, v.load(Relaxed));
    }

    gauge(
        &r,
        "fawkes_topics",
        "Topics with at least one subscriber",
        endpoint.pubsub().topics().len() as i64,
    );
    gauge(
        &r,
        "fawkes_presence_entries",
        "Presence entries (metas) known on this node: its own and, in a cluster, the other nodes'",
        endpoint.presence().entry_count() as i64,
    );
    gauge(
        &r,
        "fawkes_longpoll_sessions",
        "LongPoll sessions alive",
        e.longpoll_sessions.load(Relaxed),
    );
    gauge(
        &r,
        "fawkes_queued_bytes",
        "Bytes waiting in clients' outbound queues and mailboxes",
        endpoint.queued_bytes() as i64,
    );
    gauge(
        &r,
        "fawkes_tasks",
        "Tasks alive that the server spawned (one per connection, channel task, timer, ...)",
        e.tasks.load(Relaxed),
    );
    if let Some(bytes) = crate::metrics::heap_bytes() {
        gauge(
            &r,
            "fawkes_heap_bytes",
            "Bytes allocated and not freed, as the allocator reports them",
            bytes as i64,
        );
    }
    let by_allocator = IntGaugeVec::new(
        Opts::new(
            "fawkes_allocator_bytes",
            "Bytes each allocator holds, by kind (allocated, active, resident, metadata, free)",
        ),
        &["allocator", "kind"],
    )
    .expect("valid gauge");
    for (allocator, kind, bytes) in crate::metrics::allocator_bytes() {
        (by_allocator.with_label_values(&[allocator, kind])).set(bytes as i64);
    }
    r.register(Box::new(by_allocator)).expect("unique metric");
    // process_resident_memory_bytes, process_open_fds, process_threads and the rest, on Linux.
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("unique metric");
    gauge(
        &r,
        "fawkes_assembling_bytes",
        "Bytes held for WebSocket messages being put together from fragments",
        e.assembling_bytes.load(Relaxed),
    );

    if let Some(c) = endpoint.cluster_stats() {
        cluster(&r, c);
    }
    backends(&r);
    realtime(&r);
    cdc(&r);

    r.register(Box::new(HTTP_REQUESTS.clone()))
        .expect("unique metric");
    r.register(Box::new(DB_QUERY.clone()))
        .expect("unique metric");
    r.register(Box::new(DB_POOL_WAIT.clone()))
        .expect("unique metric");

    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("UTF-8 exposition")
}

/// Change capture from PostgreSQL's logical replication slot.
fn cdc(r: &Registry) {
    use crate::metrics::CDC;
    gauge(
        r,
        "fawkes_cdc_slot_lag_bytes",
        "WAL the change-capture slot holds back, in bytes, at its last read on this node",
        CDC.lag_bytes.load(Relaxed),
    );
    gauge(
        r,
        "fawkes_cdc_reading",
        "1 while this node holds the change-capture slot and reads it",
        CDC.reading.load(Relaxed),
    );
    counter(
        r,
        "fawkes_cdc_changes_total",
        "Row changes read from the slot and broadcast",
        CDC.changes.load(Relaxed),
    );
    counter(
        r,
        "fawkes_cdc_slot_drops_total",
        "Times the slot was dropped and made again for holding back more than --cdc-max-lag-bytes",
        CDC.slot_drops.load(Relaxed),
    );
}

/// Supabase Realtime's channels and REST broadcasts.
fn realtime(r: &Registry) {
    use crate::metrics::REALTIME;
    counter(
        r,
        "fawkes_realtime_broadcasts_total",
        "Supabase Realtime broadcasts relayed (from realtime:* channels and the REST API)",
        REALTIME.relayed.load(Relaxed),
    );
    counter_vec(
        r,
        "fawkes_realtime_refused_total",
        "Supabase Realtime events, joins and REST broadcasts refused, by reason (rate, size, \
         unauthorized, token)",
        "reason",
        &REALTIME.refusals(),
    );
}

/// Requests to apps' backends (channels proxied over HTTP).
fn backends(r: &Registry) {
    let b = &BACKEND;
    counter_vec(
        r,
        "fawkes_backend_requests_total",
        "Requests to apps' backends by outcome (ok, timeout, unreachable, http_error, \
         circuit_open, queue_full, too_large, bad_answer)",
        "outcome",
        &b.requests(),
    );
    counter_vec(
        r,
        "fawkes_backend_connects_total",
        "Socket connects decided by the backend's connect_url: allowed, refused (403) or \
         failed (no usable answer: 500)",
        "verdict",
        &b.connects(),
    );
    gauge(
        r,
        "fawkes_backend_in_flight",
        "Requests to apps' backends sent and not yet answered",
        b.in_flight.load(Relaxed),
    );
    gauge(
        r,
        "fawkes_backend_queued",
        "Requests waiting for a free slot of their backend",
        b.queued.load(Relaxed),
    );
    gauge(
        r,
        "fawkes_backend_circuits_open",
        "Backends whose circuit is open (their requests fail at once)",
        b.circuits_open.load(Relaxed),
    );
    counter(
        r,
        "fawkes_backend_circuit_opened_total",
        "Times a backend's circuit opened",
        b.circuit_opened.load(Relaxed),
    );
    r.register(Box::new(BACKEND_REQUEST.clone()))
        .expect("unique metric");
}

/// The Redis link, on a node of a cluster.
fn cluster(r: &Registry, c: &ClusterStats) {
    gauge(
        r,
        "fawkes_redis_up",
        "1 while the node's Redis link is connected",
        i64::from(c.up.load(Relaxed)),
    );
    for (name, help, v) in [
        (
            "fawkes_redis_outages_total",
            "Times the Redis link was lost",
            &c.outages,
        ),
        (
            "fawkes_redis_published_total",
            "Messages published to Redis",
            &c.published,
        ),
        (
            "fawkes_redis_unpublished_total",
            "Messages that could not be published (Redis down or the queue full)",
            &c.unpublished,
        ),
        (
            "fawkes_redis_received_total",
            "Channel broadcasts from other nodes delivered here",
            &c.received,
        ),
        (
            "fawkes_redis_ignored_total",
            "Messages from Redis ignored: not for this node, not channel broadcasts, or unreadable",
            &c.ignored,
        ),
        (
            "fawkes_redis_refused_total",
            "Messages from Redis refused for a bound: size, nesting or decoded memory",
            &c.refused,
        ),
        (
            "fawkes_redis_not_json_total",
            "Broadcasts from other nodes whose payload JSON cannot carry (not delivered)",
            &c.not_json,
        ),
        (
            "fawkes_recorded_duplicates_total",
            "Recorded broadcasts dropped as already delivered",
            &c.duplicates,
        ),
        (
            "fawkes_recorded_backfilled_total",
            "Recorded broadcasts read from the change log to fill a gap or catch up",
            &c.backfilled,
        ),
        (
            "fawkes_recorded_unsigned_total",
            "Broadcasts on recorded topics whose seq no node of this cluster signed (dropped)",
            &c.unsigned,
        ),
        (
            "fawkes_recorded_unknown_total",
            "Recorded broadcasts whose seq is past the change log's latest (dropped)",
            &c.unknown,
        ),
        (
            "fawkes_presence_replication_sent_total",
            "Presence replication messages sent to other nodes",
            &c.presence_sent,
        ),
        (
            "fawkes_presence_replication_received_total",
            "Presence replication messages received from other nodes",
            &c.presence_received,
        ),
    ] {
        counter(r, name, help, v.load(Relaxed));
    }
}

/// Whether the request carries the token (compared in constant time).
pub fn authorized(req: &HttpRequest, token: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return true };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    // Lengths may differ; ct_eq on slices of unequal length is false without leaking where.
    bool::from(sent.as_bytes().ct_eq(token.as_bytes()))
}

/// `GET /metrics`.
pub async fn handle(req: HttpRequest, config: web::Data<MetricsConfig>) -> HttpResponse {
    if !authorized(&req, config.token.as_deref()) {
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .body("a valid metrics token is required\n");
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&config.endpoint))
}

/// Registers `GET /metrics`.
pub fn routes(cfg: &mut web::ServiceConfig, config: MetricsConfig) {
    cfg.service(
        web::resource("/metrics")
            .app_data(web::Data::new(config))
            .route(web::get().to(handle)),
    );
}

/// Middleware: times every request and counts it by route pattern (bounded: the patterns the
/// app registered, or `unmatched`), method and status.
pub async fn observe_http(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse, actix_web::Error> {
    let start = Instant::now();
    // Fixed labels only: a client may send any method name.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let res = next.call(req).await;
    let (route, status) = match &res {
        Ok(r) => (r.request().match_pattern(), r.status().as_u16().to_string()),
        Err(e) => (
            None,
            e.as_response_error().status_code().as_u16().to_string(),
        ),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    HTTP_REQUESTS
        .with_label_values(&[route.as_str(), method, status.as_str()])
        .observe(start.elapsed().as_secs_f64());
    res.map(ServiceResponse::map_into_boxed_body)
}
