//! The agent's metrics and beside each its exported name, type and help: adding a metric is
//! a field here plus a row in its family table (and the bump in the event of `telemetry.rs`
//! that moves it). Counters and gauges are plain atomics (each value has one writer, the
//! event that bumps it); latencies are histograms of our own (`metrics/histogram.rs`: a poll
//! observes two). `render` encodes them
//! all, with the standard `process_*` series, through prometheus-client's OpenMetrics text
//! encoder; the HTTP endpoint only serves that text with [`CONTENT_TYPE`].
//!
//! These values are for watching the agent. No task decides anything from them: who needs a
//! piece of state (devices up, for the status and `/readyz`) gets it from the task that owns it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::model::{Priority, Ts};

mod histogram;
pub use histogram::{exponential_buckets, Histogram};

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Poll durations per device: a few buckets, as there are hundreds of devices.
fn poll_buckets() -> Histogram {
    Histogram::new([0.001, 0.005, 0.025, 0.1, 0.5, 2.5])
}

/// Modbus round trips: 0.5 ms to about 1 s.
fn rtt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 12))
}

/// PUBACK and alarm latencies: 1 ms to about 4 s (the alarm target is p99 < 10 ms).
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// Observes a duration (exported in seconds).
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d);
}

#[derive(Debug)]
pub struct DeviceMetrics {
    pub name: String,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// Polls that were due but skipped because the link fell behind.
    pub polls_missed: AtomicU64,
    /// Time spent in each poll (ok and failed).
    pub poll_duration: Histogram,
    /// A handle on the agent-wide [`Metrics::modbus_rtt`] (histogram handles share counts).
    pub modbus_rtt: Histogram,
    pub rtt_us_last: AtomicU64,
    pub samples: AtomicU64,
    pub decode_errors: AtomicU64,
    /// The `alsentry_device_up` gauge (set by the device up/down events).
    pub up: AtomicBool,
}

impl Default for DeviceMetrics {
    fn default() -> Self {
        DeviceMetrics {
            name: String::new(),
            polls_ok: AtomicU64::new(0),
            polls_failed: AtomicU64::new(0),
            polls_missed: AtomicU64::new(0),
            poll_duration: poll_buckets(),
            modbus_rtt: rtt_buckets(),
            rtt_us_last: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            up: AtomicBool::new(false),
        }
    }
}

/// Per-device families, in export order.
const DEVICE_FAMILIES: &[Family<DeviceMetrics>] = &[
    Family {
        name: "alsentry_polls_total",
        kind: Kind::Counter,
        help: "Device polls by result (missed = due but skipped because the link fell behind or the unit was backing off).",
        read: Read::ByLabel(
            "result",
            &[
                ("ok", |d| load(&d.polls_ok)),
                ("failed", |d| load(&d.polls_failed)),
                ("missed", |d| load(&d.polls_missed)),
            ],
        ),
    },
    Family {
        name: "alsentry_poll_rtt_seconds",
        kind: Kind::Gauge,
        help: "Round trip of the last successful Modbus read.",
        read: Read::Micros(|d| load(&d.rtt_us_last)),
    },
    Family {
        name: "alsentry_poll_duration_seconds",
        kind: Kind::Histogram,
        help: "Time spent in polls (ok and failed); count is the number of those polls.",
        read: Read::Histogram(|d| &d.poll_duration),
    },
    Family {
        name: "alsentry_samples_total",
        kind: Kind::Counter,
        help: "Samples produced by device polls.",
        read: Read::Int(|d| load(&d.samples)),
    },
    Family {
        name: "alsentry_decode_errors_total",
        kind: Kind::Counter,
        help: "Registers read that did not decode to a usable value.",
        read: Read::Int(|d| load(&d.decode_errors)),
    },
    Family {
        name: "alsentry_device_up",
        kind: Kind::Gauge,
        help: "1 when the device answered its last poll.",
        read: Read::Int(|d| u64::from(d.up.load(Ordering::Relaxed))),
    },
];

#[derive(Debug)]
pub struct SinkMetrics {
    pub name: String,
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub bytes: AtomicU64,
    pub outbox_depth: AtomicU64,
    pub outbox_bytes: AtomicU64,
    pub dropped: AtomicU64,
    /// Appends the outbox refused with an I/O error (disk full, unwritable).
    pub outbox_write_errors: AtomicU64,
    /// Publish-to-PUBACK latency of every acknowledged message.
    pub puback: Histogram,
    /// Records the broker refused, moved to the dead-letter file.
    pub dead_lettered: AtomicU64,
    pub puback_latency_us_last: AtomicU64,
    /// Commands received through this sink and answered or dropped by the sink itself:
    /// delivered with RETAIN set and oversized (dropped), engine queue full (answered busy).
    pub commands_retained_oversized: AtomicU64,
    pub commands_busy: AtomicU64,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        SinkMetrics {
            name: String::new(),
            connected: AtomicBool::new(false),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            outbox_depth: AtomicU64::new(0),
            outbox_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            outbox_write_errors: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            commands_retained_oversized: AtomicU64::new(0),
            commands_busy: AtomicU64::new(0),
            puback: latency_buckets(),
            puback_latency_us_last: AtomicU64::new(0),
        }
    }
}

/// Per-sink families, in export order.
const SINK_FAMILIES: &[Family<SinkMetrics>] = &[
    Family {
        name: "alsentry_sink_connected",
        kind: Kind::Gauge,
        help: "1 when the sink is connected to its broker.",
        read: Read::Int(|s| u64::from(s.connected.load(Ordering::Relaxed))),
    },
    Family {
        name: "alsentry_sink_published_total",
        kind: Kind::Counter,
        help: "Messages published to the broker.",
        read: Read::Int(|s| load(&s.published)),
    },
    Family {
        name: "alsentry_sink_acked_total",
        kind: Kind::Counter,
        help: "Publishes acknowledged by the broker (PUBACK).",
        read: Read::Int(|s| load(&s.acked)),
    },
    Family {
        name: "alsentry_sink_bytes_total",
        kind: Kind::Counter,
        help: "Payload bytes published.",
        read: Read::Int(|s| load(&s.bytes)),
    },
    Family {
        name: "alsentry_outbox_dropped_total",
        kind: Kind::Counter,
        help: "Messages dropped from the outbox (full or expired).",
        read: Read::Int(|s| load(&s.dropped)),
    },
    Family {
        name: "alsentry_outbox_write_errors_total",
        kind: Kind::Counter,
        help: "Messages the outbox could not store (disk full, unwritable); alarms then go out without durability while connected.",
        read: Read::Int(|s| load(&s.outbox_write_errors)),
    },
    Family {
        name: "alsentry_outbox_dead_lettered_total",
        kind: Kind::Counter,
        help: "Messages the broker refused again and again (it dropped the connection at them), moved to dead-letter.jsonl in the outbox folder so the rest flows.",
        read: Read::Int(|s| load(&s.dead_lettered)),
    },
    Family {
        name: "alsentry_sink_commands_refused_total",
        kind: Kind::Counter,
        help: "Commands the sink refused itself: retained_oversized = delivered with RETAIN set and larger than a command may be (dropped without a reply), busy = the engine's command queue was full (answered busy).",
        read: Read::ByLabel(
            "reason",
            &[
                ("retained_oversized", |s| load(&s.commands_retained_oversized)),
                ("busy", |s| load(&s.commands_busy)),
            ],
        ),
    },
    Family {
        name: "alsentry_outbox_depth",
        kind: Kind::Gauge,
        help: "Messages waiting in the outbox.",
        read: Read::Int(|s| load(&s.outbox_depth)),
    },
    Family {
        name: "alsentry_outbox_bytes",
        kind: Kind::Gauge,
        help: "Bytes held by the outbox.",
        read: Read::Int(|s| load(&s.outbox_bytes)),
    },
    Family {
        name: "alsentry_puback_latency_seconds",
        kind: Kind::Gauge,
        help: "Publish-to-PUBACK latency of the last acknowledged message.",
        read: Read::Micros(|s| load(&s.puback_latency_us_last)),
    },
    Family {
        name: "alsentry_puback_duration_seconds",
        kind: Kind::Histogram,
        help: "Publish-to-PUBACK latency over all acknowledged messages.",
        read: Read::Histogram(|s| &s.puback),
    },
];

#[derive(Debug)]
pub struct Metrics {
    pub devices: Vec<DeviceMetrics>,
    pub sinks: Vec<SinkMetrics>,
    /// Sample batches dropped because the engine fell behind.
    pub batches_dropped: AtomicU64,
    /// Link pollers restarted by the supervisor after they died.
    pub link_restarts: AtomicU64,
    /// Turns of the engine loop: a burst of polls answered together should cost one.
    pub engine_turns: AtomicU64,
    pub alarm_transitions: AtomicU64,
    pub started_ms: AtomicI64,
    /// Every successful Modbus read's round trip, all devices together.
    pub modbus_rtt: Histogram,
    /// From the sample that changed an alarm's state to the alarm handed to the sinks.
    pub alarm_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            devices: Vec::new(),
            sinks: Vec::new(),
            batches_dropped: AtomicU64::new(0),
            link_restarts: AtomicU64::new(0),
            engine_turns: AtomicU64::new(0),
            alarm_transitions: AtomicU64::new(0),
            started_ms: AtomicI64::new(0),
            modbus_rtt: rtt_buckets(),
            alarm_latency: latency_buckets(),
        }
    }
}

// Agent-wide families (one sample each, or computed): written by `render` in this order.
const SAMPLES_PER_SECOND: (&str, &str) = (
    "alsentry_samples_per_second",
    "Average samples per second since start (use rate(alsentry_samples_total[1m]) for the current rate).",
);
const MODBUS_RTT: (&str, &str) = (
    "alsentry_modbus_rtt_seconds",
    "Round trip of successful Modbus reads (the last read of each poll), all devices.",
);
const BATCHES_DROPPED: (&str, &str) = (
    "alsentry_batches_dropped_total",
    "Sample batches dropped because the engine fell behind.",
);
const LINK_RESTARTS: (&str, &str) = (
    "alsentry_link_restarts_total",
    "Link pollers that died (a panic) and were restarted by the supervisor, with backoff.",
);
const ENGINE_TURNS: (&str, &str) = (
    "alsentry_engine_turns_total",
    "Turns of the engine loop (each a wake-up): polls answered together share one; its 250 ms tick adds 4 a second. Compare rate(alsentry_engine_turns_total[5m]) with sum(rate(alsentry_polls_total[5m])).",
);
const ALARM_TRANSITIONS: (&str, &str) = (
    "alsentry_alarm_transitions_total",
    "Alarm state transitions published.",
);
const ALARM_LATENCY: (&str, &str) = (
    "alsentry_alarm_latency_seconds",
    "From the sample that changed an alarm's state to the transition handed to the sinks.",
);
const ALARMS: (&str, &str) = (
    "alsentry_alarms",
    "Alarms currently shown to operators, by published state and priority.",
);
const ALARM_FLOODS: (&str, &str) = (
    "alsentry_alarm_floods_total",
    "Alarm floods detected (an area annunciating more than its flood threshold, by default 10 alarms in 10 minutes).",
);
const ALARM_CHATTERING: (&str, &str) = (
    "alsentry_alarm_chattering_total",
    "Chattering alarm episodes detected.",
);
const UPTIME: (&str, &str) = (
    "alsentry_uptime_seconds",
    "Seconds since the agent started.",
);
const BUILD_INFO: (&str, &str) = (
    "alsentry_build_info",
    "Build information; the value is always 1.",
);

/// Alarm counts owned by the engine (it publishes them for the endpoint), rendered here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmCounts {
    /// Alarms shown, by (published state, priority), zeros included.
    pub by_state_priority: BTreeMap<(&'static str, Priority), u64>,
    pub floods_total: u64,
    pub chattering_total: u64,
}

impl Metrics {
    pub fn new(
        devices: impl IntoIterator<Item = String>,
        sinks: impl IntoIterator<Item = String>,
    ) -> Arc<Metrics> {
        let modbus_rtt = rtt_buckets();
        Arc::new(Metrics {
            devices: devices
                .into_iter()
                .map(|name| DeviceMetrics {
                    name,
                    modbus_rtt: modbus_rtt.clone(),
                    ..Default::default()
                })
                .collect(),
            modbus_rtt,
            sinks: sinks
                .into_iter()
                .map(|name| SinkMetrics {
                    name,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub fn device(&self, i: u32) -> Option<&DeviceMetrics> {
        self.devices.get(i as usize)
    }

    pub fn sink(&self, i: usize) -> Option<&SinkMetrics> {
        self.sinks.get(i)
    }

    /// Every metric, then the `process_*` series, in the OpenMetrics text format
    /// ([`CONTENT_TYPE`]), encoded by prometheus-client, as one string: [`Metrics::scrape`]
    /// joined. `now` is passed in; the process series are read from /proc at the call.
    ///
    /// `alsentry_samples_per_second` is the average since start (all samples / uptime); for
    /// the current rate use `rate(alsentry_samples_total[1m])`.
    pub fn render(self: &Arc<Self>, alarms: &AlarmCounts, now: Ts) -> String {
        self.scrape(alarms.clone(), now).collect()
    }

    /// The text of [`Metrics::render`] in chunks of about [`CHUNK_BYTES`], each encoded when
    /// it is asked for, from the live values: a scrape of hundreds of devices (~1 KB of text
    /// each) makes no string of the whole text, nor a copy of the values and their labels.
    pub fn scrape(self: &Arc<Self>, alarms: AlarmCounts, now: Ts) -> Scrape {
        Scrape {
            metrics: self.clone(),
            alarms,
            now,
            next: Some(Part::Items {
                side: Side::Devices,
                family: 0,
                from: 0,
            }),
        }
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds 1 to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// One exported family with a sample (or a few) per device or per sink.
struct Family<T: 'static> {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: Read<T>,
}

/// One value of an extra label and how to read its sample.
type LabelledValue<T> = (&'static str, fn(&T) -> u64);

/// How a family's samples are read from one device's or sink's values.
enum Read<T: 'static> {
    Int(fn(&T) -> u64),
    /// Microseconds, exported as seconds.
    Micros(fn(&T) -> u64),
    /// One sample per value of an extra label.
    ByLabel(&'static str, &'static [LabelledValue<T>]),
    Histogram(fn(&T) -> &Histogram),
}

/// Chunks of a scrape's text are about this long: one may overrun it by a part (up to ~10 KB:
/// 8 sinks of the 16-line PUBACK histogram).
pub const CHUNK_BYTES: usize = 16 * 1024;

/// Devices (or sinks) encoded together: a part of the per-device poll histogram (9 lines of
/// ~70 bytes a device) is ~5 KB.
const ITEMS_PER_PART: usize = 8;

/// Whose per-item families a part belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Devices,
    Sinks,
}

/// One piece of a scrape, in export order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Items `from..from + ITEMS_PER_PART` of one per-device or per-sink family.
    Items {
        side: Side,
        family: usize,
        from: usize,
    },
    /// The agent-wide families, between the device and the sink ones.
    AgentWide,
    /// Uptime, build info, the process series and `# EOF`.
    Tail,
}

/// One scrape: an iterator of text chunks ([`Metrics::scrape`]).
#[derive(Debug)]
pub struct Scrape {
    metrics: Arc<Metrics>,
    alarms: AlarmCounts,
    now: Ts,
    next: Option<Part>,
}

impl Iterator for Scrape {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let mut out = String::new();
        while out.len() < CHUNK_BYTES {
            let Some(part) = self.next else { break };
            if out.capacity() == 0 {
                out.reserve(CHUNK_BYTES + CHUNK_BYTES / 2);
            }
            if self.encode(part, &mut out).is_err() {
                // Writing to a String cannot fail; were it to, the text ends without `# EOF`,
                // which tells a scraper that it is incomplete.
                self.next = None;
                break;
            }
            self.next = self.after(part);
        }
        // The endpoint holds every chunk until the last is made (for its Content-Length): each
        // keeps only its text, not the room reserved for the part that might overrun it.
        out.shrink_to_fit();
        (!out.is_empty()).then_some(out)
    }
}

impl Scrape {
    fn after(&self, part: Part) -> Option<Part> {
        match part {
            Part::Items { side, family, from } => {
                let (items, families) = match side {
                    Side::Devices => (self.metrics.devices.len(), DEVICE_FAMILIES.len()),
                    Side::Sinks => (self.metrics.sinks.len(), SINK_FAMILIES.len()),
                };
                Some(if from + ITEMS_PER_PART < items {
                    Part::Items {
                        side,
                        family,
                        from: from + ITEMS_PER_PART,
                    }
                } else if family + 1 < families {
                    Part::Items {
                        side,
                        family: family + 1,
                        from: 0,
                    }
                } else if side == Side::Devices {
                    Part::AgentWide
                } else {
                    Part::Tail
                })
            }
            Part::AgentWide => Some(Part::Items {
                side: Side::Sinks,
                family: 0,
                from: 0,
            }),
            Part::Tail => None,
        }
    }

    /// Appends one part to `out`. prometheus-client encodes registries of owned collectors:
    /// a per-item part holds the metrics and reads them as it encodes; the few agent-wide
    /// families are copied.
    fn encode(&self, part: Part, out: &mut String) -> Result<(), std::fmt::Error> {
        let mut registry = Registry::default();
        let start = out.len();
        match part {
            Part::Items { side, family, from } => {
                registry.register_collector(Box::new(ItemsPart {
                    metrics: self.metrics.clone(),
                    side,
                    family,
                    from,
                }));
            }
            Part::AgentWide => registry.register_collector(Box::new(Families(
                self.metrics.agent_wide(&self.alarms, self.now),
            ))),
            Part::Tail => {
                registry.register_collector(Box::new(Families(self.metrics.tail(self.now))));
                registry.register_collector(Box::new(process::ProcessCollector));
            }
        }
        text::encode_registry(out, &registry)?;
        match part {
            // A family's later parts continue the samples of its first, under its descriptor.
            Part::Items { from, .. } if from > 0 => strip_descriptor(out, start),
            Part::Tail => text::encode_eof(out)?,
            _ => {}
        }
        Ok(())
    }
}

/// Removes the descriptor lines (`# HELP`, `# TYPE`, `# UNIT`) the encoder wrote at `start`.
fn strip_descriptor(out: &mut String, start: usize) {
    let mut end = start;
    while out.get(end..).is_some_and(|rest| rest.starts_with("# ")) {
        match out.get(end..).and_then(|rest| rest.find('\n')) {
            Some(i) => end += i + 1,
            None => end = out.len(),
        }
    }
    out.replace_range(start..end, "");
}

/// Part of one per-device or per-sink family, read from the live metrics as it is encoded.
#[derive(Debug)]
struct ItemsPart {
    metrics: Arc<Metrics>,
    side: Side,
    family: usize,
    from: usize,
}

impl Collector for ItemsPart {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        match self.side {
            Side::Devices => match DEVICE_FAMILIES.get(self.family) {
                Some(f) => encode_items(
                    &mut encoder,
                    f,
                    "device",
                    part(&m.devices, self.from),
                    |d| &d.name,
                ),
                None => Ok(()),
            },
            Side::Sinks => match SINK_FAMILIES.get(self.family) {
                Some(f) => encode_items(&mut encoder, f, "sink", part(&m.sinks, self.from), |s| {
                    &s.name
                }),
                None => Ok(()),
            },
        }
    }
}

fn part<T>(items: &[T], from: usize) -> &[T] {
    let end = from.saturating_add(ITEMS_PER_PART).min(items.len());
    items.get(from..end).unwrap_or_default()
}

fn metric_type(kind: Kind) -> MetricType {
    match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
        Kind::Info => MetricType::Info,
    }
}

/// A whole number: a counter's, or a gauge's (as i64, saturated).
fn encode_int(
    m: prometheus_client::encoding::MetricEncoder<'_>,
    kind: Kind,
    n: u64,
) -> Result<(), std::fmt::Error> {
    if kind == Kind::Counter {
        ConstCounter::new(n).encode(m)
    } else {
        ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m)
    }
}

/// One family's descriptor and the samples of `items`, labelled `label="<name>"` (and the
/// family's extra label, if any).
fn encode_items<T>(
    encoder: &mut DescriptorEncoder<'_>,
    f: &Family<T>,
    label: &'static str,
    items: &[T],
    name: fn(&T) -> &str,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(declared(f.name, f.kind), f.help, None, metric_type(f.kind))?;
    for item in items {
        let labels = [(label, name(item))];
        match &f.read {
            Read::Int(get) => encode_int(family.encode_family(&labels)?, f.kind, get(item))?,
            Read::Micros(get) => {
                ConstGauge::new(get(item) as f64 / 1e6).encode(family.encode_family(&labels)?)?
            }
            Read::ByLabel(extra, values) => {
                for (value, get) in *values {
                    let labels = [(label, name(item)), (*extra, *value)];
                    encode_int(family.encode_family(&labels)?, f.kind, get(item))?;
                }
            }
            Read::Histogram(get) => get(item).encode(family.encode_family(&labels)?)?,
        }
    }
    Ok(())
}

/// One agent-wide family, copied at the scrape (there are a dozen, of a few samples each).
#[derive(Debug)]
struct Scraped {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    series: Vec<(Labels, Value)>,
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Int(u64),
    Float(f64),
    /// A live histogram (its handle shares the counts).
    Histogram(Histogram),
    /// `{name}_info{labels} 1`
    Info,
}

fn single((name, help): (&'static str, &'static str), kind: Kind, v: Value) -> Scraped {
    Scraped {
        name,
        help,
        kind,
        series: vec![(Vec::new(), v)],
    }
}

impl Metrics {
    fn uptime_s(&self, now: Ts) -> f64 {
        (now - self.started_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0
    }

    /// The families between the per-device and the per-sink ones.
    fn agent_wide(&self, alarms: &AlarmCounts, now: Ts) -> Vec<Scraped> {
        let uptime_s = self.uptime_s(now);
        let samples_all = self
            .devices
            .iter()
            .fold(0u64, |n, d| n.saturating_add(load(&d.samples)));
        let sps = if uptime_s > 0.0 {
            samples_all as f64 / uptime_s
        } else {
            0.0
        };
        vec![
            single(SAMPLES_PER_SECOND, Kind::Gauge, Value::Float(sps)),
            single(
                MODBUS_RTT,
                Kind::Histogram,
                Value::Histogram(self.modbus_rtt.clone()),
            ),
            single(
                BATCHES_DROPPED,
                Kind::Counter,
                Value::Int(load(&self.batches_dropped)),
            ),
            single(
                LINK_RESTARTS,
                Kind::Counter,
                Value::Int(load(&self.link_restarts)),
            ),
            single(
                ENGINE_TURNS,
                Kind::Counter,
                Value::Int(load(&self.engine_turns)),
            ),
            single(
                ALARM_TRANSITIONS,
                Kind::Counter,
                Value::Int(load(&self.alarm_transitions)),
            ),
            single(
                ALARM_LATENCY,
                Kind::Histogram,
                Value::Histogram(self.alarm_latency.clone()),
            ),
            Scraped {
                name: ALARMS.0,
                help: ALARMS.1,
                kind: Kind::Gauge,
                series: alarms
                    .by_state_priority
                    .iter()
                    .map(|((state, priority), n)| {
                        (
                            vec![
                                ("state", state.to_string()),
                                ("priority", priority.as_str().to_string()),
                            ],
                            Value::Int(*n),
                        )
                    })
                    .collect(),
            },
            single(ALARM_FLOODS, Kind::Counter, Value::Int(alarms.floods_total)),
            single(
                ALARM_CHATTERING,
                Kind::Counter,
                Value::Int(alarms.chattering_total),
            ),
        ]
    }

    /// The families after the per-sink ones (the process series follow them).
    fn tail(&self, now: Ts) -> Vec<Scraped> {
        vec![
            single(UPTIME, Kind::Gauge, Value::Float(self.uptime_s(now))),
            Scraped {
                name: BUILD_INFO.0,
                help: BUILD_INFO.1,
                kind: Kind::Info,
                series: vec![(
                    vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                    Value::Info,
                )],
            },
        ]
    }
}

/// A counter's family name as OpenMetrics declares it: without `_total` (and an info's
/// without `_info`), which the encoder puts back on the sample, so `alsentry_polls_total{...}`
/// stays the series' name.
fn declared(name: &str, kind: Kind) -> &str {
    match kind {
        Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
        Kind::Info => name.strip_suffix("_info").unwrap_or(name),
        _ => name,
    }
}

/// Copied families, encoded in order.
#[derive(Debug)]
struct Families(Vec<Scraped>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut family = encoder.encode_descriptor(
                declared(f.name, f.kind),
                f.help,
                None,
                metric_type(f.kind),
            )?;
            for (labels, value) in &f.series {
                if let Value::Info = value {
                    Info::new(labels.clone()).encode(family.encode_family(&Vec::<(
                        &str,
                        String,
                    )>::new(
                    ))?)?;
                    continue;
                }
                let m = family.encode_family(labels)?;
                match value {
                    Value::Int(n) => encode_int(m, f.kind, *n)?,
                    Value::Float(x) => ConstGauge::new(*x).encode(m)?,
                    Value::Histogram(h) => h.encode(m)?,
                    Value::Info => {}
                }
            }
        }
        Ok(())
    }
}

/// The standard `process_*` series of the Prometheus client libraries, read from /proc.
pub mod process {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::MetricType;

    /// Clock ticks per second of /proc/*/stat times: USER_HZ, 100 on Linux for every
    /// architecture alsentry ships for (x86_64, aarch64, armv7).
    const TICKS_PER_SECOND: f64 = 100.0;

    #[derive(Debug, Clone, Copy)]
    pub struct ProcessCollector;

    /// What /proc says about this process, or None off Linux.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ProcessStats {
        pub cpu_seconds: f64,
        pub resident_bytes: f64,
        pub virtual_bytes: f64,
        pub start_time_seconds: f64,
        pub threads: f64,
        pub open_fds: Option<f64>,
        pub max_fds: Option<f64>,
    }

    /// Fields of /proc/self/stat after the command name (which may hold spaces).
    fn stat_fields(stat: &str) -> Option<Vec<&str>> {
        let after = stat.rsplit_once(')')?.1;
        Some(after.split_whitespace().collect())
    }

    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After ")": state is field 3 of proc(5), so field n is at index n - 3.
        let f = stat_fields(&stat)?;
        let num = |n: usize| f.get(n - 3).and_then(|s| s.parse::<f64>().ok());
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|k| k * 1024.0)
        };
        let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<f64>().ok())
            });
        Some(ProcessStats {
            cpu_seconds: (num(14)? + num(15)?) / TICKS_PER_SECOND,
            resident_bytes: kib("VmRSS:")?,
            virtual_bytes: kib("VmSize:")?,
            start_time_seconds: btime + num(22)? / TICKS_PER_SECOND,
            threads: num(20)?,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds,
        })
    }

    impl Collector for ProcessCollector {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            let Some(p) = read() else {
                return Ok(());
            };
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(p.cpu_seconds).encode(m)?;
            let gauges = [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    Some(p.resident_bytes),
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    Some(p.virtual_bytes),
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    Some(p.start_time_seconds),
                ),
                (
                    "process_threads",
                    "Number of OS threads in the process.",
                    Some(p.threads),
                ),
                (
                    "process_open_fds",
                    "Number of open file descriptors.",
                    p.open_fds,
                ),
                (
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    p.max_fds,
                ),
            ];
            for (name, help, value) in gauges {
                if let Some(v) = value {
                    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                    ConstGauge::new(v).encode(m)?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        let m = Metrics::new(
            ["pot \"7\"\\a\nb".to_string(), "kiln".to_string()],
            ["plant".to_string()],
        );
        m.started_ms.store(10_000, Ordering::Relaxed);
        m.devices[0].polls_ok.store(40, Ordering::Relaxed);
        m.devices[0].polls_failed.store(2, Ordering::Relaxed);
        m.devices[0].samples.store(300, Ordering::Relaxed);
        m.devices[1].samples.store(100, Ordering::Relaxed);
        m.devices[0].rtt_us_last.store(1_500, Ordering::Relaxed);
        m
    }

    /// Every family encoded whole, one collector each, in one registry: what the parts of a
    /// scrape must add up to.
    fn whole(m: &Arc<Metrics>) -> String {
        #[derive(Debug)]
        struct WholeFamily(Arc<Metrics>, Side, usize);
        impl Collector for WholeFamily {
            fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
                match self.1 {
                    Side::Devices => encode_items(
                        &mut e,
                        &DEVICE_FAMILIES[self.2],
                        "device",
                        &self.0.devices,
                        |d| &d.name,
                    ),
                    Side::Sinks => {
                        encode_items(&mut e, &SINK_FAMILIES[self.2], "sink", &self.0.sinks, |s| {
                            &s.name
                        })
                    }
                }
            }
        }
        let mut r = Registry::default();
        for f in 0..DEVICE_FAMILIES.len() {
            r.register_collector(Box::new(WholeFamily(m.clone(), Side::Devices, f)));
        }
        r.register_collector(Box::new(Families(m.agent_wide(&AlarmCounts::default(), 0))));
        for f in 0..SINK_FAMILIES.len() {
            r.register_collector(Box::new(WholeFamily(m.clone(), Side::Sinks, f)));
        }
        r.register_collector(Box::new(Families(m.tail(0))));
        r.register_collector(Box::new(process::ProcessCollector));
        let mut out = String::new();
        text::encode(&mut out, &r).unwrap();
        out
    }

    fn render(m: &Arc<Metrics>, now: Ts) -> String {
        m.render(&AlarmCounts::default(), now)
    }

    /// The families of an exposition: (declared name, type) in order, checking the
    /// OpenMetrics rules this endpoint relies on on the way.
    fn families(text: &str) -> Vec<(String, String)> {
        assert!(text.ends_with("# EOF\n"), "ends with the EOF marker");
        let mut declared: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    !declared.iter().any(|(n, _)| n == name),
                    "{name} declared twice"
                );
                declared.push((name.to_string(), kind.to_string()));
            } else if line.starts_with("# HELP ") || line == "# EOF" {
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let (family, kind) = declared.last().expect("sample before any TYPE");
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                assert!(
                    suffixes.iter().any(|s| name == format!("{family}{s}")),
                    "{name} outside its family {family}"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        declared
    }

    /// Families are split into parts of a few devices; the parts after the first continue
    /// the family's samples without declaring it again, whatever the number of devices.
    #[test]
    fn a_scrape_in_parts_declares_each_family_once_and_holds_every_device() {
        for n in [0usize, 1, ITEMS_PER_PART, ITEMS_PER_PART + 1, 203] {
            let m = Metrics::new(
                (0..n).map(|i| format!("d{i}")),
                (0..n.max(1)).map(|i| format!("s{i}")),
            );
            m.devices.iter().for_each(|d| inc(&d.polls_ok));
            let chunks: Vec<String> = m.scrape(AlarmCounts::default(), 0).collect();
            for c in &chunks {
                assert!(
                    c.len() < CHUNK_BYTES + 12 * 1024 && c.capacity() == c.len(),
                    "{n}: a chunk of {} in {}",
                    c.len(),
                    c.capacity()
                );
            }
            let text = chunks.concat();
            // The text every family whole in one registry gives, up to the process series
            // (read from /proc at each call).
            let agent = |t: &str| {
                t.split("# HELP process_")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(agent(&text), agent(&whole(&m)), "{n}");
            let declared = families(&text);
            assert_eq!(
                declared.len(),
                DEVICE_FAMILIES.len() + 10 + SINK_FAMILIES.len() + 2 + 7,
                "{n}: {declared:?}"
            );
            for i in 0..n {
                let label = format!("{{device=\"d{i}\"}}");
                let up = format!("alsentry_device_up{label} 0\n");
                assert_eq!(text.matches(&up).count(), 1, "{n}: {up}");
                let count = format!("alsentry_poll_duration_seconds_count{label} 0\n");
                assert_eq!(text.matches(&count).count(), 1, "{n}: {count}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&metrics(), 20_000);
        assert!(
            text.contains(r#"alsentry_polls_total{device="pot \"7\"\\a\nb",result="ok"} 40"#),
            "{text}"
        );
    }

    #[test]
    fn every_line_belongs_to_its_family_and_families_are_declared_once() {
        let text = render(&metrics(), 20_000);
        let f = families(&text);
        for (name, kind) in &f {
            assert!(
                !name.ends_with("_total"),
                "{name}: OpenMetrics declares the stem"
            );
            assert!(["counter", "gauge", "histogram", "info"].contains(&kind.as_str()));
        }
    }

    /// Dashboards and tests rely on these series names: removing or renaming one must fail
    /// here. The latencies are histograms (their `_sum` and `_count` are the old summaries').
    #[test]
    fn every_exported_name_is_still_there() {
        let text = render(&metrics(), 20_000);
        for name in [
            "alsentry_polls_total{",
            "alsentry_poll_rtt_seconds{",
            "alsentry_poll_duration_seconds_sum{",
            "alsentry_poll_duration_seconds_count{",
            "alsentry_poll_duration_seconds_bucket{",
            "alsentry_samples_total{",
            "alsentry_decode_errors_total{",
            "alsentry_device_up{",
            "alsentry_samples_per_second ",
            "alsentry_modbus_rtt_seconds_bucket{",
            "alsentry_batches_dropped_total ",
            "alsentry_link_restarts_total ",
            "alsentry_engine_turns_total ",
            "alsentry_alarm_transitions_total ",
            "alsentry_alarm_latency_seconds_bucket{",
            "alsentry_alarm_floods_total ",
            "alsentry_alarm_chattering_total ",
            "alsentry_sink_connected{",
            "alsentry_sink_published_total{",
            "alsentry_sink_acked_total{",
            "alsentry_sink_bytes_total{",
            "alsentry_outbox_dropped_total{",
            "alsentry_outbox_write_errors_total{",
            "alsentry_outbox_dead_lettered_total{",
            "alsentry_sink_commands_refused_total{",
            "alsentry_outbox_depth{",
            "alsentry_outbox_bytes{",
            "alsentry_puback_latency_seconds{",
            "alsentry_puback_duration_seconds_sum{",
            "alsentry_puback_duration_seconds_count{",
            "alsentry_puback_duration_seconds_bucket{",
            "alsentry_uptime_seconds ",
            "alsentry_build_info{",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing");
        }
        assert!(text.contains("# TYPE alsentry_alarms gauge\n"));
        for sample in [
            "alsentry_polls_total{device=\"kiln\",result=\"missed\"} 0\n",
            "alsentry_poll_duration_seconds_sum{device=\"kiln\"} 0.0\n",
            "alsentry_puback_duration_seconds_count{sink=\"plant\"} 0\n",
            "alsentry_outbox_depth{sink=\"plant\"} 0\n",
        ] {
            assert!(text.contains(sample), "{sample} missing");
        }
    }

    #[test]
    fn rates_and_uptime_use_the_given_now() {
        let text = render(&metrics(), 20_000);
        assert!(text.contains("\nalsentry_uptime_seconds 10.0\n"), "{text}");
        assert!(
            text.contains("\nalsentry_samples_per_second 40.0\n"),
            "{text}"
        );
        assert!(text.contains("alsentry_poll_rtt_seconds{device=\"kiln\"} 0.0\n"));
        assert!(text.contains("alsentry_poll_duration_seconds_count{device=\"kiln\"} 0\n"));
        // Before start (clock skew) the uptime is 0, not negative, and the rate is 0.
        let text = render(&metrics(), 5_000);
        assert!(text.contains("\nalsentry_uptime_seconds 0.0\n"));
        assert!(text.contains("\nalsentry_samples_per_second 0.0\n"));
    }

    /// Issue 21: latencies as histograms, so that p99 targets can be watched.
    #[test]
    fn latencies_land_in_histogram_buckets() {
        let m = metrics();
        for ms in [3, 3, 40] {
            observe(&m.devices[0].poll_duration, Duration::from_millis(ms));
            observe(&m.alarm_latency, Duration::from_millis(ms));
            observe(&m.sinks[0].puback, Duration::from_millis(ms));
        }
        // Every device's handle feeds the one agent-wide round-trip histogram.
        observe(&m.devices[0].modbus_rtt, Duration::from_micros(700));
        observe(&m.devices[1].modbus_rtt, Duration::from_millis(3));
        let text = render(&m, 20_000);
        for line in [
            "alsentry_poll_duration_seconds_count{device=\"pot \\\"7\\\"\\\\a\\nb\"} 3\n",
            "alsentry_poll_duration_seconds_bucket{le=\"0.005\",device=\"pot \\\"7\\\"\\\\a\\nb\"} 2\n",
            "alsentry_poll_duration_seconds_bucket{le=\"0.1\",device=\"pot \\\"7\\\"\\\\a\\nb\"} 3\n",
            "alsentry_alarm_latency_seconds_bucket{le=\"0.004\"} 2\n",
            "alsentry_alarm_latency_seconds_bucket{le=\"0.064\"} 3\n",
            "alsentry_alarm_latency_seconds_count 3\n",
            "alsentry_puback_duration_seconds_bucket{le=\"0.004\",sink=\"plant\"} 2\n",
            "alsentry_modbus_rtt_seconds_bucket{le=\"0.001\"} 1\n",
            "alsentry_modbus_rtt_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn process_series_come_from_proc() {
        let p = process::read().expect("/proc is readable on Linux");
        assert!(p.resident_bytes > 1_000_000.0, "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.threads >= 1.0 && p.cpu_seconds >= 0.0, "{p:?}");
        let now_s = crate::clock::wall_ms() as f64 / 1000.0;
        assert!(
            (p.start_time_seconds - now_s).abs() < 7.0 * 86_400.0,
            "started {} vs now {now_s}",
            p.start_time_seconds
        );
        assert!(p.open_fds.unwrap_or(0.0) >= 3.0, "{p:?}");
    }
}
