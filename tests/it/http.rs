//! The operations endpoint over a real socket, with a raw TCP client.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use alsentry::clock::{Clock, ManualClock};
use alsentry::core::model::Priority;
use alsentry::io::http::{serve_with_limits, AlarmSnapshot, AlarmView, HttpLimits, HttpState};
use alsentry::metrics::{Metrics, CHUNK_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ODD_DEVICE: &str = "pot \"7\"\\west\nline";
const START: i64 = 1_764_345_953_000;

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: alsentry::io::health::HealthTx,
    alarms: watch::Sender<AlarmSnapshot>,
    clock: Arc<ManualClock>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(limits: HttpLimits) -> Server {
        Server::with_devices([ODD_DEVICE.to_string(), "kiln-1".to_string()], limits).await
    }

    async fn with_devices(devices: impl IntoIterator<Item = String>, limits: HttpLimits) -> Server {
        let metrics = Metrics::new(devices, ["plant".to_string(), "cloud".to_string()]);
        metrics.started_ms.store(START, Ordering::Relaxed);
        let clock = ManualClock::new(START + 20_000);
        let (alarms, rx) = watch::channel(AlarmSnapshot::default());
        let (health, devices) =
            alsentry::io::health::channel(metrics.devices.iter().map(|d| d.name.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let state = HttpState {
            metrics: metrics.clone(),
            alarms: rx,
            devices,
            clock: clock.clone() as Arc<dyn Clock>,
            config_loaded: true,
            web: None,
            tls: None,
            pulse: alsentry::io::health::Pulse::new(Default::default(), clock.mono()),
        };
        let task = tokio::spawn(serve_with_limits(listener, state, limits, cancel.clone()));
        Server {
            addr,
            metrics,
            health,
            alarms,
            clock,
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server stops on cancel")
            .expect("the server task does not panic");
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Reads the whole response (the server closes after each one) and splits it.
async fn read_reply(mut s: TcpStream) -> Reply {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes")
        .expect("read");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("header line");
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect::<BTreeMap<_, _>>();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn send(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_reply(s).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let r = send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        r.headers.get("connection").map(String::as_str),
        Some("close")
    );
    assert_eq!(
        r.headers.get("content-length").map(String::as_str),
        Some(r.body.len().to_string().as_str())
    );
    r
}

/// One parsed sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the OpenMetrics text format, as much as this endpoint uses: every line
/// is a HELP, a TYPE or a sample, and the last is `# EOF`; HELP and TYPE come once per family,
/// before its samples; the samples of a family are contiguous; a counter family is declared
/// without `_total` and its samples carry it; histograms have `_bucket`, `_sum`, `_count`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(
        text.ends_with("\n# EOF\n"),
        "the exposition ends with # EOF"
    );
    let text = text.strip_suffix("# EOF\n").unwrap();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(!help.is_empty());
            assert!(!helped.contains(&name.to_string()), "HELP twice for {name}");
            assert!(!types.contains_key(name), "HELP after TYPE for {name}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                "{line}"
            );
            assert!(
                helped.contains(&name.to_string()),
                "TYPE without HELP: {name}"
            );
            assert!(types.insert(name.to_string(), kind.to_string()).is_none());
            assert!(!name.ends_with("_total"), "{name} is declared by its stem");
            current = Some(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let s = parse_sample(line);
        let family = current.as_deref().expect("sample before any TYPE");
        let suffixes: &[&str] = match types[family].as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        let belongs = suffixes.iter().any(|x| s.name == format!("{family}{x}"));
        assert!(
            belongs,
            "{} is not in family {family} (samples must be grouped)",
            s.name
        );
        samples.push(s);
    }
    samples
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Sample {
    let mut chars = line.char_indices().peekable();
    let mut name = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if !is_name_char(c, name.is_empty()) {
            break;
        }
        name.push(c);
        chars.next();
    }
    assert!(!name.is_empty(), "no metric name: {line}");
    let mut labels = BTreeMap::new();
    if chars.peek().map(|&(_, c)| c) == Some('{') {
        chars.next();
        loop {
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if !is_name_char(c, key.is_empty()) || c == ':' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            assert!(!key.is_empty(), "empty label name: {line}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('='), "{line}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line}"),
                    },
                    Some('\n') | None => panic!("unterminated label value: {line}"),
                    Some(c) => value.push(c),
                }
            }
            assert!(
                labels.insert(key, value).is_none(),
                "duplicate label: {line}"
            );
            match chars.next().map(|(_, c)| c) {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("expected , or }} but got {other:?}: {line}"),
            }
        }
    }
    assert_eq!(chars.next().map(|(_, c)| c), Some(' '), "{line}");
    let rest: String = chars.map(|(_, c)| c).collect();
    assert!(!rest.contains(' '), "timestamps are not emitted: {line}");
    let value = match rest.as_str() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("value {v:?} in {line}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?} in {samples:#?}");
    found[0].value
}

fn alarm(device: &str, rule: &str, priority: Priority, state: &'static str) -> AlarmView {
    AlarmView {
        device: device.into(),
        rule: rule.into(),
        tag: "voltage".into(),
        priority,
        state,
        since: START + 5_000,
        value: Some(12.5),
        limit: Some(8.0),
        unit: "V".into(),
        quality: "good".into(),
        message: "anode effect on pot-7: 12.5 V".into(),
        acked_by: None,
        shelved_until: None,
    }
}

fn quick_limits() -> HttpLimits {
    HttpLimits {
        read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    }
}

/// `/metrics` at 400 devices (~400 KB of text, encoded in parts of a few devices and sent in
/// chunks of about `CHUNK_BYTES`): one exposition with its length in the head, every family
/// declared once and every device once in each.
#[tokio::test]
async fn metrics_of_hundreds_of_devices_come_whole_with_their_length() {
    let names: Vec<String> = (1..=400).map(|i| format!("pot-{i:03}")).collect();
    let srv = Server::with_devices(names.clone(), HttpLimits::default()).await;
    srv.metrics.devices[399]
        .polls_ok
        .store(7, Ordering::Relaxed);
    let r = get(srv.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 20 * CHUNK_BYTES, "{} bytes", r.body.len());
    assert!(
        !r.headers.contains_key("transfer-encoding"),
        "{:?}",
        r.headers
    );
    let samples = parse_exposition(&r.body);
    for name in &names {
        let ok = value(
            &samples,
            "alsentry_polls_total",
            &[("device", name), ("result", "ok")],
        );
        assert_eq!(ok, if name == "pot-400" { 7.0 } else { 0.0 }, "{name}");
        for family in ["alsentry_device_up", "alsentry_poll_duration_seconds_count"] {
            let n = samples
                .iter()
                .filter(|s| s.name == family && s.labels.get("device") == Some(name))
                .count();
            assert_eq!(n, 1, "{family} of {name}");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_carry_the_counters() {
    let srv = Server::start(HttpLimits::default()).await;
    let m = &srv.metrics;
    m.devices[0].polls_ok.store(40, Ordering::Relaxed);
    m.devices[0].polls_failed.store(2, Ordering::Relaxed);
    m.devices[0].polls_missed.store(1, Ordering::Relaxed);
    m.devices[0].rtt_us_last.store(1_500, Ordering::Relaxed);
    for _ in 0..42 {
        alsentry::metrics::observe(&m.devices[0].poll_duration, Duration::from_millis(2));
    }
    m.devices[0].samples.store(300, Ordering::Relaxed);
    m.devices[1].samples.store(100, Ordering::Relaxed);
    m.devices[1].decode_errors.store(3, Ordering::Relaxed);
    m.devices[1].up.store(true, Ordering::Relaxed);
    m.sinks[0].connected.store(true, Ordering::Relaxed);
    m.sinks[0].published.store(10, Ordering::Relaxed);
    m.sinks[0].acked.store(9, Ordering::Relaxed);
    m.sinks[0].bytes.store(4_096, Ordering::Relaxed);
    m.sinks[1].outbox_depth.store(17, Ordering::Relaxed);
    m.sinks[1].outbox_bytes.store(8_192, Ordering::Relaxed);
    m.sinks[1].dropped.store(5, Ordering::Relaxed);
    m.sinks[0]
        .puback_latency_us_last
        .store(25_000, Ordering::Relaxed);
    for _ in 0..9 {
        alsentry::metrics::observe(&m.sinks[0].puback, Duration::from_millis(10));
    }
    m.batches_dropped.store(6, Ordering::Relaxed);
    m.alarm_transitions.store(11, Ordering::Relaxed);
    srv.alarms.send_replace(AlarmSnapshot {
        alarms: vec![
            alarm(
                "pot-7",
                "anode_effect",
                Priority::Critical,
                "active_unacked",
            ),
            alarm(
                "pot-8",
                "anode_effect",
                Priority::Critical,
                "active_unacked",
            ),
            alarm("kiln-1", "overtemp", Priority::Medium, "latched"),
        ],
        floods_total: 2,
        chattering_total: 7,
        hidden: vec![],
    });

    let r = get(srv.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let s = parse_exposition(&r.body);
    let d0 = ODD_DEVICE;
    assert_eq!(
        value(
            &s,
            "alsentry_polls_total",
            &[("device", d0), ("result", "ok")]
        ),
        40.0
    );
    assert_eq!(
        value(
            &s,
            "alsentry_polls_total",
            &[("device", d0), ("result", "failed")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "alsentry_polls_total",
            &[("device", d0), ("result", "missed")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "alsentry_poll_rtt_seconds", &[("device", d0)]),
        0.0015
    );
    assert!(
        (value(&s, "alsentry_poll_duration_seconds_sum", &[("device", d0)]) - 0.084).abs() < 1e-9
    );
    assert_eq!(
        value(
            &s,
            "alsentry_poll_duration_seconds_count",
            &[("device", d0)]
        ),
        42.0
    );
    assert_eq!(
        value(&s, "alsentry_samples_total", &[("device", "kiln-1")]),
        100.0
    );
    assert_eq!(
        value(&s, "alsentry_decode_errors_total", &[("device", "kiln-1")]),
        3.0
    );
    assert_eq!(
        value(&s, "alsentry_device_up", &[("device", "kiln-1")]),
        1.0
    );
    assert_eq!(value(&s, "alsentry_device_up", &[("device", d0)]), 0.0);
    // 400 samples over the 20 s since start.
    assert_eq!(value(&s, "alsentry_samples_per_second", &[]), 20.0);
    assert_eq!(value(&s, "alsentry_batches_dropped_total", &[]), 6.0);
    assert_eq!(value(&s, "alsentry_alarm_transitions_total", &[]), 11.0);
    assert_eq!(
        value(
            &s,
            "alsentry_alarms",
            &[("state", "active_unacked"), ("priority", "critical")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "alsentry_alarms",
            &[("state", "latched"), ("priority", "medium")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "alsentry_alarms",
            &[("state", "active_acked"), ("priority", "high")]
        ),
        0.0
    );
    assert_eq!(value(&s, "alsentry_alarm_floods_total", &[]), 2.0);
    assert_eq!(value(&s, "alsentry_alarm_chattering_total", &[]), 7.0);
    assert_eq!(
        value(&s, "alsentry_sink_connected", &[("sink", "plant")]),
        1.0
    );
    assert_eq!(
        value(&s, "alsentry_sink_connected", &[("sink", "cloud")]),
        0.0
    );
    assert_eq!(
        value(&s, "alsentry_sink_published_total", &[("sink", "plant")]),
        10.0
    );
    assert_eq!(
        value(&s, "alsentry_sink_acked_total", &[("sink", "plant")]),
        9.0
    );
    assert_eq!(
        value(&s, "alsentry_sink_bytes_total", &[("sink", "plant")]),
        4096.0
    );
    assert_eq!(
        value(&s, "alsentry_outbox_depth", &[("sink", "cloud")]),
        17.0
    );
    assert_eq!(
        value(&s, "alsentry_outbox_bytes", &[("sink", "cloud")]),
        8192.0
    );
    assert_eq!(
        value(&s, "alsentry_outbox_dropped_total", &[("sink", "cloud")]),
        5.0
    );
    assert_eq!(
        value(&s, "alsentry_puback_latency_seconds", &[("sink", "plant")]),
        0.025
    );
    assert!(
        (value(
            &s,
            "alsentry_puback_duration_seconds_sum",
            &[("sink", "plant")]
        ) - 0.09)
            .abs()
            < 1e-9
    );
    assert_eq!(
        value(
            &s,
            "alsentry_puback_duration_seconds_bucket",
            &[("sink", "plant"), ("le", "0.016")]
        ),
        9.0
    );
    assert_eq!(
        value(
            &s,
            "alsentry_puback_duration_seconds_count",
            &[("sink", "plant")]
        ),
        9.0
    );
    assert_eq!(value(&s, "alsentry_uptime_seconds", &[]), 20.0);
    assert_eq!(
        value(
            &s,
            "alsentry_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The scrape reads live values: move the clock and a counter, scrape again.
    srv.clock.advance(20_000);
    m.devices[1].samples.store(500, Ordering::Relaxed);
    let s = parse_exposition(&get(srv.addr, "/metrics").await.body);
    assert_eq!(value(&s, "alsentry_uptime_seconds", &[]), 40.0);
    assert_eq!(value(&s, "alsentry_samples_per_second", &[]), 20.0);
    assert_eq!(
        value(&s, "alsentry_samples_total", &[("device", "kiln-1")]),
        500.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn healthz_alarms_and_routing() {
    let srv = Server::start(HttpLimits::default()).await;
    let r = get(srv.addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    let r = get(srv.addr, "/alarms").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
        serde_json::json!([])
    );

    let mut shelved = alarm("pot-9", "low_voltage", Priority::Low, "active_acked");
    shelved.acked_by = Some("li.wei".into());
    shelved.shelved_until = Some(START + 3_600_000);
    shelved.value = Some(f64::NAN);
    srv.alarms.send_replace(AlarmSnapshot {
        alarms: vec![
            alarm(
                "pot-7",
                "anode_effect",
                Priority::Critical,
                "active_unacked",
            ),
            shelved,
        ],
        ..AlarmSnapshot::default()
    });
    let r = get(srv.addr, "/alarms?pretty").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let a = &list[0];
    for k in [
        "device",
        "rule",
        "tag",
        "priority",
        "state",
        "since",
        "value",
        "limit",
        "unit",
        "message",
        "acked_by",
        "shelved_until",
    ] {
        assert!(a.get(k).is_some(), "missing {k}: {a}");
    }
    assert_eq!(a["device"], "pot-7");
    assert_eq!(a["rule"], "anode_effect");
    assert_eq!(a["priority"], "critical");
    assert_eq!(a["state"], "active_unacked");
    assert_eq!(a["since"], "2025-11-28T16:05:58.000Z");
    assert_eq!(a["value"], 12.5);
    assert_eq!(a["limit"], 8.0);
    assert_eq!(a["unit"], "V");
    assert_eq!(a["acked_by"], serde_json::Value::Null);
    let b = &list[1];
    assert_eq!(b["acked_by"], "li.wei");
    assert_eq!(b["shelved_until"], "2025-11-28T17:05:53.000Z");
    assert_eq!(b["value"], serde_json::Value::Null);

    let r = send(
        srv.addr,
        b"GET http://localhost:9184/healthz HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = get(srv.addr, "/nope").await;
    assert_eq!(r.status, 404);
    let r = send(
        srv.addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");

    // HEAD: same head as GET, no body.
    let r = send(srv.addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], "3");
    assert_eq!(r.body, "");
    srv.stop().await;
}

#[tokio::test]
async fn readyz_needs_a_connected_sink_and_an_answering_device() {
    let srv = Server::start(HttpLimits::default()).await;
    let r = get(srv.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(
        v["failing"],
        serde_json::json!(["no sink connected", "no device answering"])
    );

    srv.metrics.sinks[1]
        .connected
        .store(true, Ordering::Relaxed);
    let r = get(srv.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["failing"], serde_json::json!(["no device answering"]));

    srv.health.set(0, true);
    let r = get(srv.addr, "/readyz").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["sinks_connected"], 1);
    assert_eq!(v["devices_up"], 1);

    srv.metrics.sinks[1]
        .connected
        .store(false, Ordering::Relaxed);
    assert_eq!(get(srv.addr, "/readyz").await.status, 503);
    srv.stop().await;
}

#[tokio::test]
async fn readyz_fails_without_a_loaded_config() {
    let metrics = Metrics::new(["d".to_string()], ["s".to_string()]);
    metrics.sinks[0].connected.store(true, Ordering::Relaxed);
    let (health, devices) = alsentry::io::health::channel(["d".to_string()]);
    health.set(0, true);
    let (_tx, rx) = watch::channel(AlarmSnapshot::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let state = HttpState {
        metrics,
        alarms: rx,
        devices,
        clock: ManualClock::new(0) as Arc<dyn Clock>,
        config_loaded: false,
        web: None,
        tls: None,
        pulse: alsentry::io::health::Pulse::new(Default::default(), Default::default()),
    };
    let task = tokio::spawn(alsentry::io::http::serve(listener, state, cancel.clone()));
    let r = get(addr, "/readyz").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["failing"], serde_json::json!(["config not loaded"]));
    cancel.cancel();
    task.await.unwrap();
}

async fn assert_still_serving(addr: SocketAddr) {
    assert_eq!(get(addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn hostile_requests_get_errors_and_the_server_keeps_serving() {
    let srv = Server::start(quick_limits()).await;
    let garbage: [&[u8]; 7] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"hello\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nthis is not a header\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n folded: x\r\n\r\n",
    ];
    for g in garbage {
        let r = send(srv.addr, g).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(g));
        assert_still_serving(srv.addr).await;
    }
    assert_eq!(send(srv.addr, b"GET / HTTP/2.0\r\n\r\n").await.status, 505);

    // A head over 8 KiB, without ever ending it.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 16 * 1024));
    let r = send(srv.addr, &huge).await;
    assert_eq!(r.status, 431);
    // Many small headers that together exceed the cap.
    let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..1_000 {
        many.extend(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(send(srv.addr, &many).await.status, 431);
    assert_still_serving(srv.addr).await;

    // The peer closes half-way through its head: no answer needed, no harm done.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /metr").await.unwrap();
    s.shutdown().await.unwrap();
    let r = read_reply(s).await;
    assert_eq!(r.status, 400);
    // A port probe: connect and close.
    drop(TcpStream::connect(srv.addr).await.unwrap());
    assert_still_serving(srv.addr).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_at_the_read_timeout() {
    let srv = Server::start(quick_limits()).await;
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    // Keep trickling header bytes for 5 s; the deadline covers the whole head, not each read.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut raw))
        .await
        .expect("the server closes the slow connection")
        .expect("the answer arrives before the connection is torn down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off only after {:?}",
        started.elapsed()
    );
    assert_eq!(parse_reply(&raw).status, 408);
    assert_still_serving(srv.addr).await;
    trickle.abort();
    srv.stop().await;
}

#[tokio::test]
async fn a_silent_client_gets_408() {
    let srv = Server::start(quick_limits()).await;
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let r = read_reply(s).await;
    assert_eq!(r.status, 408);
    srv.stop().await;
}

// Issue 15: 32 idle connections made /healthz answer 503 for 5 s. Past the cap, connections
// are still served, with a short time for their request; past twice the cap they are closed.
#[tokio::test]
async fn idle_connections_over_the_cap_never_starve_healthz() {
    let srv = Server::start(HttpLimits {
        max_connections: 2,
        read_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    })
    .await;
    // Two idle connections hold both slots (accepted in order, before the third).
    let _idle1 = TcpStream::connect(srv.addr).await.unwrap();
    let _idle2 = TcpStream::connect(srv.addr).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
    // An idle one over the cap is cut after the short timeout (408), not held for 30 s.
    let third = TcpStream::connect(srv.addr).await.unwrap();
    let r = read_reply(third).await;
    assert_eq!(r.status, 408);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    srv.stop().await;
}

#[tokio::test]
async fn cancel_stops_the_server_with_a_connection_still_open() {
    let srv = Server::start(HttpLimits {
        read_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    })
    .await;
    let idle = TcpStream::connect(srv.addr).await.unwrap();
    assert_still_serving(srv.addr).await;
    let addr = srv.addr;
    // `stop` fails the test unless the server returns within 5 s (the read timeout is 60 s).
    srv.stop().await;
    drop(idle);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
