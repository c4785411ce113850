//! Prometheus text exposition (format 0.0.4), written by hand: each role
//! turns its counters into a page at `GET /metrics`.
//!
//! Naming follows Prometheus practice: every name starts with `shoal_`,
//! quantities are in base units (`_bytes`, `_seconds`), counters end in
//! `_total`, labels have few values (status class, source, reason; never
//! a path or an address).
//!
//! ```
//! use shoal_server::metrics::MetricsPage;
//! let mut page = MetricsPage::new();
//! page.counter("shoal_demo_requests_total", "Requests answered.", &[(&[("code", "2xx")], 3.0)]);
//! assert!(page.finish().contains("shoal_demo_requests_total{code=\"2xx\"} 3\n"));
//! ```

use crate::body::{full, Body};
use crate::stats::ServerStatsSnapshot;
use http::{header, HeaderValue, Response};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels of one sample: `(name, value)` pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A page of metrics being written.
#[derive(Default)]
pub struct MetricsPage {
    text: String,
}

impl MetricsPage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        self.family(name, "counter", help, samples);
    }

    /// A counter family of one sample without labels.
    pub fn counter1(&mut self, name: &str, help: &str, value: u64) {
        self.counter(name, help, &[(&[], value as f64)]);
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.family(name, "gauge", help, samples);
    }

    /// A gauge family of one sample without labels.
    pub fn gauge1(&mut self, name: &str, help: &str, value: f64) {
        self.gauge(name, help, &[(&[], value)]);
    }

    /// A histogram family: one [`HistogramSnapshot`] per label set.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels<'_>, HistogramSnapshot)],
    ) {
        self.head(name, "histogram", help);
        for (labels, snapshot) in series {
            let mut cumulative = 0u64;
            for (bound, count) in snapshot.bounds.iter().zip(&snapshot.counts) {
                cumulative += count;
                let le = format_value(*bound);
                self.sample(
                    &format!("{name}_bucket"),
                    labels,
                    Some(("le", &le)),
                    cumulative as f64,
                );
            }
            cumulative += snapshot.counts.last().copied().unwrap_or(0);
            self.sample(
                &format!("{name}_bucket"),
                labels,
                Some(("le", "+Inf")),
                cumulative as f64,
            );
            self.sample(&format!("{name}_sum"), labels, None, snapshot.sum);
            self.sample(&format!("{name}_count"), labels, None, cumulative as f64);
        }
    }

    /// The page's text.
    pub fn finish(self) -> String {
        self.text
    }

    /// The page as a `200` response.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(full(self.text));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.head(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, labels, None, *value);
        }
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(valid_name(name), "bad metric name {name}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, extra: Option<(&str, &str)>, value: f64) {
        self.text.push_str(name);
        let all = labels.iter().copied().chain(extra);
        let mut first = true;
        for (key, value) in all {
            debug_assert!(valid_name(key), "bad label name {key}");
            self.text.push(if first { '{' } else { ',' });
            first = false;
            let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
        }
        if !first {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Integers without a fraction, others as Rust prints them; the special
/// values as Prometheus spells them.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// A histogram with fixed upper bounds, updated with atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the `+Inf` bucket (not cumulative).
    counts: Vec<AtomicU64>,
    /// The sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

/// Upper bounds, in seconds, for latencies from a millisecond to a minute.
pub const LATENCY_BOUNDS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value` (in the histogram's unit).
    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = (value.max(0.0) * 1e6).round() as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl Default for Histogram {
    /// A latency histogram ([`LATENCY_BOUNDS_S`]).
    fn default() -> Self {
        Self::new(LATENCY_BOUNDS_S)
    }
}

/// A histogram at one instant.
#[derive(Clone, Debug)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A page that starts with what every role exposes (see
/// [`write_common`]); `server` is `None` before the role serves.
pub fn role_page(
    role: &str,
    phase: crate::Phase,
    started_unix_s: f64,
    server: Option<&crate::ServerStats>,
) -> MetricsPage {
    let mut page = MetricsPage::new();
    let snapshot = server.map(|s| s.snapshot()).unwrap_or_default();
    write_common(&mut page, role, phase, started_unix_s, &snapshot);
    page
}

/// What every role exposes: its build, its phase, its HTTP server.
pub fn write_common(
    page: &mut MetricsPage,
    role: &str,
    phase: crate::Phase,
    started_unix_s: f64,
    server: &ServerStatsSnapshot,
) {
    page.gauge(
        "shoal_build_info",
        "Always 1; the labels say which build and role this is.",
        &[(
            &[("version", env!("CARGO_PKG_VERSION")), ("role", role)],
            1.0,
        )],
    );
    page.gauge1(
        "shoal_start_time_seconds",
        "When this process started, in seconds since the Unix epoch.",
        started_unix_s,
    );
    page.gauge(
        "shoal_ready",
        "1 while /readyz would answer 200 for the phase alone (starting, ready, draining).",
        &[
            (
                &[("phase", "starting")],
                f64::from(phase == crate::Phase::Starting),
            ),
            (
                &[("phase", "ready")],
                f64::from(phase == crate::Phase::Ready),
            ),
            (
                &[("phase", "draining")],
                f64::from(phase == crate::Phase::Draining),
            ),
        ],
    );
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let labels: Vec<[(&str, &str); 1]> = classes.iter().map(|c| [("code", *c)]).collect();
    let samples: Vec<(Labels<'_>, f64)> = labels
        .iter()
        .zip(server.requests_by_class)
        .map(|(l, v)| (&l[..], v as f64))
        .collect();
    page.counter(
        "shoal_http_requests_total",
        "Requests answered, by status class (counted when the response ends).",
        &samples,
    );
    page.gauge1(
        "shoal_http_requests_in_flight",
        "Requests whose response has not ended yet.",
        server.requests_in_flight as f64,
    );
    page.counter1(
        "shoal_http_response_body_bytes_total",
        "Response body bytes sent to clients of this listener (all of them: viewers, sibling caches, operators).",
        server.response_body_bytes,
    );
    page.counter1(
        "shoal_http_responses_incomplete_total",
        "Responses whose body did not go out in full (the client left, or an upstream failed mid-body).",
        server.responses_incomplete,
    );
    page.gauge1(
        "shoal_http_connections_open",
        "Connections open now.",
        server.connections_active as f64,
    );
    page.counter1(
        "shoal_http_connections_accepted_total",
        "Connections accepted and served.",
        server.connections_accepted,
    );
    page.counter(
        "shoal_http_connections_closed_total",
        "Connections closed by this server's limits, by reason.",
        &[
            (
                &[("reason", "over_limit")],
                server.connections_refused_over_limit as f64,
            ),
            (
                &[("reason", "per_address")],
                server.connections_refused_per_address as f64,
            ),
            (
                &[("reason", "shed_idle")],
                server.connections_shed_idle as f64,
            ),
            (&[("reason", "idle")], server.connections_idle_closed as f64),
            (
                &[("reason", "first_request_timeout")],
                server.connections_first_request_timeout as f64,
            ),
        ],
    );
    page.counter1(
        "shoal_http_tls_handshake_failures_total",
        "TLS handshakes on the HTTPS listener that failed or timed out.",
        server.tls_handshake_failures,
    );
    page.counter1(
        "shoal_http_handler_panics_total",
        "Requests whose handler panicked (each answered 500): a bug to report.",
        server.handler_panics,
    );
    page.counter1(
        "shoal_http_accept_errors_total",
        "Errors from accept itself (out of file descriptors and the like).",
        server.accept_errors,
    );
}

/// The access log's own counter.
pub fn write_access_log(page: &mut MetricsPage, log: &crate::AccessLog) {
    page.counter1(
        "shoal_access_log_dropped_lines_total",
        "Access log lines dropped because the log's file or pipe was behind.",
        log.dropped_lines(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_escaped_and_formatted() {
        let mut page = MetricsPage::new();
        page.gauge("shoal_x", "A \\ help\nline.", &[(&[("a", "q\"\\\n")], 0.5)]);
        page.gauge1("shoal_y", "Y.", f64::INFINITY);
        let text = page.finish();
        assert!(
            text.contains("# HELP shoal_x A \\\\ help\\nline.\n"),
            "{text}"
        );
        assert!(text.contains("shoal_x{a=\"q\\\"\\\\\\n\"} 0.5\n"), "{text}");
        assert!(text.contains("shoal_y +Inf\n"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.5, 0.7, 5.0] {
            histogram.observe(value);
        }
        let mut page = MetricsPage::new();
        page.histogram(
            "shoal_h_seconds",
            "H.",
            &[(&[("source", "origin")], histogram.snapshot())],
        );
        let text = page.finish();
        for line in [
            "shoal_h_seconds_bucket{source=\"origin\",le=\"0.1\"} 1\n",
            "shoal_h_seconds_bucket{source=\"origin\",le=\"1\"} 3\n",
            "shoal_h_seconds_bucket{source=\"origin\",le=\"+Inf\"} 4\n",
            "shoal_h_seconds_sum{source=\"origin\"} 6.25\n",
            "shoal_h_seconds_count{source=\"origin\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
