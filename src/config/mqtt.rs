//! `[mqtt]` / `[[mqtt]]`: the brokers alsentry publishes to.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{Problems, Source, TableReader};
use crate::core::model::Priority;
use crate::core::outbound::Class;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

pub fn parse_broker_url(s: &str) -> Result<BrokerUrl, String> {
    const FORMS: &str = "accepted: \"mqtt://host:1883\", \"mqtts://host:8883\"";
    let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("tcp://") {
        (false, r)
    } else {
        return Err(format!("\"{s}\" is not a broker URL; {FORMS}"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port \"{p}\" in \"{s}\" is not 1 to 65535"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("\"{s}\" has no host; {FORMS}"));
    }
    Ok(BrokerUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    })
}

/// Where a password comes from; the value itself is never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(String),
    Env(String),
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "File({p})"),
            PasswordSource::Env(v) => write!(f, "Env({v})"),
        }
    }
}

/// MQTT protocol version spoken to one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

/// Files for `mqtts://`: the CA that signed the broker's certificate, and optionally a client
/// certificate and key for mutual TLS. All PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: String,
    /// (certificate chain, private key)
    pub client: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSink {
    pub name: String,
    pub url: BrokerUrl,
    pub topic_root: String,
    /// Empty means "alsentry-{agent.id}" (plus "-{name}" when there are several sinks).
    pub client_id: Option<String>,
    pub keep_alive_ms: i64,
    pub username: Option<String>,
    pub password: Option<PasswordSource>,
    /// Message classes this broker receives (`carry`); default: all.
    pub carry: Vec<Class>,
    /// Alarms less important than this are not carried (`min_priority`); default: low.
    pub min_priority: Priority,
    /// `[mqtt.outbox]`: limits and durability of this sink's outbox.
    pub outbox: OutboxOptions,
    /// Most backlog records sent per second after a reconnect (`replay_rate`).
    pub replay_rate: u32,
    /// Cap of the jittered exponential reconnect backoff (`reconnect_max`).
    pub reconnect_max_ms: i64,
    pub protocol: Protocol,
    /// MQTT 5 only: message expiry for `data` messages (`data_expiry`).
    pub data_expiry_ms: Option<i64>,
    /// QoS of live raw data (`data_qos`): 0 sends it around the outbox while connected, 1
    /// keeps every data message in the outbox until its PUBACK.
    pub data_qos: u8,
    pub tls: Option<TlsFiles>,
    /// What goes on the wire (`format`): our JSON topics, or a Sparkplug B 3.0 edge node.
    pub format: Format,
    /// Sparkplug only (`primary_host`): the host application whose STATE gates publishing.
    pub primary_host: Option<String>,
    /// How raw data is written for this broker (`data_payload`): the full JSON payload, or
    /// the compact one described by a retained meta message per device.
    pub data_payload: DataPayload,
}

/// `data_payload = "full" | "compact"` of a JSON `[[mqtt]]` sink (docs/MQTT.md, "Compact
/// data"). Per sink, like `carry` and `data_qos`: the plant broker keeps the full payload its
/// consumers read, the uplink paid by the byte gets the compact one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPayload {
    /// `alsentry/data/1` on `{device}/data`: every tag by name, with its unit.
    #[default]
    Full,
    /// `alsentry/data-compact/1` on `{device}/data/compact`: values in tag order, described by
    /// `alsentry/data-meta/1` retained on `{device}/data/meta`.
    Compact,
}

/// `format = "json" | "sparkplug"` of an `[[mqtt]]` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The agent's own JSON topics (docs/MQTT.md).
    #[default]
    Json,
    /// Sparkplug B 3.0 (docs/SPARKPLUG.md).
    Sparkplug,
}

/// Why `id` cannot be a Sparkplug group, edge node, device or host id, if it cannot: the
/// specification forbids '+', '/' and '#' in them (and an empty id makes no topic level).
pub fn sparkplug_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("a Sparkplug id may not be empty".into());
    }
    if id.contains(['+', '/', '#']) || id.chars().any(char::is_control) {
        return Some(format!(
            "\"{id}\" cannot be a Sparkplug id: no '+', '/', '#' or control characters"
        ));
    }
    None
}

impl MqttSink {
    /// The options to open this sink's outbox with.
    pub fn outbox_options(&self) -> OutboxOptions {
        self.outbox
    }

    /// Whether a message of `class` (with `priority` for alarms) goes to this broker.
    pub fn carries(&self, class: Class, priority: Option<Priority>) -> bool {
        self.carry.contains(&class)
            && match (class, priority) {
                // Priority orders from critical (smallest) to low.
                (Class::Alarm, Some(p)) => p <= self.min_priority,
                _ => true,
            }
    }
}

const CLASSES: [Class; 4] = [Class::Alarm, Class::Summary, Class::Status, Class::Data];

fn parse_class(s: &str) -> Option<Class> {
    CLASSES.into_iter().find(|c| c.as_str() == s)
}

/// `fsync = "alarms" | "always" | "never" | "<duration>"`.
/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// fsync after every append.
    Always,
    /// fsync after every alarm record; other records become durable with the next alarm,
    /// a segment roll or `Outbox::flush`.
    #[default]
    Alarms,
    /// fsync when at least this many milliseconds have passed since the last one, checked on
    /// append and `Outbox::sync_if_due`.
    Interval(u64),
    /// Leave it to the OS (records still survive a process crash, not a power cut).
    Never,
}

/// Limits and durability settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxOptions {
    /// Bound on the bytes of live (un-acked) records; older, less important records are dropped
    /// to stay under it. Disk use can exceed it by about two segments of not-yet-reclaimed space.
    pub max_size_bytes: u64,
    /// Records older than this are expired (dropped), alarms included.
    pub max_age_ms: i64,
    pub fsync: FsyncPolicy,
    /// A segment file is closed for appends once it reaches this size.
    pub segment_size_bytes: u64,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            max_size_bytes: 256 << 20,
            max_age_ms: 7 * 24 * 3600 * 1000,
            fsync: FsyncPolicy::Alarms,
            segment_size_bytes: 4 << 20,
        }
    }
}

pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "alarms" => Ok(FsyncPolicy::Alarms),
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        other => match super::units::parse_duration_ms(other) {
            Ok(ms) if ms > 0 => Ok(FsyncPolicy::Interval(ms as u64)),
            _ => Err(format!(
                "\"{other}\" is not an fsync policy; accepted: \"alarms\" (default), \"always\", \"never\", or an interval such as \"1s\""
            )),
        },
    }
}

fn parse_outbox(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
) -> OutboxOptions {
    let mut o = OutboxOptions::default();
    let Some(mut r) = TableReader::of(v, src, path, p) else {
        return o;
    };
    if let Some(b) = r.opt_size(p, "max_size") {
        if b < 1024 {
            r.problem(p, "max_size", "max_size must be at least 1KiB");
        } else {
            o.max_size_bytes = b;
        }
    }
    if let Some(ms) = r.opt_duration_ms(p, "max_age") {
        if ms < 1000 {
            r.problem(p, "max_age", "max_age must be at least 1s");
        } else {
            o.max_age_ms = ms;
        }
    }
    if let Some(f) = r.opt_str(p, "fsync") {
        match parse_fsync(&f) {
            Ok(f) => o.fsync = f,
            Err(e) => r.problem(p, "fsync", e),
        }
    }
    r.finish(p);
    o
}

pub fn parse_sink(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    default_name: &str,
    p: &mut Problems,
) -> Option<MqttSink> {
    let mut r = TableReader::of(v, src, path, p)?;
    let name = r
        .opt_str(p, "name")
        .unwrap_or_else(|| default_name.to_string());
    let url = match r.req_str(p, "url", "e.g. \"mqtt://127.0.0.1:1883\"") {
        Some(u) => match parse_broker_url(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                r.problem(p, "url", e);
                None
            }
        },
        None => None,
    };
    let topic_root = r
        .opt_str(p, "topic_root")
        .unwrap_or_else(|| "alsentry".to_string());
    if topic_root.contains(['+', '#'])
        || topic_root.starts_with('/')
        || topic_root.ends_with('/')
        || topic_root.chars().any(char::is_control)
    {
        r.problem(
            p,
            "topic_root",
            "a topic root may not contain '+', '#' or control characters nor start or end with '/'",
        );
    }
    let client_id = r.opt_str(p, "client_id");
    let keep_alive_ms = r.opt_duration_ms(p, "keep_alive").unwrap_or(30_000);
    if !(5_000..=3_600_000).contains(&keep_alive_ms) {
        r.problem(p, "keep_alive", "keep_alive must be between 5s and 1h");
    }
    let username = r.opt_str(p, "username");
    let password_file = r.opt_str(p, "password_file");
    let password_env = r.opt_str(p, "password_env");
    let password = match (password_file, password_env) {
        (Some(f), None) => Some(PasswordSource::File(f)),
        (None, Some(e)) => Some(PasswordSource::Env(e)),
        (Some(_), Some(_)) => {
            r.problem(
                p,
                "password_env",
                "give either `password_file` or `password_env`, not both",
            );
            None
        }
        (None, None) => None,
    };
    if password.is_some() && username.is_none() {
        r.missing(p, "username", "a password needs a username");
    }
    let carry = match r.opt_str_list(p, "carry") {
        None => CLASSES.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for c in list {
                match parse_class(&c) {
                    Some(c) if !out.contains(&c) => out.push(c),
                    Some(_) => {}
                    None => r.problem(
                        p,
                        "carry",
                        format!("unknown message class \"{c}\"; accepted: \"alarm\", \"summary\", \"status\", \"data\""),
                    ),
                }
            }
            out
        }
    };
    let min_priority = match r.opt_str(p, "min_priority") {
        None => Priority::Low,
        Some(s) => Priority::parse(&s).unwrap_or_else(|| {
            r.problem(
                p,
                "min_priority",
                format!("unknown priority \"{s}\"; accepted: \"critical\", \"high\", \"medium\", \"low\""),
            );
            Priority::Low
        }),
    };
    let outbox = match r.get("outbox") {
        Some(v) => parse_outbox(v, src, r.key_path("outbox"), p),
        None => OutboxOptions::default(),
    };
    let replay_rate = match r.opt_int(p, "replay_rate") {
        None => 200,
        Some(n) if (1..=100_000).contains(&n) => n as u32,
        Some(_) => {
            r.problem(
                p,
                "replay_rate",
                "replay_rate is messages per second, 1 to 100000",
            );
            200
        }
    };
    let reconnect_max_ms = r.opt_duration_ms(p, "reconnect_max").unwrap_or(30_000);
    if !(1_000..=3_600_000).contains(&reconnect_max_ms) {
        r.problem(
            p,
            "reconnect_max",
            "reconnect_max must be between 1s and 1h",
        );
    }
    let protocol = match r.opt_str(p, "protocol").as_deref() {
        None | Some("3.1.1") => Protocol::V311,
        Some("5") | Some("5.0") => Protocol::V5,
        Some(other) => {
            r.problem(
                p,
                "protocol",
                format!("unknown MQTT protocol \"{other}\"; accepted: \"3.1.1\" (default), \"5\""),
            );
            Protocol::V311
        }
    };
    let data_expiry_ms = match r.opt_duration_ms(p, "data_expiry") {
        Some(_) if protocol != Protocol::V5 => {
            r.problem(
                p,
                "data_expiry",
                "message expiry needs MQTT 5; add protocol = \"5\"",
            );
            None
        }
        Some(ms) if !(1_000..=u32::MAX as i64 * 1000).contains(&ms) => {
            r.problem(p, "data_expiry", "data_expiry must be at least 1s");
            None
        }
        Some(ms) => Some(ms),
        None if protocol == Protocol::V5 => Some(60_000),
        None => None,
    };
    let data_qos = match r.opt_int(p, "data_qos") {
        None => 0,
        Some(q @ 0..=1) => q as u8,
        Some(_) => {
            r.problem(p, "data_qos", "data_qos is 0 or 1");
            0
        }
    };
    let ca_file = r.opt_str(p, "ca_file");
    let client_cert = r.opt_str(p, "client_cert");
    let client_key = r.opt_str(p, "client_key");
    let client = match (client_cert, client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (Some(_), None) => {
            r.missing(
                p,
                "client_key",
                "mutual TLS needs both client_cert and client_key",
            );
            None
        }
        (None, Some(_)) => {
            r.missing(
                p,
                "client_cert",
                "mutual TLS needs both client_cert and client_key",
            );
            None
        }
        (None, None) => None,
    };
    let tls = match (&url, ca_file) {
        (Some(u), Some(ca)) if u.tls => Some(TlsFiles {
            ca_file: ca,
            client,
        }),
        (Some(u), None) if u.tls => {
            r.missing(
                p,
                "ca_file",
                "mqtts:// needs the PEM file of the CA that signed the broker's certificate",
            );
            None
        }
        (Some(_), Some(_)) => {
            r.problem(
                p,
                "ca_file",
                "ca_file is for mqtts:// URLs; this one is plain mqtt://",
            );
            None
        }
        (Some(_), None) if client.is_some() => {
            r.problem(
                p,
                "client_cert",
                "client certificates are for mqtts:// URLs",
            );
            None
        }
        _ => None,
    };
    let format = match r.opt_str(p, "format").as_deref() {
        None | Some("json") => Format::Json,
        Some("sparkplug") => Format::Sparkplug,
        Some(other) => {
            r.problem(
                p,
                "format",
                format!("unknown format \"{other}\"; accepted: \"json\" (default), \"sparkplug\""),
            );
            Format::Json
        }
    };
    let data_payload = match r.opt_str(p, "data_payload").as_deref() {
        None | Some("full") => DataPayload::Full,
        Some("compact") if format == Format::Sparkplug => {
            r.problem(
                p,
                "data_payload",
                "data_payload = \"compact\" is for JSON sinks; a Sparkplug sink sends data as Sparkplug metrics (docs/SPARKPLUG.md)",
            );
            DataPayload::Full
        }
        Some("compact") => DataPayload::Compact,
        Some(other) => {
            r.problem(
                p,
                "data_payload",
                format!("unknown data payload \"{other}\"; accepted: \"full\" (default), \"compact\" (values in tag order, described by a retained meta message)"),
            );
            DataPayload::Full
        }
    };
    let primary_host = r.opt_str(p, "primary_host");
    if let Some(h) = &primary_host {
        if format != Format::Sparkplug {
            r.problem(
                p,
                "primary_host",
                "primary_host is for Sparkplug sinks; add format = \"sparkplug\"",
            );
        } else if let Some(why) = sparkplug_id_problem(h) {
            r.problem(p, "primary_host", why);
        }
    }
    r.finish(p);
    Some(MqttSink {
        format,
        primary_host,
        data_payload,
        name,
        url: url?,
        topic_root,
        client_id,
        keep_alive_ms,
        username,
        password,
        carry,
        min_priority,
        outbox,
        replay_rate,
        reconnect_max_ms,
        protocol,
        data_expiry_ms,
        data_qos,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883"),
            Ok(BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            })
        );
        assert_eq!(parse_broker_url("mqtts://broker").map(|u| u.port), Ok(8883));
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://:1883").is_err());
    }

    fn load(mqtt: &str) -> Result<crate::config::Config, Vec<String>> {
        let text = format!("[agent]\nid = \"gw\"\nsite = \"s\"\narea = \"a\"\n{mqtt}");
        crate::config::Config::from_str(std::path::Path::new("t.toml"), &text)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn defaults_carry_everything_with_default_outbox() {
        let c = load("[mqtt]\nurl = \"mqtt://b:1883\"\n").unwrap();
        let s = &c.sinks[0];
        assert_eq!(s.carry.len(), 4);
        assert_eq!(s.min_priority, Priority::Low);
        assert_eq!(s.outbox_options(), OutboxOptions::default());
        assert_eq!(s.replay_rate, 200);
        assert_eq!(s.protocol, Protocol::V311);
        assert_eq!(s.data_expiry_ms, None);
        assert!(s.carries(Class::Data, None));
        assert!(s.carries(Class::Alarm, Some(Priority::Low)));
    }

    #[test]
    fn two_sinks_with_filters_outbox_tls_and_v5() {
        let c = load(
            r#"
[[mqtt]]
name = "plant"
url = "mqtt://plant:1883"
[mqtt.outbox]
max_size = "1MiB"
max_age = "2d"
fsync = "500ms"
[[mqtt]]
name = "province"
url = "mqtts://prov:8883"
ca_file = "/etc/alsentry/ca.pem"
client_cert = "/etc/alsentry/gw.pem"
client_key = "/etc/alsentry/gw.key"
protocol = "5"
carry = ["alarm", "summary"]
min_priority = "high"
replay_rate = 50
outbox = { max_size = "64MiB", fsync = "always" }
"#,
        )
        .unwrap();
        let (a, b) = (&c.sinks[0], &c.sinks[1]);
        assert_eq!(a.outbox.max_size_bytes, 1 << 20);
        assert_eq!(a.outbox.max_age_ms, 2 * 86_400_000);
        assert_eq!(a.outbox.fsync, FsyncPolicy::Interval(500));
        assert_eq!(b.outbox.fsync, FsyncPolicy::Always);
        assert_eq!(b.outbox.max_size_bytes, 64 << 20);
        assert_eq!(b.protocol, Protocol::V5);
        assert_eq!(b.data_expiry_ms, Some(60_000));
        assert_eq!(b.replay_rate, 50);
        let tls = b.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file, "/etc/alsentry/ca.pem");
        assert!(tls.client.is_some());
        assert!(b.carries(Class::Alarm, Some(Priority::Critical)));
        assert!(b.carries(Class::Alarm, Some(Priority::High)));
        assert!(!b.carries(Class::Alarm, Some(Priority::Medium)));
        assert!(b.carries(Class::Summary, None));
        assert!(!b.carries(Class::Data, None));
        assert!(!b.carries(Class::Status, None));
    }

    #[test]
    fn every_new_key_reports_its_location() {
        let e = load(
            r#"[mqtt]
url = "mqtts://b"
carry = ["alarm", "gossip"]
min_priority = "urgent"
replay_rate = 0
protocol = "4"
data_expiry = "1m"
client_cert = "c.pem"
outbox = { max_size = "lots", fsync = "sometimes", colour = "red" }
"#,
        )
        .unwrap_err();
        let all = e.join("\n");
        for expected in [
            "t.toml:7:9: mqtt.carry: unknown message class \"gossip\"",
            "t.toml:8:16: mqtt.min_priority: unknown priority \"urgent\"",
            "t.toml:9:15: mqtt.replay_rate: replay_rate is messages per second",
            "t.toml:10:12: mqtt.protocol: unknown MQTT protocol \"4\"",
            "t.toml:11:15: mqtt.data_expiry: message expiry needs MQTT 5",
            "mqtt.client_key: missing required key; mutual TLS needs both",
            "mqtt.ca_file: missing required key; mqtts:// needs",
            "t.toml:13:23: mqtt.outbox.max_size:",
            "mqtt.outbox.fsync: \"sometimes\" is not an fsync policy",
            "mqtt.outbox.colour: unknown key",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
    }

    #[test]
    fn data_payload_is_full_by_default_and_compact_per_json_sink() {
        let c = load(
            r#"
[[mqtt]]
name = "plant"
url = "mqtt://plant:1883"
[[mqtt]]
name = "province"
url = "mqtt://prov:1883"
data_payload = "compact"
[[mqtt]]
name = "explicit"
url = "mqtt://other:1883"
data_payload = "full"
"#,
        )
        .unwrap();
        let forms: Vec<DataPayload> = c.sinks.iter().map(|s| s.data_payload).collect();
        assert_eq!(
            forms,
            [DataPayload::Full, DataPayload::Compact, DataPayload::Full]
        );
    }

    #[test]
    fn data_payload_refuses_unknown_forms_and_compact_on_sparkplug() {
        let e = load("[mqtt]\nurl = \"mqtt://b\"\ndata_payload = \"tiny\"\n").unwrap_err();
        assert!(
            e.join("\n").contains("t.toml:7:16: mqtt.data_payload: unknown data payload \"tiny\"; accepted: \"full\" (default), \"compact\""),
            "{e:?}"
        );
        let e = load(
            "[mqtt]\nurl = \"mqtt://b\"\nformat = \"sparkplug\"\ndata_payload = \"compact\"\n",
        )
        .unwrap_err();
        assert!(
            e.join("\n")
                .contains("mqtt.data_payload: data_payload = \"compact\" is for JSON sinks"),
            "{e:?}"
        );
        // The full form is what a Sparkplug sink reads its values from: accepted.
        let c =
            load("[mqtt]\nurl = \"mqtt://b\"\nformat = \"sparkplug\"\ndata_payload = \"full\"\n")
                .unwrap();
        assert_eq!(c.sinks[0].data_payload, DataPayload::Full);
    }

    #[test]
    fn debug_never_shows_a_password() {
        std::env::set_var("ALSENTRY_TEST_PW_VAR", "hunter2-secret");
        let c = load("[mqtt]\nurl = \"mqtt://b\"\nusername = \"u\"\npassword_env = \"ALSENTRY_TEST_PW_VAR\"\n").unwrap();
        let dbg = format!("{:?}", c.sinks[0]);
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("Env(ALSENTRY_TEST_PW_VAR)"), "{dbg}");
    }
}
