//! What the agent tells its operators about itself: one type per thing that happens, whose
//! `emit` writes the structured log line *and* moves its metric, so logs and metrics cannot
//! drift apart (Vector's `internal_events`). Call sites build the event and `emit` it; they
//! never log or count on their own. Metric names and help live beside the counters in
//! `metrics.rs`.
//!
//! Also here: logging set-up, human format on a terminal, JSON when asked
//! (`--log-format json` or `ALSENTRY_LOG_FORMAT=json`), level from `--log`/`RUST_LOG` or the
//! caller's default.

use std::fmt::Display;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::{debug, error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;
use crate::core::model::BadReason;
use crate::metrics::{inc, DeviceMetrics, Metrics, SinkMetrics};

/// What the command line (or its environment variables) asked for.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub json: bool,
    /// An `EnvFilter` directive such as `info,alsentry=debug`.
    pub filter: Option<String>,
}

static OPTIONS: OnceLock<LogOptions> = OnceLock::new();

/// Called once by `main` with the parsed command line; library users (tests) fall back to
/// the environment variables.
pub fn configure(options: LogOptions) {
    let _ = OPTIONS.set(options);
}

fn options() -> LogOptions {
    OPTIONS.get().cloned().unwrap_or_else(|| LogOptions {
        json: std::env::var("ALSENTRY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")),
        filter: std::env::var("RUST_LOG").ok(),
    })
}

/// True when log lines (and configuration problems) are JSON objects.
pub fn json() -> bool {
    options().json
}

/// True when the user chose the log filter (`--log` or `RUST_LOG`).
pub fn filter_given() -> bool {
    options().filter.is_some()
}

/// Exit code for an invalid configuration, from every subcommand (sysexits.h `EX_CONFIG`).
/// The systemd unit has `RestartPreventExitStatus=78`: restarting cannot fix a bad file.
pub const EX_CONFIG: u8 = 78;

/// A configuration that is valid but likely not what was meant (`check` prints it; it does
/// not change the exit code), as text or as a JSON line.
pub fn config_warning(path: &Path, warning: &str) {
    if crate::telemetry::json() {
        let line = serde_json::json!({
            "timestamp": crate::clock::rfc3339_ms(crate::clock::wall_ms()),
            "level": "WARN",
            "fields": { "message": warning, "file": path.display().to_string() },
            "target": "alsentry::config",
        });
        eprintln!("{line}");
    } else {
        eprintln!("{}: warning: {warning}", path.display());
    }
}

/// Reports every problem of a configuration that `path` failed with, on stderr, and returns
/// `EX_CONFIG`. `consequence` ends the count line, e.g. "; not starting". In JSON log mode
/// every problem is one JSON object per line, shaped like the log lines, with the file, line,
/// column and key as fields.
pub fn config_refused(path: &Path, err: &ConfigError, consequence: &str) -> ExitCode {
    let summary = format!(
        "{}: {} problem(s){consequence}",
        path.display(),
        err.problems.len()
    );
    if crate::telemetry::json() {
        let ts = crate::clock::rfc3339_ms(crate::clock::wall_ms());
        for p in &err.problems {
            let line = serde_json::json!({
                "timestamp": ts,
                "level": "ERROR",
                "fields": {
                    "message": p.message,
                    "file": p.file.display().to_string(),
                    "line": p.line,
                    "col": p.col,
                    "key": p.path,
                },
                "target": "alsentry::config",
            });
            eprintln!("{line}");
        }
        let line = serde_json::json!({
            "timestamp": ts,
            "level": "ERROR",
            "fields": {
                "message": summary,
                "file": path.display().to_string(),
                "problems": err.problems.len(),
            },
            "target": "alsentry::config",
        });
        eprintln!("{line}");
    } else {
        for p in &err.problems {
            eprintln!("{p}");
        }
        eprintln!("{summary}");
    }
    ExitCode::from(EX_CONFIG)
}

pub fn init(level: Option<&str>) {
    let options = options();
    let filter = options
        .filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if options.json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// Something that happened inside the agent.
pub trait InternalEvent {
    /// Logs it and moves its metrics.
    fn emit(self);
}

pub fn emit(event: impl InternalEvent) {
    event.emit();
}

/// A value an event logs with `%` (errors, addresses): shown with Display, Debug for the event.
pub trait LogValue: Display + std::fmt::Debug {}

impl<T: Display + std::fmt::Debug + ?Sized> LogValue for T {}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

// ---------------------------------------------------------------------------------------------
// Links and devices (io/poller.rs)
// ---------------------------------------------------------------------------------------------

/// A link's connection opened. `again`: after failed attempts.
#[derive(Debug)]
pub struct LinkConnected<'a> {
    pub link: &'a str,
    pub again: bool,
}

impl InternalEvent for LinkConnected<'_> {
    fn emit(self) {
        if self.again {
            info!(link = %self.link, "link connected again");
        } else {
            debug!(link = %self.link, "link connected");
        }
    }
}

/// A link could not connect; logged once per backoff step, not once per device.
#[derive(Debug)]
pub struct LinkConnectFailed<'a> {
    pub link: &'a str,
    pub error: &'a dyn LogValue,
    pub retry_in: Duration,
}

impl InternalEvent for LinkConnectFailed<'_> {
    fn emit(self) {
        warn!(link = %self.link, error = %self.error, retry_in_ms = ms(self.retry_in), "cannot connect");
    }
}

/// How a poll ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PollResult {
    Ok,
    /// The unit did not answer, or its link broke; retried after `retry_in`.
    Failed {
        reason: BadReason,
        retry_in: Duration,
    },
    /// The poll was due but its link is down (the link's own event says so once).
    LinkDown,
}

/// One poll of one device finished: its duration, samples and result.
#[derive(Debug)]
pub struct PollFinished<'a> {
    pub device: &'a DeviceMetrics,
    pub link: &'a str,
    pub unit: u8,
    /// Time spent polling (zero when the link was down).
    pub took: Duration,
    /// Round trip of the last successful read of this poll, if any.
    pub last_rtt: Option<Duration>,
    pub samples: usize,
    pub decode_errors: usize,
    pub result: PollResult,
}

impl InternalEvent for PollFinished<'_> {
    fn emit(self) {
        let d = self.device;
        crate::metrics::observe(&d.poll_duration, self.took);
        if let Some(rtt) = self.last_rtt {
            d.rtt_us_last.store(micros(rtt), Ordering::Relaxed);
            crate::metrics::observe(&d.modbus_rtt, rtt);
        }
        d.samples.fetch_add(self.samples as u64, Ordering::Relaxed);
        if self.decode_errors > 0 {
            d.decode_errors
                .fetch_add(self.decode_errors as u64, Ordering::Relaxed);
        }
        match self.result {
            PollResult::Ok => inc(&d.polls_ok),
            PollResult::Failed { reason, retry_in } => {
                inc(&d.polls_failed);
                warn!(device = %d.name, link = %self.link, unit = self.unit, reason = %reason, retry_in_ms = ms(retry_in), "poll failed");
            }
            PollResult::LinkDown => {
                inc(&d.polls_failed);
                debug!(device = %d.name, link = %self.link, "poll skipped: the link is down");
            }
        }
    }
}

/// Polls that were due while the link was busy: the schedule skipped them.
#[derive(Debug)]
pub struct PollsMissed<'a> {
    pub device: &'a DeviceMetrics,
    pub missed: u64,
}

impl InternalEvent for PollsMissed<'_> {
    fn emit(self) {
        self.device
            .polls_missed
            .fetch_add(self.missed, Ordering::Relaxed);
        debug!(device = %self.device.name, missed = self.missed, "poller fell behind");
    }
}

/// A device answers. `again`: it had failed before.
#[derive(Debug)]
pub struct DeviceUp<'a> {
    pub device: &'a DeviceMetrics,
    pub link: &'a str,
    pub again: bool,
}

impl InternalEvent for DeviceUp<'_> {
    fn emit(self) {
        self.device.up.store(true, Ordering::Relaxed);
        if self.again {
            info!(device = %self.device.name, link = %self.link, "device answers again");
        }
    }
}

/// A device stopped answering (its failed poll is logged by [`PollFinished`]).
#[derive(Debug)]
pub struct DeviceDown<'a> {
    pub device: &'a DeviceMetrics,
}

impl InternalEvent for DeviceDown<'_> {
    fn emit(self) {
        self.device.up.store(false, Ordering::Relaxed);
        debug!(device = %self.device.name, "device down");
    }
}

/// A link poller died (a panic): its devices are reported down until it polls again.
#[derive(Debug)]
pub struct LinkDied<'a> {
    pub link: &'a str,
    pub error: &'a dyn LogValue,
    pub retry_in: Duration,
}

impl InternalEvent for LinkDied<'_> {
    fn emit(self) {
        error!(link = %self.link, error = %self.error, retry_in_ms = ms(self.retry_in), "link poller died; its devices are down until it is restarted");
    }
}

/// The supervisor restarted a link poller that had died.
#[derive(Debug)]
pub struct LinkRestarted<'a> {
    pub metrics: &'a Metrics,
    pub link: &'a str,
    pub restarts: u32,
}

impl InternalEvent for LinkRestarted<'_> {
    fn emit(self) {
        inc(&self.metrics.link_restarts);
        warn!(link = %self.link, restarts = self.restarts, "link poller restarted");
    }
}

/// Exception 02 on a block read: the planner probes which registers the device serves.
#[derive(Debug)]
pub struct UnmappedRegisters<'a> {
    pub device: &'a str,
    pub table: &'a dyn LogValue,
    pub address: u16,
    pub count: u16,
}

impl InternalEvent for UnmappedRegisters<'_> {
    fn emit(self) {
        info!(device = %self.device, table = %self.table, address = self.address, count = self.count, "exception 02: part of this read is not served by the device; finding which");
    }
}

/// A read failed in a way that makes the connection unusable.
#[derive(Debug)]
pub struct ReadFailed<'a> {
    pub device: &'a str,
    pub error: &'a dyn LogValue,
}

impl InternalEvent for ReadFailed<'_> {
    fn emit(self) {
        debug!(device = %self.device, error = %self.error, "read failed; dropping the connection");
    }
}

/// A sample batch was dropped because the engine fell behind (pollers never wait for it).
#[derive(Debug)]
pub struct BatchDropped<'a> {
    pub metrics: &'a Metrics,
    pub device: &'a str,
}

impl InternalEvent for BatchDropped<'_> {
    fn emit(self) {
        inc(&self.metrics.batches_dropped);
        debug!(device = %self.device, "sample batch dropped: the engine is behind");
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks (io/publisher.rs)
// ---------------------------------------------------------------------------------------------

/// CONNACK: the sink is connected.
#[derive(Debug)]
pub struct BrokerConnected<'a> {
    pub sink: &'a SinkMetrics,
    pub broker: &'a dyn LogValue,
    pub backlog: usize,
}

impl InternalEvent for BrokerConnected<'_> {
    fn emit(self) {
        self.sink.connected.store(true, Ordering::Relaxed);
        info!(sink = %self.sink.name, broker = %self.broker, backlog = self.backlog, "connected to broker");
    }
}

/// The connection (or the attempt) failed; the next attempt is in `retry_in`.
#[derive(Debug)]
pub struct BrokerDisconnected<'a> {
    pub sink: &'a SinkMetrics,
    pub broker: &'a dyn LogValue,
    pub error: &'a dyn LogValue,
    /// It had been connected (a CONNACK came), as opposed to an attempt that failed.
    pub was_connected: bool,
    /// Failures in a row, this one included.
    pub failures: u32,
    pub retry_in: Duration,
}

impl InternalEvent for BrokerDisconnected<'_> {
    fn emit(self) {
        self.sink.connected.store(false, Ordering::Relaxed);
        let name = &self.sink.name;
        if self.was_connected {
            warn!(sink = %name, broker = %self.broker, error = %self.error, "connection to broker lost");
        }
        // Once per doubling of the backoff, not at every attempt.
        if self.failures == 1 || self.failures.is_power_of_two() {
            warn!(sink = %name, broker = %self.broker, error = %self.error, retry_in_ms = ms(self.retry_in), failures = self.failures, "broker unreachable");
        }
    }
}

/// A connection could not even be set up (TLS files, options).
#[derive(Debug)]
pub struct ConnectionSetupFailed<'a> {
    pub sink: &'a str,
    pub broker: &'a dyn LogValue,
    pub error: &'a dyn LogValue,
    pub retry_in: Duration,
}

impl InternalEvent for ConnectionSetupFailed<'_> {
    fn emit(self) {
        error!(sink = %self.sink, broker = %self.broker, error = %self.error, retry_in_ms = ms(self.retry_in), "cannot set up the connection");
    }
}

/// A message was handed to the MQTT client.
#[derive(Debug)]
pub struct Published<'a> {
    pub sink: &'a SinkMetrics,
    pub bytes: usize,
}

impl InternalEvent for Published<'_> {
    fn emit(self) {
        inc(&self.sink.published);
        self.sink
            .bytes
            .fetch_add(self.bytes as u64, Ordering::Relaxed);
    }
}

/// A publish is settled: PUBACK (or written, at QoS 0), or refused by an MQTT 5 broker.
#[derive(Debug)]
pub struct PublishSettled<'a> {
    pub sink: &'a SinkMetrics,
    pub latency: Duration,
    /// A PUBACK settled it (any QoS 1 publish: records, status, replies), as opposed to a
    /// QoS 0 publish written to the socket, which has no acknowledgement and no latency.
    pub puback: bool,
    /// The MQTT 5 reason when the broker refused it for good (it is dropped).
    pub refused: Option<&'a str>,
}

impl InternalEvent for PublishSettled<'_> {
    fn emit(self) {
        if let Some(reason) = self.refused {
            // Resending it forever would pin the outbox: dropped, counted in the status.
            error!(sink = %self.sink.name, reason = %reason, "broker refused a message; dropped");
        }
        if self.puback {
            let us = micros(self.latency);
            self.sink
                .puback_latency_us_last
                .store(us, Ordering::Relaxed);
            crate::metrics::observe(&self.sink.puback, self.latency);
            inc(&self.sink.acked);
        }
    }
}

/// A record the broker refuses was moved out of the outbox to its dead-letter file.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    pub sink: &'a SinkMetrics,
    /// Its outbox id, and its topic when known (Debug-printed: it may hold control characters).
    pub id: u64,
    pub topic: Option<&'a str>,
    pub why: &'a str,
    /// Writing it aside failed: it is lost (it left the outbox all the same).
    pub error: Option<&'a dyn LogValue>,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self) {
        inc(&self.sink.dead_lettered);
        match self.error {
            None => {
                error!(sink = %self.sink.name, id = self.id, topic = ?self.topic, why = %self.why, "message moved to the dead-letter file; the rest of the outbox flows")
            }
            Some(e) => {
                error!(sink = %self.sink.name, id = self.id, topic = ?self.topic, why = %self.why, error = %e, "message refused by the broker could not be written to the dead-letter file; lost")
            }
        }
    }
}

/// The outbox is full of more important records: a message was dropped (the outbox counts it).
#[derive(Debug)]
pub struct OutboxFull<'a> {
    pub sink: &'a str,
    pub class: &'a str,
}

impl InternalEvent for OutboxFull<'_> {
    fn emit(self) {
        warn!(sink = %self.sink, class = self.class, "outbox full; message dropped");
    }
}

/// The outbox could not store a message (disk full, read-only).
#[derive(Debug)]
pub struct OutboxWriteFailed<'a> {
    pub sink: &'a SinkMetrics,
    pub error: &'a dyn LogValue,
}

impl InternalEvent for OutboxWriteFailed<'_> {
    fn emit(self) {
        inc(&self.sink.outbox_write_errors);
        error!(sink = %self.sink.name, error = %self.error, "outbox append failed");
    }
}

/// An alarm the outbox could not take went straight to the connected broker.
#[derive(Debug)]
pub struct AlarmSentWithoutDurability<'a> {
    pub sink: &'a str,
    pub topic: &'a str,
}

impl InternalEvent for AlarmSentWithoutDurability<'_> {
    fn emit(self) {
        warn!(sink = %self.sink, topic = %self.topic, "outbox unusable: alarm sent directly, without durability");
    }
}

/// The outbox's size and drops, refreshed by the sink's housekeeping.
#[derive(Debug)]
pub struct OutboxLevels<'a> {
    pub sink: &'a SinkMetrics,
    pub depth: u64,
    pub bytes: u64,
    pub dropped: u64,
}

impl InternalEvent for OutboxLevels<'_> {
    fn emit(self) {
        self.sink.outbox_depth.store(self.depth, Ordering::Relaxed);
        self.sink.outbox_bytes.store(self.bytes, Ordering::Relaxed);
        self.sink.dropped.store(self.dropped, Ordering::Relaxed);
    }
}

/// Records older than `max_age` were dropped unsent.
#[derive(Debug)]
pub struct OutboxExpired<'a> {
    pub sink: &'a str,
    pub expired: usize,
}

impl InternalEvent for OutboxExpired<'_> {
    fn emit(self) {
        warn!(sink = %self.sink, expired = self.expired, "outbox records expired unsent");
    }
}

/// An outbox operation other than append failed; `what` says which.
#[derive(Debug)]
pub struct OutboxError<'a> {
    pub sink: &'a str,
    pub what: OutboxOp,
    pub error: &'a dyn LogValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxOp {
    Read,
    Ack,
    Sync,
    Flush,
}

impl InternalEvent for OutboxError<'_> {
    fn emit(self) {
        let (sink, error) = (self.sink, self.error);
        match self.what {
            OutboxOp::Read => error!(sink = %sink, error = %error, "cannot read the outbox"),
            OutboxOp::Ack => {
                warn!(sink = %sink, error = %error, "cannot record an acknowledgement")
            }
            OutboxOp::Sync => warn!(sink = %sink, error = %error, "outbox sync failed"),
            OutboxOp::Flush => {
                warn!(sink = %sink, error = %error, "outbox flush failed at shutdown")
            }
        }
    }
}

/// The MQTT client refused a request (its channel is sized so that a publish cannot be
/// refused while the event loop lives).
#[derive(Debug)]
pub struct ClientRefused<'a> {
    pub sink: &'a str,
    pub op: ClientOp,
    pub error: &'a dyn LogValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp {
    Subscribe,
    Publish,
}

impl InternalEvent for ClientRefused<'_> {
    fn emit(self) {
        match self.op {
            ClientOp::Subscribe => {
                warn!(sink = %self.sink, error = %self.error, "cannot subscribe to the command topic")
            }
            ClientOp::Publish => {
                error!(sink = %self.sink, error = %self.error, "cannot hand a message to the MQTT client")
            }
        }
    }
}

/// A command the sink did not hand to the engine task.
#[derive(Debug)]
pub struct CommandDropped<'a> {
    pub sink: &'a SinkMetrics,
    pub reason: CommandDropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandDropReason {
    /// The engine's command queue was full: answered `busy`.
    Busy,
    /// Delivered with RETAIN set and larger than a command may be: dropped, no reply.
    RetainedOversized,
}

impl InternalEvent for CommandDropped<'_> {
    fn emit(self) {
        match self.reason {
            CommandDropReason::Busy => {
                inc(&self.sink.commands_busy);
                warn!(sink = %self.sink.name, "command answered busy: the engine's command queue is full");
            }
            CommandDropReason::RetainedOversized => {
                inc(&self.sink.commands_retained_oversized);
                warn!(sink = %self.sink.name, "retained command larger than a command may be: dropped without a reply (clear it on the broker)");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The operations endpoint (io/http.rs)
// ---------------------------------------------------------------------------------------------

/// Something went wrong serving the endpoint; it keeps serving.
#[derive(Debug)]
pub struct HttpTrouble<'a> {
    pub what: HttpOp,
    pub error: &'a dyn LogValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOp {
    /// Accepting failed (typically EMFILE); the server backs off briefly.
    Accept,
    /// Reading a request failed (the client went away).
    Read,
    ConnectionPanicked,
}

impl InternalEvent for HttpTrouble<'_> {
    fn emit(self) {
        let error = self.error;
        match self.what {
            HttpOp::Accept => warn!(error = %error, "HTTP accept failed"),
            HttpOp::Read => debug!(error = %error, "HTTP read failed"),
            HttpOp::ConnectionPanicked => {
                warn!(error = %error, "an HTTP connection task panicked")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engine and state (app.rs, io/seq.rs)
// ---------------------------------------------------------------------------------------------

/// An alarm transition was handed to the sinks.
#[derive(Debug)]
pub struct AlarmPublished<'a> {
    pub metrics: &'a Metrics,
    pub device: &'a str,
    pub rule: &'a str,
    pub state: &'a str,
    pub priority: &'a dyn LogValue,
    pub message: &'a str,
    /// From the sample that changed the state to now, for transitions a sample caused.
    pub latency: Option<Duration>,
}

impl InternalEvent for AlarmPublished<'_> {
    fn emit(self) {
        inc(&self.metrics.alarm_transitions);
        if let Some(l) = self.latency {
            crate::metrics::observe(&self.metrics.alarm_latency, l);
        }
        info!(device = %self.device, rule = %self.rule, state = self.state, priority = %self.priority, message = %self.message, "alarm");
    }
}

/// The event sequence lease could not be raised; `seq` keeps going in memory.
#[derive(Debug)]
pub struct SeqLeaseNotPersisted<'a> {
    pub error: &'a dyn LogValue,
}

impl InternalEvent for SeqLeaseNotPersisted<'_> {
    fn emit(self) {
        warn!(error = %self.error, "cannot persist the event sequence lease");
    }
}

/// The event sequence lease was deleted or damaged after the agent had run; `seq` goes on
/// from what survives or the time floor (io/seq.rs), never from 1.
#[derive(Debug)]
pub struct SeqLeaseDamaged<'a> {
    pub path: &'a Path,
    /// "missing", "empty", "unreadable" or "behind the alarm state".
    pub found: &'static str,
    pub next: u64,
}

impl InternalEvent for SeqLeaseDamaged<'_> {
    fn emit(self) {
        error!(path = %self.path.display(), found = self.found, next_seq = self.next, "the event sequence lease is damaged; seq continues above every number handed out before");
    }
}

/// The previous run's alarm state was taken over at start.
#[derive(Debug)]
pub struct AlarmStateRestored {
    pub restored: usize,
    pub dropped: usize,
    pub cleared: usize,
}

impl InternalEvent for AlarmStateRestored {
    fn emit(self) {
        info!(
            restored = self.restored,
            dropped = self.dropped,
            cleared = self.cleared,
            "alarm state restored: {} alarms restored, {} dropped (rule or device removed), {} retained topics cleared",
            self.restored,
            self.dropped,
            self.cleared
        );
    }
}

/// The alarm state file could not be read; the agent starts with fresh alarm state.
#[derive(Debug)]
pub struct AlarmStateUnreadable<'a> {
    pub error: &'a dyn LogValue,
    pub set_aside: Option<&'a Path>,
}

impl InternalEvent for AlarmStateUnreadable<'_> {
    fn emit(self) {
        let aside = self.set_aside.map(|p| p.display().to_string());
        error!(error = %self.error, set_aside = ?aside, "the alarm state file is unreadable; starting with fresh alarm state");
    }
}

/// The alarm state could not be saved; it is tried again at the next change.
#[derive(Debug)]
pub struct AlarmStateNotSaved<'a> {
    pub error: &'a dyn LogValue,
}

impl InternalEvent for AlarmStateNotSaved<'_> {
    fn emit(self) {
        error!(error = %self.error, "cannot save the alarm state");
    }
}
