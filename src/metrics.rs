//! The agent's metrics and beside each its exported name, type and help: adding a metric is
//! a field here plus a row in its family table (and the bump in the event of `telemetry.rs`
//! that moves it). Counters and gauges are plain atomics (each value has one writer, the
//! event that bumps it); latencies are prometheus-client histograms. `render` encodes them
//! all, with the standard `process_*` series, through prometheus-client's OpenMetrics text
//! encoder; the HTTP endpoint only serves that text with [`CONTENT_TYPE`].
//!
//! These values are for watching the agent. No task decides anything from them: who needs a
//! piece of state (devices up, for the status and `/readyz`) gets it from the task that owns it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::model::{Priority, Ts};

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

/// Observes a duration in seconds.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
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
    pub alarm_transitions: AtomicU64,
    pub started_ms: AtomicI64,
    /// Every successful Modbus read's round trip, all devices together.
    pub modbus_rtt: Histogram,
    /// From the sample that changed an alarm's state to the alarm handed to the sinks.
    pub alarm_latency: Histogram,
    /// Length of the last `/metrics` text: the next one is written into a buffer of about that
    /// size at once, not one doubled 7 times (at 400 devices ~400 KB; the copies the doubling
    /// left behind stayed in the process's memory).
    last_render_len: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            devices: Vec::new(),
            sinks: Vec::new(),
            batches_dropped: AtomicU64::new(0),
            link_restarts: AtomicU64::new(0),
            alarm_transitions: AtomicU64::new(0),
            started_ms: AtomicI64::new(0),
            modbus_rtt: rtt_buckets(),
            alarm_latency: latency_buckets(),
            last_render_len: AtomicUsize::new(0),
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
    /// ([`CONTENT_TYPE`]), encoded by prometheus-client. `now` is passed in; the process
    /// series are read from /proc at the call.
    ///
    /// `alsentry_samples_per_second` is the average since start (all samples / uptime); for
    /// the current rate use `rate(alsentry_samples_total[1m])`.
    pub fn render(&self, alarms: &AlarmCounts, now: Ts) -> String {
        let last = self.last_render_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity((last + last / 16).max(8192));
        // prometheus-client's collectors are owned: each scrape registers a snapshot (atomics
        // copied, histograms shared) and the process series.
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.scrape(alarms, now)));
        registry.register_collector(Box::new(crate::metrics::process::ProcessCollector));
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        self.last_render_len.store(out.len(), Ordering::Relaxed);
        out
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

/// One family as scraped: owned, so that prometheus-client can encode it.
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

/// Every family of one scrape, in export order.
#[derive(Debug)]
struct Scrape {
    families: Vec<Scraped>,
}

impl Metrics {
    fn scrape(&self, alarms: &AlarmCounts, now: Ts) -> Scrape {
        let mut families = Vec::new();
        let uptime_s = (now - self.started_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0;
        for f in DEVICE_FAMILIES {
            families.push(per_item(
                f,
                "device",
                self.devices.iter().map(|d| (&d.name, d)),
            ));
        }
        let samples_all = self
            .devices
            .iter()
            .fold(0u64, |n, d| n.saturating_add(load(&d.samples)));
        let sps = if uptime_s > 0.0 {
            samples_all as f64 / uptime_s
        } else {
            0.0
        };
        let single = |(name, help): (&'static str, &'static str), kind, v| Scraped {
            name,
            help,
            kind,
            series: vec![(Vec::new(), v)],
        };
        families.push(single(SAMPLES_PER_SECOND, Kind::Gauge, Value::Float(sps)));
        families.push(single(
            MODBUS_RTT,
            Kind::Histogram,
            Value::Histogram(self.modbus_rtt.clone()),
        ));
        families.push(single(
            BATCHES_DROPPED,
            Kind::Counter,
            Value::Int(load(&self.batches_dropped)),
        ));
        families.push(single(
            LINK_RESTARTS,
            Kind::Counter,
            Value::Int(load(&self.link_restarts)),
        ));
        families.push(single(
            ALARM_TRANSITIONS,
            Kind::Counter,
            Value::Int(load(&self.alarm_transitions)),
        ));
        families.push(single(
            ALARM_LATENCY,
            Kind::Histogram,
            Value::Histogram(self.alarm_latency.clone()),
        ));
        families.push(Scraped {
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
        });
        families.push(single(
            ALARM_FLOODS,
            Kind::Counter,
            Value::Int(alarms.floods_total),
        ));
        families.push(single(
            ALARM_CHATTERING,
            Kind::Counter,
            Value::Int(alarms.chattering_total),
        ));
        for f in SINK_FAMILIES {
            families.push(per_item(f, "sink", self.sinks.iter().map(|s| (&s.name, s))));
        }
        families.push(single(UPTIME, Kind::Gauge, Value::Float(uptime_s)));
        families.push(Scraped {
            name: BUILD_INFO.0,
            help: BUILD_INFO.1,
            kind: Kind::Info,
            series: vec![(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                Value::Info,
            )],
        });
        Scrape { families }
    }
}

fn per_item<'a, T: 'a>(
    f: &Family<T>,
    label: &'static str,
    items: impl Iterator<Item = (&'a String, &'a T)>,
) -> Scraped {
    let mut series = Vec::new();
    for (name, item) in items {
        let labels = vec![(label, name.clone())];
        match &f.read {
            Read::Int(get) => series.push((labels, Value::Int(get(item)))),
            Read::Micros(get) => {
                series.push((labels, Value::Float(get(item) as f64 / 1e6)));
            }
            Read::ByLabel(extra, values) => {
                for (value, get) in *values {
                    let mut l = labels.clone();
                    l.push((extra, value.to_string()));
                    series.push((l, Value::Int(get(item))));
                }
            }
            Read::Histogram(get) => series.push((labels, Value::Histogram(get(item).clone()))),
        }
    }
    Scraped {
        name: f.name,
        help: f.help,
        kind: f.kind,
        series,
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

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let ty = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
                Kind::Info => MetricType::Info,
            };
            let mut family =
                encoder.encode_descriptor(declared(f.name, f.kind), f.help, None, ty)?;
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
                match (value, f.kind) {
                    (Value::Int(n), Kind::Counter) => ConstCounter::new(*n).encode(m)?,
                    (Value::Int(n), _) => {
                        ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX)).encode(m)?
                    }
                    (Value::Float(x), _) => ConstGauge::new(*x).encode(m)?,
                    (Value::Histogram(h), _) => h.encode(m)?,
                    (Value::Info, _) => {}
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

    fn render(m: &Metrics, now: Ts) -> String {
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
