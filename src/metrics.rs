//! The agent's counters and gauges, and beside each its exported name, type and help: adding a
//! metric is a field here plus a row in its family table (and the bump in the event of
//! `telemetry.rs` that moves it). Plain atomics: each value has one writer (the event that
//! bumps it), readers only take snapshots. `render` writes them all in the Prometheus text
//! format 0.0.4; the HTTP endpoint only serves that text.
//!
//! These values are for watching the agent. No task decides anything from them: who needs a
//! piece of state (devices up, for the status and `/readyz`) gets it from the task that owns it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::core::model::{Priority, Ts};

#[derive(Debug, Default)]
pub struct DeviceMetrics {
    pub name: String,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// Polls that were due but skipped because the link fell behind.
    pub polls_missed: AtomicU64,
    pub rtt_us_sum: AtomicU64,
    pub rtt_us_last: AtomicU64,
    pub samples: AtomicU64,
    pub decode_errors: AtomicU64,
    /// The `alsentry_device_up` gauge (set by the device up/down events).
    pub up: AtomicBool,
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
        kind: Kind::Summary,
        help: "Time spent in polls (ok and failed); count is the number of those polls.",
        read: Read::Summary {
            sum_us: |d| load(&d.rtt_us_sum),
            count: |d| load(&d.polls_ok).saturating_add(load(&d.polls_failed)),
        },
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

#[derive(Debug, Default)]
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
    pub puback_latency_us_sum: AtomicU64,
    pub puback_latency_us_last: AtomicU64,
    /// Commands received through this sink and answered or dropped by the sink itself:
    /// delivered with RETAIN set and oversized (dropped), engine queue full (answered busy).
    pub commands_retained_oversized: AtomicU64,
    pub commands_busy: AtomicU64,
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
        kind: Kind::Summary,
        help: "Publish-to-PUBACK latency over all acknowledged messages.",
        read: Read::Summary {
            sum_us: |s| load(&s.puback_latency_us_sum),
            count: |s| load(&s.acked),
        },
    },
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub devices: Vec<DeviceMetrics>,
    pub sinks: Vec<SinkMetrics>,
    /// Sample batches dropped because the engine fell behind.
    pub batches_dropped: AtomicU64,
    pub alarm_transitions: AtomicU64,
    pub started_ms: AtomicI64,
}

// Agent-wide families (one sample each, or computed): written by `render` in this order.
const SAMPLES_PER_SECOND: (&str, &str) = (
    "alsentry_samples_per_second",
    "Average samples per second since start (use rate(alsentry_samples_total[1m]) for the current rate).",
);
const BATCHES_DROPPED: (&str, &str) = (
    "alsentry_batches_dropped_total",
    "Sample batches dropped because the engine fell behind.",
);
const ALARM_TRANSITIONS: (&str, &str) = (
    "alsentry_alarm_transitions_total",
    "Alarm state transitions published.",
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
        Arc::new(Metrics {
            devices: devices
                .into_iter()
                .map(|name| DeviceMetrics {
                    name,
                    ..Default::default()
                })
                .collect(),
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

    /// Every metric in Prometheus text format 0.0.4. Pure: `now` is passed in.
    ///
    /// `alsentry_samples_per_second` is the average since start (all samples / uptime); for
    /// the current rate use `rate(alsentry_samples_total[1m])`.
    pub fn render(&self, alarms: &AlarmCounts, now: Ts) -> String {
        let mut e = Exposition {
            out: String::with_capacity(4096),
        };
        let uptime_s = (now - self.started_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0;
        for f in DEVICE_FAMILIES {
            e.family(
                f,
                self.devices.iter().map(|d| (d.name.as_str(), d)),
                "device",
            );
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
        e.single(SAMPLES_PER_SECOND, Kind::Gauge, &fmt_f64(sps));
        e.single(
            BATCHES_DROPPED,
            Kind::Counter,
            &load(&self.batches_dropped).to_string(),
        );
        e.single(
            ALARM_TRANSITIONS,
            Kind::Counter,
            &load(&self.alarm_transitions).to_string(),
        );
        e.header(ALARMS.0, Kind::Gauge, ALARMS.1);
        for ((state, priority), n) in &alarms.by_state_priority {
            e.sample(
                ALARMS.0,
                &[("state", state), ("priority", priority.as_str())],
                &n.to_string(),
            );
        }
        e.single(
            ALARM_FLOODS,
            Kind::Counter,
            &alarms.floods_total.to_string(),
        );
        e.single(
            ALARM_CHATTERING,
            Kind::Counter,
            &alarms.chattering_total.to_string(),
        );
        for f in SINK_FAMILIES {
            e.family(f, self.sinks.iter().map(|s| (s.name.as_str(), s)), "sink");
        }
        e.single(UPTIME, Kind::Gauge, &fmt_f64(uptime_s));
        e.header(BUILD_INFO.0, Kind::Gauge, BUILD_INFO.1);
        e.sample(BUILD_INFO.0, &[("version", env!("CARGO_PKG_VERSION"))], "1");
        e.out
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
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
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
    /// `_sum` (microseconds, exported as seconds) and `_count`.
    Summary {
        sum_us: fn(&T) -> u64,
        count: fn(&T) -> u64,
    },
}

/// Escapes a label value per the exposition format: backslash, double quote and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text per the exposition format: backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Formats a float the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        v.to_string()
    }
}

fn seconds(us: u64) -> String {
    fmt_f64(us as f64 / 1e6)
}

/// Accumulates one exposition; each family is written whole (HELP, TYPE, then its samples).
struct Exposition {
    out: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }

    /// A family without labels and with one sample.
    fn single(&mut self, (name, help): (&str, &str), kind: Kind, value: &str) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    fn family<'a, T: 'a>(
        &mut self,
        f: &Family<T>,
        items: impl Iterator<Item = (&'a str, &'a T)>,
        label: &str,
    ) {
        self.header(f.name, f.kind, f.help);
        for (name, item) in items {
            let labels = [(label, name)];
            match &f.read {
                Read::Int(get) => self.sample(f.name, &labels, &get(item).to_string()),
                Read::Micros(get) => self.sample(f.name, &labels, &seconds(get(item))),
                Read::ByLabel(extra, values) => {
                    for (value, get) in *values {
                        self.sample(
                            f.name,
                            &[(label, name), (extra, value)],
                            &get(item).to_string(),
                        );
                    }
                }
                Read::Summary { sum_us, count } => {
                    self.sample(&format!("{}_sum", f.name), &labels, &seconds(sum_us(item)));
                    self.sample(
                        &format!("{}_count", f.name),
                        &labels,
                        &count(item).to_string(),
                    );
                }
            }
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

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
        let text = render(&metrics(), 20_000);
        assert!(
            text.contains(r#"alsentry_polls_total{device="pot \"7\"\\a\nb",result="ok"} 40"#),
            "{text}"
        );
    }

    #[test]
    fn every_line_is_a_comment_or_a_sample_and_families_are_declared_once() {
        let text = render(&metrics(), 20_000);
        assert!(text.ends_with('\n'));
        let mut declared: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
            } else if line.starts_with("# HELP ") {
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = declared.last().expect("sample before any TYPE");
                assert!(
                    name == family
                        || name == format!("{family}_sum")
                        || name == format!("{family}_count"),
                    "{name} outside its family {family}"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        for name in &declared {
            let kind = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
                .unwrap();
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
        }
    }

    /// Dashboards and tests rely on these names: removing or renaming one must fail here.
    #[test]
    fn every_exported_name_is_still_there() {
        let text = render(&metrics(), 20_000);
        for name in [
            "alsentry_polls_total",
            "alsentry_poll_rtt_seconds",
            "alsentry_poll_duration_seconds",
            "alsentry_samples_total",
            "alsentry_decode_errors_total",
            "alsentry_device_up",
            "alsentry_samples_per_second",
            "alsentry_batches_dropped_total",
            "alsentry_alarm_transitions_total",
            "alsentry_alarms",
            "alsentry_alarm_floods_total",
            "alsentry_alarm_chattering_total",
            "alsentry_sink_connected",
            "alsentry_sink_published_total",
            "alsentry_sink_acked_total",
            "alsentry_sink_bytes_total",
            "alsentry_outbox_dropped_total",
            "alsentry_outbox_write_errors_total",
            "alsentry_sink_commands_refused_total",
            "alsentry_outbox_depth",
            "alsentry_outbox_bytes",
            "alsentry_puback_latency_seconds",
            "alsentry_puback_duration_seconds",
            "alsentry_uptime_seconds",
            "alsentry_build_info",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        for sample in [
            "alsentry_polls_total{device=\"kiln\",result=\"missed\"} 0",
            "alsentry_poll_duration_seconds_sum{device=\"kiln\"} 0",
            "alsentry_puback_duration_seconds_count{sink=\"plant\"} 0",
            "alsentry_outbox_depth{sink=\"plant\"} 0",
        ] {
            assert!(text.contains(sample), "{sample} missing");
        }
    }

    #[test]
    fn rates_and_uptime_use_the_given_now() {
        let text = render(&metrics(), 20_000);
        assert!(text.contains("\nalsentry_uptime_seconds 10\n"), "{text}");
        assert!(
            text.contains("\nalsentry_samples_per_second 40\n"),
            "{text}"
        );
        assert!(text.contains("alsentry_poll_rtt_seconds{device=\"kiln\"} 0\n"));
        assert!(text.contains("alsentry_poll_duration_seconds_count{device=\"kiln\"} 0\n"));
        // Before start (clock skew) the uptime is 0, not negative, and the rate is 0.
        let text = render(&metrics(), 5_000);
        assert!(text.contains("\nalsentry_uptime_seconds 0\n"));
        assert!(text.contains("\nalsentry_samples_per_second 0\n"));
    }

    #[test]
    fn floats_use_prometheus_spellings() {
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_f64(0.0015), "0.0015");
        assert_eq!(fmt_f64(1e21).parse::<f64>().unwrap(), 1e21);
    }
}
