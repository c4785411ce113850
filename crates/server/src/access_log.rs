//! The access log: one line per finished request, in the combined format
//! (the one nginx and Apache write, which log tools read) or as JSON.
//!
//! Lines are formatted on the connection's task and handed to one writer
//! thread through a bounded queue: a slow disk or a full pipe never holds
//! up a transfer. When the queue is full the line is dropped and counted
//! ([`AccessLog::dropped_lines`], and a warning at most once a minute).
//! [`AccessLog::reopen`] (on SIGHUP) reopens the file after a log rotation.

use crate::exchange::{Exchange, Observer, Outcome};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer at most.
pub const QUEUE_LINES_MAX: usize = 16_384;

/// How each request is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// `addr - - [time] "request" status bytes "referer" "user-agent"`.
    #[default]
    Combined,
    /// One JSON object a line, with every field (duration, outcome, …).
    Json,
}

/// `[access_log]` in a role's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    /// File to append to; standard output when unset.
    pub path: Option<PathBuf>,
}

enum Message {
    Line(String),
    /// Wakes the writer (a reopen was asked).
    Wake,
    /// Flush and end (the process is stopping).
    Stop,
}

/// A running access log.
pub struct AccessLog {
    format: AccessLogFormat,
    queue: SyncSender<Message>,
    dropped: AtomicU64,
    /// Unix second of the last "lines dropped" warning.
    last_warning_s: AtomicU64,
    /// Set by SIGHUP, taken by the writer after its next line or wake-up
    /// (a flag, so that a full queue cannot lose it).
    reopen: Arc<AtomicBool>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens the log `config` names and starts its writer; `None` when the
    /// format is `off`. The error names the file.
    pub fn start(config: &AccessLogConfig) -> Result<Option<Arc<Self>>, AccessLogError> {
        if config.format == AccessLogFormat::Off {
            return Ok(None);
        }
        let sink = Sink::open(config.path.clone())?;
        let (queue, lines) = sync_channel(QUEUE_LINES_MAX);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(sink, lines, &flag))
            .map_err(|source| AccessLogError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(Some(Arc::new(Self {
            format: config.format,
            queue,
            dropped: AtomicU64::new(0),
            last_warning_s: AtomicU64::new(0),
            reopen,
            writer: std::sync::Mutex::new(Some(writer)),
        })))
    }

    /// The server observer that writes each exchange here.
    pub fn observer(self: &Arc<Self>) -> Observer {
        let log = self.clone();
        Arc::new(move |exchange: Exchange| log.record(&exchange))
    }

    /// Queues the line for `exchange` (dropped, and counted, when the
    /// writer is behind by [`QUEUE_LINES_MAX`] lines).
    pub fn record(&self, exchange: &Exchange) {
        let line = match self.format {
            AccessLogFormat::Off => return,
            AccessLogFormat::Combined => combined_line(exchange),
            AccessLogFormat::Json => json_line(exchange),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Message::Line(line))
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = unix_s(SystemTime::now());
            let last = self.last_warning_s.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .last_warning_s
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    dropped_lines_total = dropped,
                    "access log is behind (its file or pipe does not take lines fast enough): lines dropped"
                );
            }
        }
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
        // A full queue needs no wake-up: the writer is busy with it.
        let _ = self.queue.try_send(Message::Wake);
    }

    /// Writes out every queued line and stops the writer (at exit: the
    /// last transfers of a drain are logged too). Later lines are dropped.
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = self.queue.send(Message::Stop);
            let _ = writer.join();
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The access log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("access_log.path {path}: {source}")]
pub struct AccessLogError {
    path: String,
    source: io::Error,
}

/// Where lines go.
struct Sink {
    path: Option<PathBuf>,
    out: io::BufWriter<Box<dyn Write + Send>>,
}

impl Sink {
    fn open(path: Option<PathBuf>) -> Result<Self, AccessLogError> {
        let out: Box<dyn Write + Send> = match &path {
            None => Box::new(io::stdout()),
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
        };
        Ok(Self {
            path,
            out: io::BufWriter::with_capacity(64 * 1024, out),
        })
    }
}

/// How long the writer lets lines gather between batches. While it
/// sleeps, a request's line is a queue push that wakes nothing; then one
/// write(2) takes the batch (the queue holds 16,384 lines: enough for
/// ~160,000 requests a second).
const BATCH_INTERVAL_MS: u64 = 100;

fn write_lines(mut sink: Sink, lines: Receiver<Message>, reopen: &AtomicBool) {
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            if reopen.swap(false, Ordering::Relaxed) {
                let _ = sink.out.flush();
                match Sink::open(sink.path.clone()) {
                    Ok(fresh) => sink = fresh,
                    Err(error) => tracing::warn!("cannot reopen the access log: {error}"),
                }
            }
            match message {
                Message::Line(line) => {
                    let _ = sink.out.write_all(line.as_bytes());
                }
                Message::Wake => {}
                Message::Stop => {
                    let _ = sink.out.flush();
                    return;
                }
            }
            next = lines.try_recv().ok();
        }
        // Nothing more queued: push what is buffered out, then let the
        // next batch gather.
        let _ = sink.out.flush();
        std::thread::sleep(std::time::Duration::from_millis(BATCH_INTERVAL_MS));
    }
    let _ = sink.out.flush();
}

/// The combined log format, as nginx writes it: `$remote_addr - -
/// [$time_local] "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent"` (time in UTC).
pub fn combined_line(exchange: &Exchange) -> String {
    let dash = |value: &Option<String>| value.as_deref().map(escape).unwrap_or_else(|| "-".into());
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\"\n",
        exchange.conn.peer_addr.ip(),
        clf_time(exchange.started),
        exchange.method,
        escape(&exchange.target),
        exchange.version,
        exchange.status,
        exchange.body_bytes_sent,
        dash(&exchange.referer),
        dash(&exchange.user_agent),
    )
}

/// One JSON access-log line (serialized straight from borrowed fields:
/// no intermediate map per request).
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    remote_addr: std::net::IpAddr,
    remote_port: u16,
    method: &'a str,
    target: &'a str,
    protocol: String,
    host: &'a Option<String>,
    status: u16,
    body_bytes_sent: u64,
    duration_ms: f64,
    outcome: &'static str,
    complete: bool,
    referer: &'a Option<String>,
    user_agent: &'a Option<String>,
    note: Option<&'static str>,
    connection: u64,
}

/// One JSON object with every field of `exchange`.
pub fn json_line(exchange: &Exchange) -> String {
    let line = JsonLine {
        time: rfc3339_ms(exchange.started),
        remote_addr: exchange.conn.peer_addr.ip(),
        remote_port: exchange.conn.peer_addr.port(),
        method: exchange.method.as_str(),
        target: &exchange.target,
        protocol: format!("{:?}", exchange.version),
        host: &exchange.host,
        status: exchange.status,
        body_bytes_sent: exchange.body_bytes_sent,
        duration_ms: (exchange.duration.as_secs_f64() * 1e6).round() / 1e3,
        outcome: exchange.outcome.as_str(),
        complete: exchange.outcome == Outcome::Complete,
        referer: &exchange.referer,
        user_agent: &exchange.user_agent,
        note: exchange.note,
        connection: exchange.conn.id,
    };
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
}

/// `"` and `\` and control or non-ASCII bytes as `\xHH`, as nginx does.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            out.push_str(&format!("\\x{byte:02X}"));
        } else {
            out.push(byte as char);
        }
    }
    out
}

fn unix_s(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day, hour, minute, second, millisecond) in UTC.
fn utc_parts(time: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    (
        year,
        month,
        day,
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis(),
    )
}

/// `02/Dec/2026:09:40:00 +0000`.
fn clf_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, hour, minute, second, _) = utc_parts(time);
    format!(
        "{day:02}/{}/{year}:{hour:02}:{minute:02}:{second:02} +0000",
        MONTHS[(month - 1) as usize]
    )
}

/// `2026-12-02T09:40:00.123Z`.
pub fn rfc3339_ms(time: SystemTime) -> String {
    let (year, month, day, hour, minute, second, millis) = utc_parts(time);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::ConnInfo;
    use std::time::Duration;

    fn exchange() -> Exchange {
        Exchange {
            conn: ConnInfo {
                id: 7,
                peer_addr: "127.0.0.9:4000".parse().unwrap(),
                local_addr: "127.0.0.1:80".parse().unwrap(),
                tls: false,
            },
            method: http::Method::GET,
            target: "/videos/a \"b\".mp4?x=1".into(),
            version: http::Version::HTTP_11,
            host: Some("cdn.example".into()),
            referer: None,
            user_agent: Some("curl/8.0".into()),
            status: 206,
            body_bytes_sent: 1024,
            outcome: Outcome::Complete,
            // 2026-12-02T09:40:05.250Z
            started: UNIX_EPOCH + Duration::from_millis(1_796_204_405_250),
            duration: Duration::from_micros(12_345),
            note: Some("hit"),
        }
    }

    #[test]
    fn combined_is_the_nginx_format() {
        assert_eq!(
            combined_line(&exchange()),
            "127.0.0.9 - - [02/Dec/2026:09:40:05 +0000] \"GET /videos/a \\x22b\\x22.mp4?x=1 HTTP/1.1\" 206 1024 \"-\" \"curl/8.0\"\n"
        );
    }

    #[test]
    fn json_has_every_field() {
        let line = json_line(&exchange());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["time"], "2026-12-02T09:40:05.250Z");
        assert_eq!(value["status"], 206);
        assert_eq!(value["duration_ms"], 12.345);
        assert_eq!(value["outcome"], "complete");
        assert_eq!(value["note"], "hit");
        assert_eq!(value["target"], "/videos/a \"b\".mp4?x=1");
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
