//! Configuration: parsed, then validated, then planned, before any socket opens.
//!
//! Loading never stops at the first problem: every problem is collected with its file, line,
//! column and key path, so `alsentry check` shows them all at once.

pub(crate) mod action;
mod compile;
pub mod describe;
pub(crate) mod device;
pub(crate) mod endpoint;
pub(crate) mod mqtt;
pub(crate) mod reader;
pub mod record;
pub mod report;
pub(crate) mod rule;
pub(crate) mod tag;
pub(crate) mod units;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::DeValue;

/// `[alarms]` is read here and used by the engine: the type is core's.
pub use crate::core::spec::AlarmOptions;
pub use device::Device;
pub use endpoint::Endpoint;
pub use mqtt::MqttSink;
pub use reader::Problem;
pub use rule::{Rule, RuleKind, Selector};
pub use tag::{Derived, Tag};

use crate::core::spec::Spec;
use device::{parse_listed, Item};
use reader::{index, join, parse_document, read_source, type_name, Problems, Source, TableReader};

pub const DEFAULT_PATH: &str = "/etc/alsentry/alsentry.toml";

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: String,
    pub site: String,
    pub area: String,
    pub state_dir: PathBuf,
    /// Runtime worker threads (`worker_threads`, default 1). Polling is I/O-bound: one thread
    /// carries hundreds of devices at 10 Hz, and more threads cost CPU in wake-ups.
    pub worker_threads: usize,
    /// The plant's time zone (`timezone`, an IANA name such as "Asia/Shanghai"; default
    /// "UTC"): how the operator station shows times. Payloads stay in UTC.
    pub timezone: String,
}

/// The register map shared by every device of one model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    pub tags: Vec<Tag>,
    pub derived: Vec<Derived>,
}

/// A validated configuration. Its invariants hold: names are unique, tags do not overlap,
/// rules name existing tags, quantities are within protocol limits, and the rules compiled.
#[derive(Debug, Clone)]
pub struct Config {
    pub files: Vec<PathBuf>,
    /// Hash of every file's text, published in status so operators can tell configs apart.
    pub hash: String,
    pub agent: Agent,
    pub sinks: Vec<MqttSink>,
    pub templates: BTreeMap<String, Template>,
    pub devices: Vec<Device>,
    pub rules: Vec<Rule>,
    pub http: Option<Http>,
    pub alarms: AlarmOptions,
    pub summary: SummaryOptions,
    pub data: DataOptions,
    /// `[record]`: write the samples read to CSV files for `alsentry replay`.
    pub record: Option<record::RecordConfig>,
    /// `[report]`: the daily energy and emissions report (docs/REPORT.md).
    pub report: report::ReportConfig,
    /// The devices' tags and the rules, compiled once at load: what the engine is built from.
    pub spec: Arc<Spec>,
    /// `[[actions]]`: what may be written to plant equipment (docs/DISPOSAL.md).
    pub actions: Vec<crate::core::action::ActionSpec>,
    /// `[disposal]`: the kill switches as configured.
    pub disposal: crate::core::action::Kill,
}

/// `[summary]`: the periodic per-device summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryOptions {
    /// 0 turns summaries off.
    pub interval_ms: i64,
    /// Current efficiency (fraction) for the DC energy estimate 2980 * V / CE kWh/t.
    pub current_efficiency: f64,
    /// Rectifier efficiency (fraction) to turn DC into AC energy.
    pub rectifier_efficiency: f64,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            interval_ms: 60_000,
            current_efficiency: 0.93,
            rectifier_efficiency: 0.98,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    Off,
    /// Every poll.
    Poll,
    /// Only values that moved more than the deadband since last published.
    Change,
}

/// `[data]`: raw samples on `{device}/data` (off by default).
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    pub mode: DataMode,
    pub deadband: f64,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            mode: DataMode::Off,
            deadband: 0.0,
        }
    }
}

/// The HTTP listener: the operations endpoint (`/metrics`, `/healthz`, `/readyz`, `/alarms`)
/// and, with a users file or anonymous viewing, the operator station at `/`. Off unless
/// configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Http {
    pub listen: std::net::SocketAddr,
    /// Share of the devices that must answer for `/readyz` (0 to 1; at least one device).
    pub ready_share: f64,
    /// The operator station's users (`users`, written by `alsentry user add`).
    pub users: Option<PathBuf>,
    /// Viewing the station without logging in (`anonymous`, default false).
    pub anonymous: bool,
    /// A login lasts this long without use (`session_timeout`, default 8h: a shift).
    pub session_timeout_ms: i64,
    /// HTTPS with this PEM certificate chain and key (`tls_cert`, `tls_key`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Http {
    /// Whether the operator station is served at `/`.
    pub fn station(&self) -> bool {
        self.users.is_some() || self.anonymous
    }
}

/// Why a configuration was refused: every problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} problem(s) in the configuration:\n{}", .problems.len(), .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let main = read_source(path).map_err(|p| ConfigError { problems: vec![p] })?;
        load_from_sources(main)
    }

    pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
        load_from_sources(Source {
            path: path.to_path_buf(),
            text: text.to_string(),
        })
    }

    /// Devices a rule applies to.
    pub fn rule_devices<'a>(&'a self, rule: &'a Rule) -> impl Iterator<Item = &'a Device> + 'a {
        self.devices
            .iter()
            .filter(move |d| selects(&rule.selector, d))
    }
}

pub fn selects(sel: &Selector, d: &Device) -> bool {
    match sel {
        Selector::Template(t) => d.template.as_deref() == Some(t.as_str()),
        Selector::Devices(pats) => pats.iter().any(|p| rule::glob_match(p, &d.name)),
    }
}

fn fnv64(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn load_from_sources(main: Source) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let mut sources = vec![main];
    // Includes are read first so that every source outlives the parsed documents borrowing it.
    let includes = {
        let mut p_tmp = Problems::default();
        let doc = parse_document(&sources[0], &mut p_tmp);
        let mut inc = Vec::new();
        if let Some(doc) = &doc {
            if let Some(v) = doc.get_ref().get("include") {
                match v.get_ref() {
                    DeValue::Array(items) => {
                        for item in items.iter() {
                            if let DeValue::String(s) = item.get_ref() {
                                inc.push((s.to_string(), item.span().start));
                            }
                        }
                    }
                    DeValue::String(s) => inc.push((s.to_string(), v.span().start)),
                    _ => {}
                }
            }
        }
        inc
    };
    let base = sources[0]
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for (inc, offset) in includes {
        let path = base.join(&inc);
        match read_source(&path) {
            Ok(s) => sources.push(s),
            Err(e) => {
                let msg = format!(
                    "cannot read included file {}: {}",
                    path.display(),
                    e.message
                );
                p.add(&sources[0], offset, "include", msg);
            }
        }
    }
    let hash = fnv64(&sources.iter().map(|s| s.text.as_str()).collect::<Vec<_>>());
    let docs: Vec<_> = sources.iter().map(|s| parse_document(s, &mut p)).collect();

    let mut agent = None;
    let mut sinks = Vec::new();
    let mut templates: BTreeMap<String, TemplateParts> = BTreeMap::new();
    let mut entries = Vec::new();
    let mut rules = Vec::new();
    // What was refused, by the name it is still known by: references to it are not reported
    // a second time (one bad value, one problem).
    let mut refused = Refused::default();
    let mut http = None;
    let mut alarms = AlarmOptions::default();
    let mut summary = SummaryOptions::default();
    let mut data = DataOptions::default();
    let mut record_cfg = None;
    let mut report_cfg = report::ReportConfig::default();
    let mut action_values = Vec::new();
    let mut disposal = crate::core::action::Kill::default();

    for (si, (src, doc)) in sources.iter().zip(docs.iter()).enumerate() {
        let Some(doc) = doc else { continue };
        let mut top = TableReader::new(doc.get_ref(), reader::At { src, offset: 0 }, String::new());
        if si == 0 {
            if let Some(v) = top.get("include") {
                match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if !matches!(item.get_ref(), DeValue::String(_)) {
                                p.add(
                                    src,
                                    item.span().start,
                                    &index("include", i),
                                    "expected a file path string",
                                );
                            }
                        }
                    }
                    DeValue::String(_) => {}
                    other => p.add(
                        src,
                        v.span().start,
                        "include",
                        format!(
                            "expected an array of file paths, found {}",
                            type_name(other)
                        ),
                    ),
                }
            }
            match top.get("agent") {
                Some(v) => agent = parse_agent(v, src, &mut p),
                None => top.missing(&mut p, "agent", "an [agent] table with id, site and area"),
            }
            match top.get("mqtt") {
                Some(v) => match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(s) = mqtt::parse_sink(
                                item,
                                src,
                                index("mqtt", i),
                                &format!("sink{}", i + 1),
                                &mut p,
                            ) {
                                sinks.push((s, item.span().start));
                            }
                        }
                    }
                    _ => {
                        if let Some(s) = mqtt::parse_sink(v, src, "mqtt".into(), "plant", &mut p) {
                            sinks.push((s, v.span().start));
                        }
                    }
                },
                None => top.missing(&mut p, "mqtt", "an [mqtt] table with the broker url"),
            }
        }
        if si == 0 {
            if let Some(v) = top.get("http") {
                http = parse_http(v, src, &mut p);
            }
            if let Some(v) = top.get("alarms") {
                alarms = parse_alarm_options(v, src, &mut p);
            }
            if let Some(v) = top.get("summary") {
                summary = parse_summary_options(v, src, &mut p);
            }
            if let Some(v) = top.get("data") {
                data = parse_data_options(v, src, &mut p);
            }
            if let Some(v) = top.get("report") {
                report_cfg = report::parse_report(v, src, &mut p);
            }
            if let Some(v) = top.get("disposal") {
                disposal = action::parse_disposal(v, src, &mut p);
            }
            if let Some(v) = top.get("record") {
                record_cfg = record::parse_record(v, src, "record".into(), &mut p)
                    .map(|r| (r, v.span().start));
            }
        }
        if let Some(v) = top.get("templates") {
            // Every key of [templates] is a template name, so there are no unknown keys here.
            if let Some(tr) = TableReader::of(v, src, "templates".into(), &mut p) {
                for (k, tv) in tr.table.iter() {
                    let name = k.get_ref().to_string();
                    let path = join("templates", &name);
                    match parse_template(tv, src, si, path, &mut p) {
                        // A template may be split across files (register map in one, derived
                        // tags of a rule preset in another): the parts add up.
                        Some(t) => match templates.get_mut(&name) {
                            Some(prev) => prev.add(t),
                            None => {
                                templates.insert(name, t);
                            }
                        },
                        None => {
                            refused.templates.insert(name);
                        }
                    }
                }
            }
        }
        if let Some(v) = top.get("devices") {
            let listed = parse_listed(v, src, "devices".into(), &mut p, device::parse_device_entry);
            refused.devices |= listed.incomplete;
            entries.extend(listed.items.into_iter().map(|(e, _)| (e, si)));
        }
        if let Some(v) = top.get("actions") {
            action_values.push((si, v));
        }
        if let Some(v) = top.get("rules") {
            let listed = parse_listed(v, src, "rules".into(), &mut p, |v, s, path, p| {
                rule::parse_rule(v, s, si, path, p)
            });
            refused.rules.extend(listed.broken);
            rules.extend(listed.items.into_iter().map(|(r, _)| r));
        }
        top.finish(&mut p);
    }

    let expanded = expand_devices(&entries, &templates, &refused, &sources, &mut p);
    refused.devices |= expanded.incomplete;
    let devices = expanded.devices;
    if let Some((rc, offset)) = &record_cfg {
        let refused_tags: HashSet<String> = expanded
            .tables
            .iter()
            .flat_map(|t| t.broken.iter().cloned())
            .collect();
        let partial = expanded.tables.iter().any(|t| t.partial);
        if !partial {
            record::check_tags(rc, &devices, &refused_tags, &sources[0], *offset, &mut p);
        }
    }
    check_sinks(&sinks, &sources[0], &mut p);
    if let Some(offset) = report_cfg.ae_rule_offset {
        let name = &report_cfg.options.ae_rule;
        if !rules.iter().any(|r| &r.name == name) {
            p.add(
                &sources[0],
                offset,
                "report.ae_rule",
                format!("no rule \"{name}\" in the configuration"),
            );
        }
    }
    // One kWh/t for the summary and the report.
    report_cfg.options.current_efficiency = summary.current_efficiency;
    report_cfg.options.rectifier_efficiency = summary.rectifier_efficiency;
    let selector_refused = check_rules(&rules, &devices, &templates, &refused, &sources, &mut p);
    let mut actions = Vec::new();
    {
        let cx = action::Context {
            devices: &devices,
            rules: &rules,
            area: agent.as_ref().map_or("", |a| a.area.as_str()),
        };
        for (si, v) in &action_values {
            for a in action::parse_actions(v, &sources[*si], &cx, &mut p) {
                if actions
                    .iter()
                    .any(|x: &crate::core::action::ActionSpec| x.name == a.name)
                {
                    let at = v.span().start;
                    let msg = format!("action \"{}\" is defined twice", a.name);
                    p.add(&sources[*si], at, "actions", msg);
                }
                actions.push(a);
            }
        }
    }
    let spec = compile::compile(
        &compile::Input {
            sources: &sources,
            area: agent.as_ref().map_or("", |a| a.area.as_str()),
            alarms: &alarms,
            devices: &devices,
            device_table: &expanded.device_table,
            tables: &expanded.tables,
            templates: &templates,
            rules: &rules,
            refused_rules: &refused.rules,
            selector_refused: &selector_refused,
        },
        &mut p,
    );

    if !p.is_empty() {
        return Err(ConfigError {
            problems: p.sorted(),
        });
    }
    let (Some(agent), Some(spec)) = (agent, spec) else {
        return Err(ConfigError {
            problems: p.sorted(),
        });
    };
    let mut sinks: Vec<MqttSink> = sinks.into_iter().map(|(s, _)| s).collect();
    let data = imply_data_for_sparkplug(data, &mut sinks);
    Ok(Config {
        files: sources.iter().map(|s| s.path.clone()).collect(),
        hash,
        agent,
        sinks,
        templates: templates
            .into_iter()
            .map(|(k, t)| (k, t.template))
            .collect(),
        devices,
        rules,
        http,
        alarms,
        summary,
        data,
        record: record_cfg.map(|(r, _)| r),
        report: report_cfg,
        spec: Arc::new(spec),
        actions,
        disposal,
    })
}

fn parse_alarm_options(
    v: &toml::Spanned<DeValue<'_>>,
    src: &Source,
    p: &mut Problems,
) -> AlarmOptions {
    let mut o = AlarmOptions::default();
    let Some(mut r) = TableReader::of(v, src, "alarms".into(), p) else {
        return o;
    };
    if let Some(b) = r.opt_bool(p, "comm_loss") {
        o.comm_loss = b;
    }
    if let Some(s) = r.opt_str(p, "comm_loss_priority") {
        match crate::core::model::Priority::parse(&s) {
            Some(pr) => o.comm_loss_priority = pr,
            None => r.problem(
                p,
                "comm_loss_priority",
                format!("unknown priority \"{s}\"; accepted: critical, high, medium, low"),
            ),
        }
    }
    if let Some(d) = r.opt_duration_ms(p, "comm_loss_delay") {
        o.comm_loss_delay_ms = d;
    }
    if let Some(n) = r.opt_int_in(p, "flood_threshold", 1, 100_000) {
        o.flood_threshold = n as usize;
    }
    if let Some(d) = r.opt_duration_ms(p, "flood_window") {
        if d <= 0 {
            r.problem(p, "flood_window", "must be positive");
        } else {
            o.flood_window_ms = d;
        }
    }
    r.finish(p);
    o
}

fn parse_summary_options(
    v: &toml::Spanned<DeValue<'_>>,
    src: &Source,
    p: &mut Problems,
) -> SummaryOptions {
    let mut o = SummaryOptions::default();
    let Some(mut r) = TableReader::of(v, src, "summary".into(), p) else {
        return o;
    };
    if let Some(d) = r.opt_duration_ms(p, "interval") {
        if d != 0 && d < 1_000 {
            r.problem(
                p,
                "interval",
                "a summary interval must be at least 1s (or \"0s\" to turn summaries off)",
            );
        } else {
            o.interval_ms = d;
        }
    }
    for (key, slot) in [
        ("current_efficiency", &mut o.current_efficiency),
        ("rectifier_efficiency", &mut o.rectifier_efficiency),
    ] {
        if let Some(f) = r.opt_f64(p, key) {
            if f > 0.0 && f <= 1.0 {
                *slot = f;
            } else {
                r.problem(p, key, "an efficiency is a fraction in (0, 1], e.g. 0.93");
            }
        }
    }
    r.finish(p);
    o
}

fn parse_data_options(
    v: &toml::Spanned<DeValue<'_>>,
    src: &Source,
    p: &mut Problems,
) -> DataOptions {
    let mut o = DataOptions::default();
    let Some(mut r) = TableReader::of(v, src, "data".into(), p) else {
        return o;
    };
    match r.opt_str(p, "mode").as_deref() {
        None | Some("off") => {}
        Some("poll") => o.mode = DataMode::Poll,
        Some("change") => o.mode = DataMode::Change,
        Some(other) => r.problem(p, "mode", format!("unknown mode \"{other}\"; accepted: off, poll (every poll), change (by exception, with `deadband`)")),
    }
    if let Some(d) = r.opt_f64(p, "deadband") {
        if d < 0.0 {
            r.problem(p, "deadband", "deadband must be 0 or positive");
        } else {
            o.deadband = d;
        }
    }
    r.finish(p);
    o
}

fn parse_http(v: &toml::Spanned<DeValue<'_>>, src: &Source, p: &mut Problems) -> Option<Http> {
    let mut r = TableReader::of(v, src, "http".into(), p)?;
    let listen = r.req_str(
        p,
        "listen",
        "the address to serve on, e.g. \"127.0.0.1:9184\"",
    );
    let users = r.opt_str(p, "users").map(PathBuf::from);
    let anonymous = r.opt_bool(p, "anonymous").unwrap_or(false);
    let session_timeout_ms = match r.opt_duration_ms(p, "session_timeout") {
        None => 8 * 3_600_000,
        Some(ms) if (60_000..=7 * 86_400_000).contains(&ms) => ms,
        Some(_) => {
            r.problem(p, "session_timeout", "session_timeout is 1m to 7d");
            8 * 3_600_000
        }
    };
    let tls = match (r.opt_str(p, "tls_cert"), r.opt_str(p, "tls_key")) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        (Some(_), None) => {
            r.problem(
                p,
                "tls_cert",
                "tls_cert needs tls_key (the certificate's private key, PEM)",
            );
            None
        }
        (None, Some(_)) => {
            r.problem(
                p,
                "tls_key",
                "tls_key needs tls_cert (the certificate chain, PEM)",
            );
            None
        }
    };
    let ready_share = match r.opt_f64(p, "ready_share") {
        Some(s) if (0.0..=1.0).contains(&s) => s,
        Some(s) => {
            r.problem(
                p,
                "ready_share",
                format!("{s} is out of range; accepted: 0 to 1 (a share of the devices)"),
            );
            0.5
        }
        None => 0.5,
    };
    let out = listen.and_then(|l| match l.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(Http {
            listen: a,
            users,
            anonymous,
            session_timeout_ms,
            tls,
            ready_share,
        }),
        Err(_) => {
            r.problem(p, "listen", format!("\"{l}\" is not an address; write IP:PORT such as \"127.0.0.1:9184\" (use 0.0.0.0 only behind a firewall)"));
            None
        }
    });
    r.finish(p);
    out
}

fn parse_agent(v: &toml::Spanned<DeValue<'_>>, src: &Source, p: &mut Problems) -> Option<Agent> {
    let mut r = TableReader::of(v, src, "agent".into(), p)?;
    let id = r.req_str(
        p,
        "id",
        "a gateway id unique in the plant, e.g. \"gw-qz-01\"",
    );
    let site = r.req_str(p, "site", "the plant, e.g. \"qingzhen\"");
    let area = r.req_str(p, "area", "the area, e.g. \"potline-1\"");
    for (key, val) in [("id", &id), ("site", &site), ("area", &area)] {
        if let Some(s) = val {
            if let Some(why) = device::topic_level_problem(s) {
                r.problem(p, key, why);
            }
        }
    }
    let state_dir = r
        .opt_str(p, "state_dir")
        .unwrap_or_else(|| "/var/lib/alsentry".to_string());
    let worker_threads = match r.opt_int(p, "worker_threads") {
        None => 1,
        Some(n @ 1..=64) => n as usize,
        Some(_) => {
            r.problem(p, "worker_threads", "worker_threads is 1 to 64");
            1
        }
    };
    let timezone = match r.opt_str(p, "timezone") {
        None => "UTC".to_string(),
        Some(tz) => match jiff::tz::TimeZone::get(&tz) {
            Ok(_) => tz,
            Err(_) => {
                r.problem(p, "timezone", format!("unknown time zone \"{tz}\"; write an IANA name such as \"Asia/Shanghai\" or \"UTC\""));
                "UTC".to_string()
            }
        },
    };
    r.finish(p);
    Some(Agent {
        id: id?,
        site: site?,
        area: area?,
        state_dir: PathBuf::from(state_dir),
        worker_threads,
        timezone,
    })
}

/// What was refused while reading, by name.
#[derive(Debug, Default)]
struct Refused {
    /// Templates whose value could not be read at all.
    templates: HashSet<String>,
    /// Some device entry (or some device of an entry) was refused: a pattern that matches
    /// nothing may have been meant for it.
    devices: bool,
    rules: HashSet<String>,
}

/// Where a template's tag or derived tag was written: (source index, item).
type Site = (usize, Item);

/// A template and where each of its items was written, so that a problem inside it is
/// reported once, at its own line and key, whatever the devices using it.
#[derive(Debug)]
struct TemplateParts {
    template: Template,
    tag_sites: Vec<Site>,
    derived_sites: Vec<Site>,
    /// Names of its tags and derived tags that were refused.
    broken: HashSet<String>,
    /// Some were refused without a readable name.
    partial: bool,
}

impl TemplateParts {
    fn add(&mut self, other: TemplateParts) {
        self.template.tags.extend(other.template.tags);
        self.template.derived.extend(other.template.derived);
        self.tag_sites.extend(other.tag_sites);
        self.derived_sites.extend(other.derived_sites);
        self.broken.extend(other.broken);
        self.partial |= other.partial;
    }

    /// A name it lacks only because something was refused where it is defined.
    fn refused(&self, name: &str) -> bool {
        self.partial || self.broken.contains(name)
    }
}

fn parse_template(
    v: &toml::Spanned<DeValue<'_>>,
    src: &Source,
    si: usize,
    path: String,
    p: &mut Problems,
) -> Option<TemplateParts> {
    let mut r = TableReader::of(v, src, path, p)?;
    let mut parts = TemplateParts {
        template: Template::default(),
        tag_sites: Vec::new(),
        derived_sites: Vec::new(),
        broken: HashSet::new(),
        partial: false,
    };
    match r.get("tags") {
        Some(t) => {
            let listed = parse_listed(t, src, r.key_path("tags"), p, tag::parse_tag);
            for (tag, at) in listed.items {
                parts.template.tags.push(tag);
                parts.tag_sites.push((si, at));
            }
            parts.broken.extend(listed.broken);
            parts.partial |= listed.unnamed;
        }
        None if r.has("derived") => {}
        None => r.missing(p, "tags", "a template lists its tags: tags = [ { name = ..., table = ..., address = ..., type = ... } ]"),
    }
    if let Some(d) = r.get("derived") {
        let listed = parse_listed(d, src, r.key_path("derived"), p, tag::parse_derived);
        for (derived, at) in listed.items {
            parts.template.derived.push(derived);
            parts.derived_sites.push((si, at));
        }
        parts.broken.extend(listed.broken);
        parts.partial |= listed.unnamed;
    }
    r.finish(p);
    Some(parts)
}

/// The tags one `[[devices]]` entry gives its devices: its template's first, then its own.
#[derive(Debug)]
struct EntryTable {
    si: usize,
    /// `devices[i]`.
    path: String,
    tags_offset: usize,
    /// The template's name, when it exists.
    template: Option<String>,
    tags: Arc<[Tag]>,
    derived: Arc<[Derived]>,
    /// Refused tag names of the template and of the entry.
    broken: HashSet<String>,
    /// Its template was refused as a whole: any name may have been one of its tags.
    partial: bool,
}

impl EntryTable {
    /// A name this table lacks only because something was refused where it is defined.
    fn refused(&self, name: &str) -> bool {
        self.partial || self.broken.contains(name)
    }

    /// How many of its tags come from the template (they come first).
    fn template_tags(&self, templates: &BTreeMap<String, TemplateParts>) -> usize {
        self.template
            .as_ref()
            .and_then(|t| templates.get(t))
            .map_or(0, |t| t.template.tags.len())
    }
}

#[derive(Debug)]
struct Expanded {
    devices: Vec<Device>,
    /// The index in `tables` of each device's entry.
    device_table: Vec<usize>,
    /// One per entry that names an existing template or none, in entry order.
    tables: Vec<EntryTable>,
    /// Some entry did not give all its devices.
    incomplete: bool,
}

fn expand_devices(
    entries: &[(device::DeviceEntry, usize)],
    templates: &BTreeMap<String, TemplateParts>,
    refused: &Refused,
    sources: &[Source],
    p: &mut Problems,
) -> Expanded {
    let mut out: Vec<Device> = Vec::new();
    let mut device_table = Vec::new();
    let mut tables = Vec::with_capacity(entries.len());
    let mut incomplete = false;
    let mut names: HashMap<String, (usize, usize)> = HashMap::new();
    let mut links: HashMap<String, (Endpoint, usize, usize)> = HashMap::new();
    // (link, unit) pairs taken: a lookup per device, not a scan of every device before it
    // (10,000 devices were 50 million link keys formatted).
    let mut units: HashSet<(String, u8)> = HashSet::new();
    for (ei, (e, si)) in entries.iter().enumerate() {
        let src = &sources[*si];
        let path = index("devices", ei);
        let mut tags = Vec::new();
        let mut derived = Vec::new();
        let mut broken: HashSet<String> = e.broken.iter().cloned().collect();
        let mut template = None;
        let mut partial = e.partial;
        if let Some(t) = &e.template {
            match templates.get(t) {
                Some(tpl) => {
                    tags.extend(tpl.template.tags.iter().cloned());
                    derived.extend(tpl.template.derived.iter().cloned());
                    broken.extend(tpl.broken.iter().cloned());
                    partial |= tpl.partial;
                    template = Some(t.clone());
                }
                // Refused already, where it is written.
                None if refused.templates.contains(t) => {
                    incomplete = true;
                    partial = true;
                }
                None => {
                    let known: Vec<&str> = templates.keys().map(String::as_str).collect();
                    p.add(
                        src,
                        e.template_offset,
                        &join(&path, "template"),
                        format!(
                            "unknown template \"{t}\"; defined: {}",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    incomplete = true;
                    continue;
                }
            }
        }
        tags.extend(e.tags.iter().cloned());
        derived.extend(e.derived.iter().cloned());
        let table = EntryTable {
            si: *si,
            path: path.clone(),
            tags_offset: e.tags_offset,
            template,
            tags: tags.into(),
            derived: derived.into(),
            broken,
            partial,
        };
        check_overlaps(&table, templates, sources, p);
        let (tags, derived) = (table.tags.clone(), table.derived.clone());
        let table_index = tables.len();
        tables.push(table);
        let combos = match device::combinations(e) {
            Ok(c) => c,
            Err(n) => {
                p.add(src, e.offset, &path, format!("this entry expands to {n} devices (hosts × ports × units); at most {} are accepted per entry", device::MAX_EXPANSION));
                incomplete = true;
                continue;
            }
        };
        let before = out.len();
        if combos.len() > 1 && !e.name.contains('{') {
            p.add(src, e.name_offset, &join(&path, "name"), format!("this entry expands to {} devices, so its name needs a placeholder such as \"{}-{{unit:03}}\"", combos.len(), e.name));
            incomplete = true;
            continue;
        }
        for x in &combos {
            let name = match device::fill(&e.name, x) {
                Ok(n) => n,
                Err(msg) => {
                    p.add(src, e.name_offset, &join(&path, "name"), msg);
                    break;
                }
            };
            let endpoint = match device::endpoint_for(&e.endpoint, x) {
                Ok(ep) => ep,
                Err(msg) => {
                    p.add(src, e.endpoint_offset, &join(&path, "endpoint"), msg);
                    break;
                }
            };
            if let Some(why) = device::topic_level_problem(&name) {
                p.add(
                    src,
                    e.name_offset,
                    &join(&path, "name"),
                    format!("device name {name:?} {why}"),
                );
                break;
            }
            if endpoint.is_serial_line() && !(1..=247).contains(&x.unit) {
                p.add(
                    src,
                    e.unit_offset,
                    &join(&path, "unit"),
                    format!(
                        "unit id {} is not valid on a serial line; accepted: 1 to 247",
                        x.unit
                    ),
                );
                break;
            }
            if let Some((psi, poff)) = names.get(&name) {
                let (line, _) = sources[*psi].line_col(*poff);
                p.add(
                    src,
                    e.name_offset,
                    &join(&path, "name"),
                    format!(
                        "duplicate device name \"{name}\" (also defined at {}:{line})",
                        sources[*psi].path.display()
                    ),
                );
                continue;
            }
            let key = endpoint.link_key();
            if let Some((prev, psi, poff)) = links.get(&key) {
                if prev != &endpoint {
                    let (line, _) = sources[*psi].line_col(*poff);
                    p.add(src, e.endpoint_offset, &join(&path, "endpoint"), format!("serial settings differ from another device on {key} (line {line}); one line has one baud rate and framing"));
                }
            } else {
                links.insert(key.clone(), (endpoint.clone(), *si, e.offset));
            }
            if units.contains(&(key.clone(), x.unit)) {
                p.add(
                    src,
                    e.unit_offset,
                    &join(&path, "unit"),
                    format!(
                        "unit id {} on {key} is already used by another device",
                        x.unit
                    ),
                );
                continue;
            }
            names.insert(name.clone(), (*si, e.name_offset));
            units.insert((key, x.unit));
            out.push(Device {
                name,
                template: e.template.clone(),
                endpoint,
                unit: x.unit,
                poll_ms: e.poll_ms,
                timeout_ms: e.timeout_ms,
                tags: tags.clone(),
                derived: derived.clone(),
                max_gap: e.max_gap,
                max_registers: e.max_registers,
                max_bits: e.max_bits,
                backoff_max_ms: e.backoff_max_ms,
                origin: (*si, e.offset),
            });
            device_table.push(table_index);
        }
        incomplete |= out.len() - before < combos.len();
    }
    Expanded {
        devices: out,
        device_table,
        tables,
        incomplete,
    }
}

/// Register ranges of one entry's tags must not overlap. Two tags of its template that do
/// are reported at the template, once; otherwise at the entry's tags.
fn check_overlaps(
    table: &EntryTable,
    templates: &BTreeMap<String, TemplateParts>,
    sources: &[Source],
    p: &mut Problems,
) {
    let tags = &table.tags;
    let from_template = table.template_tags(templates);
    for (i, a) in tags.iter().enumerate() {
        for (j, b) in tags.iter().enumerate().skip(i + 1) {
            if a.encoding.table != b.encoding.table
                || a.address as u32 >= b.end()
                || b.address as u32 >= a.end()
            {
                continue;
            }
            let both_bits = a.encoding.bit.is_some() && b.encoding.bit.is_some();
            if both_bits && a.encoding.bit != b.encoding.bit {
                continue;
            }
            // A status word and the bits it is made of may both be tags.
            let word_and_bit = (a.encoding.bit.is_some() != b.encoding.bit.is_some())
                && a.encoding.width() == 1
                && b.encoding.width() == 1;
            if word_and_bit {
                continue;
            }
            let message = format!(
                "tags \"{}\" ({} {}..{}) and \"{}\" ({} {}..{}) overlap",
                a.name,
                a.encoding.table,
                a.address,
                a.end() - 1,
                b.name,
                b.encoding.table,
                b.address,
                b.end() - 1
            );
            let site = table
                .template
                .as_ref()
                .and_then(|t| templates.get(t))
                .filter(|_| j < from_template)
                .map(|t| &t.tag_sites[j]);
            match site {
                Some((si, at)) => p.add(&sources[*si], at.offset, &at.path, message),
                None => p.add(
                    &sources[table.si],
                    table.tags_offset,
                    &join(&table.path, "tags"),
                    message,
                ),
            }
        }
    }
}

fn check_sinks(sinks: &[(MqttSink, usize)], src: &Source, p: &mut Problems) {
    let mut seen = HashSet::new();
    for (i, (s, off)) in sinks.iter().enumerate() {
        if !seen.insert(s.name.clone()) {
            p.add(
                src,
                *off,
                &join(&index("mqtt", i), "name"),
                format!("duplicate sink name \"{}\"", s.name),
            );
        }
    }
}

/// Sparkplug publishes device values (DBIRTH, DDATA), so a configuration with a Sparkplug
/// sink and no `[data]` gets data by exception (`mode = "change"`); the JSON sinks, which had
/// no data before, keep carrying none.
fn imply_data_for_sparkplug(mut data: DataOptions, sinks: &mut [MqttSink]) -> DataOptions {
    if data.mode != DataMode::Off || !sinks.iter().any(|s| s.format == mqtt::Format::Sparkplug) {
        return data;
    }
    data.mode = DataMode::Change;
    for s in sinks.iter_mut().filter(|s| s.format == mqtt::Format::Json) {
        s.carry.retain(|c| *c != crate::core::outbound::Class::Data);
    }
    data
}

/// Checks what the rules select: templates that exist and have the watched tag, patterns that
/// match devices. Returns the rules refused here (by index): what their devices lack is then
/// not reported again. What each device lacks is found when the spec compiles.
fn check_rules(
    rules: &[Rule],
    devices: &[Device],
    templates: &BTreeMap<String, TemplateParts>,
    refused: &Refused,
    sources: &[Source],
    p: &mut Problems,
) -> HashSet<usize> {
    let mut out = HashSet::new();
    for (ri, r) in rules.iter().enumerate() {
        let src = &sources[r.origin.0];
        match &r.selector {
            Selector::Template(t) => match templates.get(t) {
                Some(tpl) => {
                    let known = tpl
                        .template
                        .tags
                        .iter()
                        .map(|t| t.name.as_str())
                        .chain(tpl.template.derived.iter().map(|d| d.name.as_str()))
                        .collect::<Vec<_>>();
                    if !known.contains(&r.tag.as_str()) {
                        out.insert(ri);
                        if !tpl.refused(&r.tag) {
                            p.add(
                                src,
                                r.tag_offset,
                                &join(&r.path, "tag"),
                                format!(
                                    "template \"{t}\" has no tag \"{}\"; its tags: {}",
                                    r.tag,
                                    known.join(", ")
                                ),
                            );
                        }
                    }
                }
                None => {
                    out.insert(ri);
                    if !refused.templates.contains(t) {
                        let known: Vec<&str> = templates.keys().map(String::as_str).collect();
                        p.add(
                            src,
                            r.selector_offset,
                            &join(&r.path, "template"),
                            format!(
                                "unknown template \"{t}\"; defined: {}",
                                if known.is_empty() {
                                    "none".into()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
            },
            Selector::Devices(pats) => {
                for pat in pats {
                    let matched = devices.iter().any(|d| rule::glob_match(pat, &d.name));
                    if !matched && !refused.devices {
                        p.add(
                            src,
                            r.selector_offset,
                            &join(&r.path, "devices"),
                            format!("\"{pat}\" matches no device"),
                        );
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod sparkplug_tests {
    use super::*;

    fn load(sinks: &str, data: &str) -> Config {
        let text = format!(
            "[agent]\nid = \"gw\"\nsite = \"s\"\narea = \"a\"\n{sinks}{data}\n[[devices]]\nname = \"pot-1\"\nendpoint = \"tcp://127.0.0.1:1502\"\ntags = [ {{ name = \"voltage\", table = \"holding\", address = 0, type = \"u16\" }} ]\n"
        );
        Config::from_str(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO: &str = "[[mqtt]]\nname = \"json\"\nurl = \"mqtt://h:1883\"\n[[mqtt]]\nname = \"sp\"\nurl = \"mqtt://h:1883\"\nformat = \"sparkplug\"\nprimary_host = \"scada\"\n";

    #[test]
    fn a_sparkplug_sink_implies_data_by_exception_and_json_sinks_keep_carrying_none() {
        let cfg = load(TWO, "");
        assert_eq!(cfg.data.mode, DataMode::Change);
        assert!(!cfg.sinks[0]
            .carry
            .contains(&crate::core::outbound::Class::Data));
        assert!(cfg.sinks[1]
            .carry
            .contains(&crate::core::outbound::Class::Data));
        assert_eq!(cfg.sinks[1].format, mqtt::Format::Sparkplug);
        assert_eq!(cfg.sinks[1].primary_host.as_deref(), Some("scada"));
    }

    #[test]
    fn configured_data_is_left_as_it_is() {
        let cfg = load(TWO, "[data]\nmode = \"poll\"\n");
        assert_eq!(cfg.data.mode, DataMode::Poll);
        assert!(cfg.sinks[0]
            .carry
            .contains(&crate::core::outbound::Class::Data));
        let json_only = load("[mqtt]\nurl = \"mqtt://h:1883\"\n", "");
        assert_eq!(json_only.data.mode, DataMode::Off);
    }
}
