//! Requests to an app's backend: signed JSON POSTs over keep-alive connections (awc, actix's
//! own client, on the worker's runtime), each within its channel's timeout, within its
//! backend's bounds (requests in flight, a bounded queue behind them), through a circuit that
//! fails them at once while the backend is down, and with answers read up to a size cap.
//!
//! A backend is one origin (`http://host:port` or `https://host:port`, see [`super::tls`]): every channel whose URLs point there shares
//! its bounds and circuit, since it is that process which is slow or down.

use super::config::BackendLimits;
use crate::metrics::{BackendOutcome, BACKEND};
use hmac::{Hmac, Mac};
use rustls::ClientConfig;
use sha2::Sha256;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The header that carries a request's signature.
pub const SIGNATURE_HEADER: &str = "x-fawkes-signature";

/// `sha256=<hex of HMAC-SHA256(body, secret)>`: what the backend recomputes to trust a request.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Why a request gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the channel's timeout (queue wait included).
    Timeout,
    /// The connection failed or broke.
    Unreachable(String),
    /// The backend answered with a status other than 2xx.
    Status(u16),
    /// The circuit is open: the backend failed lately, so it was not asked.
    CircuitOpen,
    /// Its queue was full.
    QueueFull,
    /// The answer's body passed the size cap.
    TooLarge,
    /// The answer was not what the protocol asks for.
    BadAnswer(String),
}

impl Failure {
    fn outcome(&self) -> BackendOutcome {
        match self {
            Failure::Timeout => BackendOutcome::Timeout,
            Failure::Unreachable(_) => BackendOutcome::Unreachable,
            Failure::Status(_) => BackendOutcome::Status,
            Failure::CircuitOpen => BackendOutcome::CircuitOpen,
            Failure::QueueFull => BackendOutcome::QueueFull,
            Failure::TooLarge => BackendOutcome::TooLarge,
            Failure::BadAnswer(_) => BackendOutcome::BadAnswer,
        }
    }

    /// Whether it says the backend is down or overwhelmed (what opens the circuit), rather than
    /// alive and answering badly.
    fn is_outage(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Unreachable(_) => true,
            Failure::Status(s) => *s >= 500,
            _ => false,
        }
    }

    /// The reason the client is given: it learns that the backend failed, not how (the log
    /// says how).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::TooLarge | Failure::BadAnswer(_) => "bad backend answer",
            _ => "backend unavailable",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "timed out"),
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
            Failure::Status(s) => write!(f, "answered HTTP {s}"),
            Failure::CircuitOpen => write!(f, "circuit open (failing lately), not asked"),
            Failure::QueueFull => write!(f, "queue full, not asked"),
            Failure::TooLarge => write!(f, "answer over the body size cap"),
            Failure::BadAnswer(e) => write!(f, "bad answer: {e}"),
        }
    }
}

/// The circuit of one backend.
#[derive(Debug, Default)]
struct Circuit {
    /// Outages in a row.
    failures: u32,
    /// Open until then: requests fail at once.
    open_until: Option<Instant>,
    /// After that, one request (the probe) goes through; the others still fail until it ends.
    probing: bool,
}

/// One backend origin: its bounds, queue and circuit, shared by every worker.
pub struct Backend {
    origin: String,
    limits: BackendLimits,
    secret: Vec<u8>,
    tls: Arc<ClientConfig>,
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    circuit: Mutex<Circuit>,
}

thread_local! {
    // awc's client is of one thread (its connection pool too): one per worker, kept alive
    // between requests so that connections are reused. It is built for the TLS settings it
    // was first asked with; every backend of a server shares the same ones.
    static CLIENT: RefCell<Option<(Arc<ClientConfig>, awc::Client)>> = const { RefCell::new(None) };
}

/// This worker's client for `tls`.
fn client(tls: &Arc<ClientConfig>) -> awc::Client {
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((t, client)) if Arc::ptr_eq(t, tls) => client.clone(),
            _ => {
                let client = awc::Client::builder()
                    .connector(awc::Connector::new().rustls_0_23(tls.clone()))
                    .disable_timeout()
                    .finish();
                *c = Some((tls.clone(), client.clone()));
                client
            }
        }
    })
}

impl Backend {
    pub fn new(
        origin: String,
        limits: BackendLimits,
        secret: Vec<u8>,
        tls: Arc<ClientConfig>,
    ) -> Backend {
        Backend {
            tls,
            slots: tokio::sync::Semaphore::new(limits.max_concurrency.max(1)),
            origin,
            limits,
            secret,
            waiting: AtomicUsize::new(0),
            circuit: Mutex::new(Circuit::default()),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// What the inspector shows of this backend now: requests in flight and waiting, and its
    /// circuit (open, and the outages in a row that count toward opening it).
    pub fn status(&self) -> serde_json::Value {
        let c = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.limits.max_concurrency.max(1);
        serde_json::json!({
            "origin": self.origin,
            "in_flight": max.saturating_sub(self.slots.available_permits()),
            "waiting": self.waiting.load(Ordering::Relaxed),
            "circuit_open": c.open_until.is_some(),
            "failures_in_a_row": c.failures,
        })
    }

    /// POSTs `body` (JSON) to `url`, signed, and reads the answer with `parse`, all within
    /// `timeout`. Every outcome is counted in `fawkes_backend_requests_total`.
    pub async fn post<T>(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let result = match self.admit() {
            Err(f) => Err(f),
            Ok(probe) => {
                let r = tokio::time::timeout(timeout, self.queue_and_send(url, body, timeout))
                    .await
                    .unwrap_or(Err(Failure::Timeout));
                self.settle(&r, probe);
                r
            }
        };
        let result = result.and_then(|bytes| parse(&bytes).map_err(Failure::BadAnswer));
        let outcome = match &result {
            Ok(_) => BackendOutcome::Ok,
            Err(f) => f.outcome(),
        };
        BACKEND.finished(outcome, started.elapsed());
        if let Err(f) = &result {
            match f {
                Failure::BadAnswer(_) | Failure::TooLarge | Failure::Status(_) => {
                    log::warn!("backend {url}: {f}")
                }
                _ => log::debug!("backend {url}: {f}"),
            }
        }
        result
    }

    /// Lets a request through the circuit, or fails it at once. `Ok(Some(probe))`: it is the one
    /// request trying a backend whose circuit was open.
    fn admit(&self) -> Result<Option<Probe<'_>>, Failure> {
        let mut c = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        let Some(until) = c.open_until else {
            return Ok(None);
        };
        if c.probing || Instant::now() < until {
            return Err(Failure::CircuitOpen);
        }
        c.probing = true;
        Ok(Some(Probe(self)))
    }

    /// Counts the request's outcome in the circuit.
    fn settle(&self, r: &Result<bytes::Bytes, Failure>, probe: Option<Probe<'_>>) {
        let outage = r.as_ref().err().is_some_and(Failure::is_outage);
        let mut c = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        if outage {
            c.failures = c.failures.saturating_add(1);
            let threshold = self.limits.circuit_failures.max(1);
            if probe.is_some() || (c.open_until.is_none() && c.failures >= threshold) {
                if c.open_until.is_none() {
                    BACKEND.circuits_open.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "backend {}: {} failures in a row; failing its requests at once for {:?}",
                        self.origin,
                        c.failures,
                        self.limits.circuit_open
                    );
                }
                BACKEND.circuit_opened.fetch_add(1, Ordering::Relaxed);
                c.open_until = Some(Instant::now() + self.limits.circuit_open);
            }
        } else if matches!(r, Ok(_) | Err(Failure::Status(_) | Failure::TooLarge)) {
            c.failures = 0;
            if c.open_until.take().is_some() {
                BACKEND.circuits_open.fetch_sub(1, Ordering::Relaxed);
                log::info!("backend {}: answering again; circuit closed", self.origin);
            }
        }
        c.probing = false;
        drop(c);
        if let Some(p) = probe {
            std::mem::forget(p);
        }
    }

    /// Waits for a slot (within the queue bound), then sends.
    async fn queue_and_send(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, Failure> {
        let _permit = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.max_queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Failure::QueueFull);
                }
                let _queued = Gauge::new(&self.waiting, &BACKEND.queued, true);
                self.slots
                    .acquire()
                    .await
                    .map_err(|_| Failure::Unreachable("backend closed".into()))?
            }
        };
        let _in_flight = Gauge::new(&self.waiting, &BACKEND.in_flight, false);
        let signature = signature(&self.secret, &body);
        let request = client(&self.tls)
            .post(url)
            .timeout(timeout)
            .insert_header(("content-type", "application/json"))
            .insert_header((SIGNATURE_HEADER, signature));
        let mut response = request.send_body(body).await.map_err(|e| match e {
            awc::error::SendRequestError::Timeout => Failure::Timeout,
            e => Failure::Unreachable(e.to_string()),
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        let cap = self.limits.max_body_bytes;
        response.body().limit(cap).await.map_err(|e| match e {
            awc::error::PayloadError::Overflow => Failure::TooLarge,
            e => Failure::Unreachable(e.to_string()),
        })
    }
}

/// The probe of an open circuit: if its request is dropped unfinished (the socket closed),
/// the next request may probe.
struct Probe<'a>(&'a Backend);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut c = self.0.circuit.lock().unwrap_or_else(|e| e.into_inner());
        c.probing = false;
    }
}

/// Holds a gauge up (and, for the queue, the backend's own count) while it lives.
struct Gauge<'a> {
    waiting: Option<&'a AtomicUsize>,
    gauge: &'a std::sync::atomic::AtomicI64,
}

impl<'a> Gauge<'a> {
    fn new(
        waiting: &'a AtomicUsize,
        gauge: &'a std::sync::atomic::AtomicI64,
        queued: bool,
    ) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge {
            waiting: queued.then_some(waiting),
            gauge,
        }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = self.waiting {
            w.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
