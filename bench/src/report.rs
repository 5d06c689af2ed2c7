//! What a run reports: failures, latency summaries, and the output, a human summary plus (with
//! `--json`) exactly one JSON line.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How many failure reasons to keep: the first few say what went wrong; the rest are counted.
const KEEP_REASONS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect or WebSocket upgrade failed.
    Connect,
    /// The join was refused, or its reply did not come in time.
    Join,
    /// A joined connection closed or failed before the run ended.
    Closed,
}

/// Failures of all connections of a run, shared by their tasks.
#[derive(Default)]
pub struct Failures {
    connect: AtomicU64,
    join: AtomicU64,
    closed: AtomicU64,
    reasons: Mutex<Vec<String>>,
}

impl Failures {
    pub fn record(&self, kind: FailureKind, conn: usize, reason: impl std::fmt::Display) {
        let counter = match kind {
            FailureKind::Connect => &self.connect,
            FailureKind::Join => &self.join,
            FailureKind::Closed => &self.closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut reasons = self.reasons.lock().unwrap();
        if reasons.len() < KEEP_REASONS {
            reasons.push(format!("{kind:?} (conn {conn}): {reason}"));
        }
    }

    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.connect.load(Ordering::Relaxed) + self.join.load(Ordering::Relaxed) + self.closed()
    }

    /// Adds the counts and the first reasons to a report.
    pub fn add_to(&self, report: &mut Report) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        report.num(
            "connect_failures",
            "connect failures",
            load(&self.connect),
            "",
        );
        report.num("join_failures", "join failures", load(&self.join), "");
        report.num("closed_during_run", "closed during run", self.closed(), "");
        let reasons = self.reasons.lock().unwrap().clone();
        for r in &reasons {
            report.note(format!("failure: {r}"));
        }
        report.extra("failure_reasons", json!(reasons));
        report.failures += self.total();
    }
}

/// Latencies are recorded in microseconds, 1 µs to 60 s, with 2 significant digits (1%):
/// precise enough for p99.9 in milliseconds, and small (about 10 KB) so that every subscriber
/// task of a large fan-out can keep its own histogram without locking.
pub fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Merges per-task histograms; the total is `u64`, as a sum of many `u32` counts may not fit.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Histogram<u32>>) -> Histogram<u64> {
    let mut total = Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds");
    for part in parts {
        for v in part.iter_recorded() {
            total.saturating_record_n(v.value_iterated_to(), v.count_at_value() as u64);
        }
    }
    total
}

/// Adds p50 / p99 / p99.9 / max of a histogram of microseconds, in milliseconds.
pub fn add_latency(report: &mut Report, key: &str, hist: &Histogram<u64>) {
    let ms = |us: u64| (!hist.is_empty()).then(|| us as f64 / 1000.0);
    let points = [
        ("p50", "p50", hist.value_at_quantile(0.5)),
        ("p99", "p99", hist.value_at_quantile(0.99)),
        ("p99_9", "p99.9", hist.value_at_quantile(0.999)),
        ("max", "max", hist.max()),
    ];
    for (suffix, label, us) in points {
        let label = format!("{} {label}", key.replace('_', " "));
        report.opt(&format!("{key}_{suffix}_ms"), &label, ms(us), "ms");
    }
}

/// Says so when the bench itself used over half the machine's CPU during a run of `wall`
/// seconds: on a shared machine it then competes with the server it measures.
pub fn note_bench_cpu(report: &mut Report, bench_cpu: Option<f64>, wall: f64) {
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    if let Some(cpu) = bench_cpu.filter(|c| *c > 0.5 * wall * cores) {
        report.note(format!(
            "the bench used {cpu:.1} of the {:.1} CPU-s available: it may be the bottleneck",
            wall * cores
        ));
    }
}

/// A ratio that is `None` when the denominator is unknown or zero.
pub fn per(num: f64, den: Option<f64>) -> Option<f64> {
    den.filter(|d| *d > 0.0).map(|d| num / d)
}

struct Row {
    key: String,
    label: String,
    value: Value,
    unit: &'static str,
}

/// An ordered list of measurements, printed for humans and as one JSON object.
pub struct Report {
    mode: &'static str,
    rows: Vec<Row>,
    extras: Map<String, Value>,
    notes: Vec<String>,
    error: Option<String>,
    /// Connections that failed: a run with any is not `ok`, though it ran to the end.
    failures: u64,
}

impl Report {
    pub fn new(mode: &'static str) -> Report {
        Report {
            mode,
            rows: Vec::new(),
            extras: Map::new(),
            notes: Vec::new(),
            error: None,
            failures: 0,
        }
    }

    /// A measurement. `key` names it in the JSON line, `label` in the human summary.
    pub fn num(&mut self, key: &str, label: &str, value: impl Into<Value>, unit: &'static str) {
        self.rows.push(Row {
            key: key.into(),
            label: label.into(),
            value: value.into(),
            unit,
        });
    }

    /// A measurement that may be unknown (no `--server-pid`, nothing recorded): `null` in JSON.
    pub fn opt(&mut self, key: &str, label: &str, value: Option<f64>, unit: &'static str) {
        self.num(key, label, value.map_or(Value::Null, rounded), unit);
    }

    /// A JSON-only field (not a number for the summary table).
    pub fn extra(&mut self, key: &str, value: Value) {
        self.extras.insert(key.into(), value);
    }

    /// A JSON-only field set with [`Report::extra`].
    pub fn extra_value(&self, key: &str) -> Option<&Value> {
        self.extras.get(key)
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Marks the run as failed: it stopped early, and the numbers cover what happened until then.
    pub fn fail(&mut self, error: impl Into<String>) {
        self.error = Some(error.into());
    }

    /// Whether the run aborted, or any connection failed.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.failures > 0
    }

    pub fn human(&self) -> String {
        let mut out = format!("== {} ==\n", self.mode);
        let width = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        for r in &self.rows {
            let value = match &r.value {
                Value::Null => {
                    out += &format!("  {:width$}  n/a\n", r.label);
                    continue;
                }
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                v => v.to_string(),
            };
            let line = format!("  {:width$}  {value} {}", r.label, r.unit);
            out += line.trim_end();
            out.push('\n');
        }
        for n in &self.notes {
            out += &format!("  note: {n}\n");
        }
        if let Some(e) = &self.error {
            out += &format!("  ERROR: {e}\n");
        }
        out
    }

    pub fn json(&self) -> String {
        let mut obj = Map::new();
        obj.insert("mode".into(), self.mode.into());
        obj.insert("ok".into(), (!self.failed()).into());
        obj.insert("error".into(), json!(self.error));
        for r in &self.rows {
            obj.insert(r.key.clone(), r.value.clone());
        }
        obj.extend(self.extras.clone());
        Value::Object(obj).to_string()
    }
}

/// Three decimals are plenty for every float reported, and keep the JSON line readable.
fn rounded(v: f64) -> Value {
    json!((v * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_latency_in_milliseconds() {
        let (mut a, mut b) = (new_histogram(), new_histogram());
        a.record(1_000).unwrap();
        b.record(3_000).unwrap();
        let mut report = Report::new("t");
        add_latency(&mut report, "latency", &merge([&a, &b]));
        let json: Value = serde_json::from_str(&report.json()).unwrap();
        // Within the histogram's 1% (it reports the top of a value's bucket).
        let near = |k: &str, ms: f64| (json[k].as_f64().unwrap() - ms).abs() <= ms / 100.0;
        assert!(
            near("latency_p50_ms", 1.0) && near("latency_max_ms", 3.0),
            "{json}"
        );
        assert_eq!(json["ok"], json!(true));
    }

    #[test]
    fn any_failure_makes_the_run_not_ok() {
        let failures = Failures::default();
        failures.record(FailureKind::Closed, 3, "closed by server: 1001");
        let mut report = Report::new("t");
        failures.add_to(&mut report);
        let json: Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["ok"], json!(false));
        assert_eq!(json["closed_during_run"], json!(1));
        assert!(!report.json().contains('\n'));
    }
}
