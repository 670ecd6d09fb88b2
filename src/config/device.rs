//! `[[devices]]` entries and their expansion: one entry may stand for many devices over unit
//! ids (`units = "1-3"`), ports (`ports = "5100-5499"`) or hosts (`hosts = "10.0.1.10-10.0.1.50"`).

use toml::de::DeValue;
use toml::Spanned;

use super::endpoint::{parse_endpoint, Endpoint};
use super::reader::{index, name_of, type_name, value_offset_of, Problems, Source, TableReader};
use super::tag::{parse_derived, parse_tag, Derived, Tag};
use super::units::parse_host_ranges;
use crate::core::expand::{self, parse_int_ranges, Var};

/// One polled device after expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub template: Option<String>,
    pub endpoint: Endpoint,
    pub unit: u8,
    pub poll_ms: i64,
    pub timeout_ms: i64,
    /// Shared by every device expanded from one entry: 400 cells hold one copy of the map.
    pub tags: std::sync::Arc<[Tag]>,
    pub derived: std::sync::Arc<[Derived]>,
    /// Largest run of unused registers (or bits) bridged by one read.
    pub max_gap: u16,
    pub max_registers: u16,
    pub max_bits: u16,
    pub backoff_max_ms: i64,
    /// Where the entry was written, for error messages about the expanded device.
    pub origin: (usize, usize),
}

/// The raw, unexpanded entry.
#[derive(Debug)]
pub struct DeviceEntry {
    pub name: String,
    pub template: Option<String>,
    pub endpoint: String,
    pub units: Vec<u8>,
    pub ports: Option<Vec<u16>>,
    pub hosts: Option<Vec<String>>,
    pub poll_ms: i64,
    pub timeout_ms: i64,
    pub tags: Vec<Tag>,
    pub derived: Vec<Derived>,
    /// Names of this entry's tags and derived tags that were refused.
    pub broken: Vec<String>,
    /// Some of them were refused without a readable name.
    pub partial: bool,
    pub max_gap: u16,
    pub max_registers: u16,
    pub max_bits: u16,
    pub backoff_max_ms: i64,
    pub offset: usize,
    /// Offsets of the keys later checks complain about.
    pub name_offset: usize,
    pub template_offset: usize,
    pub endpoint_offset: usize,
    pub unit_offset: usize,
    pub tags_offset: usize,
}

/// Why `s` cannot be one level of an MQTT topic, if it cannot: empty, a level separator or
/// wildcard (`/`, `+`, `#`), whitespace, or a control character. MQTT forbids U+0000 and
/// brokers refuse the other control characters (MQTT 3.1.1 §1.5.3); a broker that meets one
/// drops the connection at that publish.
pub fn topic_level_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty (it becomes part of MQTT topics)".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Some(format!(
            "contains the control character U+{:04X}; a broker refuses it in a topic",
            c as u32
        ));
    }
    if s.contains(['/', '+', '#']) || s.chars().any(char::is_whitespace) {
        return Some(
            "must be non-empty without '/', '+', '#' or spaces (it becomes part of MQTT topics)"
                .into(),
        );
    }
    None
}

pub const DEFAULT_POLL_MS: i64 = 1_000;
pub const DEFAULT_TIMEOUT_MS: i64 = 1_000;
pub const DEFAULT_MAX_GAP: u16 = 16;
pub const DEFAULT_BACKOFF_MAX_MS: i64 = 10_000;

pub fn parse_device_entry(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
) -> Option<DeviceEntry> {
    let mut r = TableReader::of(v, src, path, p)?;
    let name = r.req_str(
        p,
        "name",
        "a device name, or a pattern such as \"pot-{unit:03}\"",
    );
    let template = r.opt_str(p, "template");
    let endpoint = r.req_str(p, "endpoint", "e.g. \"tcp://192.168.1.10:502\"");
    let mut units = Vec::new();
    if r.has("unit") && r.has("units") {
        r.problem(p, "units", "give either `unit` or `units`, not both");
    }
    let unit = r.opt_int_in(p, "unit", 0, 255);
    if let (Some(u), false) = (unit, r.has("units")) {
        units.push(u as u8);
    }
    if let Some(s) = r.opt_str(p, "units") {
        match parse_int_ranges(&s, 0, 255) {
            Ok(list) => units.extend(list.into_iter().map(|u| u as u8)),
            Err(e) => r.problem(p, "units", e),
        }
    }
    if units.is_empty() && !r.has("units") {
        units.push(1);
    }
    let ports = r
        .opt_str(p, "ports")
        .and_then(|s| match parse_int_ranges(&s, 1, 65_535) {
            Ok(l) => Some(l.into_iter().map(|x| x as u16).collect()),
            Err(e) => {
                r.problem(p, "ports", e);
                None
            }
        });
    let hosts = r
        .opt_str(p, "hosts")
        .and_then(|s| match parse_host_ranges(&s) {
            Ok(l) => Some(l),
            Err(e) => {
                r.problem(p, "hosts", e);
                None
            }
        });
    let poll_ms = r.opt_duration_ms(p, "poll").unwrap_or(DEFAULT_POLL_MS);
    let timeout_ms = r
        .opt_duration_ms(p, "timeout")
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    // 1 ms is no plant setting, but "as fast as the device answers" (a late poll starts at
    // once) is what the transport-ceiling benchmark and commissioning tests need.
    if poll_ms < 1 {
        r.problem(p, "poll", "poll interval must be at least 1ms");
    }
    if timeout_ms < 1 {
        r.problem(p, "timeout", "timeout must be at least 1ms");
    }
    let backoff_max_ms = r
        .opt_duration_ms(p, "backoff_max")
        .unwrap_or(DEFAULT_BACKOFF_MAX_MS);
    let max_gap = r
        .opt_int_in(p, "max_gap", 0, 2000)
        .unwrap_or(i64::from(DEFAULT_MAX_GAP)) as u16;
    let max_registers = r.opt_int_in(p, "max_registers", 1, 125).unwrap_or(125) as u16;
    let max_bits = r.opt_int_in(p, "max_bits", 1, 2000).unwrap_or(2000) as u16;
    let mut tags = Vec::new();
    let mut broken = Vec::new();
    let mut partial = false;
    if let Some(t) = r.get("tags") {
        let listed = parse_listed(t, src, r.key_path("tags"), p, parse_tag);
        tags = listed.items.into_iter().map(|(t, _)| t).collect();
        broken.extend(listed.broken);
        partial |= listed.unnamed;
    }
    let mut derived = Vec::new();
    if let Some(d) = r.get("derived") {
        let listed = parse_listed(d, src, r.key_path("derived"), p, parse_derived);
        derived = listed.items.into_iter().map(|(d, _)| d).collect();
        broken.extend(listed.broken);
        partial |= listed.unnamed;
    }
    if template.is_none() && !r.has("tags") {
        r.missing(p, "tags", "a device needs `template` or its own `tags`");
    }
    let offset = r.at.offset;
    let name_offset = r.value_offset("name");
    let template_offset = r.value_offset("template");
    let endpoint_offset = r.value_offset("endpoint");
    let unit_offset = if r.has("units") {
        r.value_offset("units")
    } else {
        r.value_offset("unit")
    };
    let tags_offset = r.value_offset("tags");
    r.finish(p);
    Some(DeviceEntry {
        name: name?,
        template,
        endpoint: endpoint?,
        units,
        ports,
        hosts,
        poll_ms,
        timeout_ms,
        tags,
        derived,
        broken,
        partial,
        max_gap,
        max_registers,
        max_bits,
        backoff_max_ms,
        offset,
        name_offset,
        template_offset,
        endpoint_offset,
        unit_offset,
        tags_offset,
    })
}

/// An array of tables read item by item, each with where it was written and, for the items
/// that failed, the name they are still known by.
#[derive(Debug)]
pub struct Listed<T> {
    pub items: Vec<(T, Item)>,
    /// Names of the items that were refused: references to them are not reported again.
    pub broken: Vec<String>,
    /// Some item was refused, named or not.
    pub incomplete: bool,
    /// Some item was refused without a readable name, or the value was no array: any name may
    /// have been one of the items.
    pub unnamed: bool,
}

/// Where one item of an array of tables was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub offset: usize,
    pub path: String,
    pub name_offset: usize,
    pub expr_offset: usize,
}

pub fn parse_listed<T>(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
    f: impl Fn(&Spanned<DeValue<'_>>, &Source, String, &mut Problems) -> Option<T>,
) -> Listed<T> {
    let mut out = Listed {
        items: Vec::new(),
        broken: Vec::new(),
        incomplete: false,
        unnamed: false,
    };
    let DeValue::Array(items) = v.get_ref() else {
        p.add(
            src,
            v.span().start,
            &path,
            format!(
                "expected an array of tables, found {}",
                type_name(v.get_ref())
            ),
        );
        out.incomplete = true;
        out.unnamed = true;
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let at = Item {
            offset: item.span().start,
            path: index(&path, i),
            name_offset: value_offset_of(item, "name"),
            expr_offset: value_offset_of(item, "expr"),
        };
        match f(item, src, at.path.clone(), p) {
            Some(x) => out.items.push((x, at)),
            None => {
                out.incomplete = true;
                match name_of(item) {
                    Some(n) => out.broken.push(n),
                    None => out.unnamed = true,
                }
            }
        }
    }
    out
}

/// Values a name or endpoint pattern can refer to.
#[derive(Debug, Clone)]
pub struct Expansion<'a> {
    pub unit: u8,
    pub port: Option<u16>,
    pub host: Option<&'a str>,
    /// 1-based position within the entry.
    pub index: usize,
}

impl Expansion<'_> {
    /// What each placeholder stands for in this expansion.
    fn vars(&self) -> [(&'static str, Var<'_>); 4] {
        [
            ("unit", Var::Int(u64::from(self.unit))),
            ("index", Var::Int(self.index as u64)),
            (
                "port",
                self.port
                    .map_or(Var::Unset("ports"), |p| Var::Int(u64::from(p))),
            ),
            ("host", self.host.map_or(Var::Unset("hosts"), Var::Text)),
        ]
    }
}

/// Fills `{unit}`, `{unit:03}`, `{index}`, `{port}`, `{host}` in a pattern.
pub fn fill(pattern: &str, x: &Expansion<'_>) -> Result<String, String> {
    expand::fill(pattern, &x.vars()).map_err(|e| e.to_string())
}

/// All (host, port, unit) combinations of an entry, hosts outermost.
/// Most devices one entry may expand to: hosts × ports × units is refused past it before
/// anything is built (a /16 of hosts times every port would be 4 billion devices).
pub const MAX_EXPANSION: usize = 100_000;

/// Every device of the entry, or how many it would be when that is over [`MAX_EXPANSION`].
pub fn combinations(e: &DeviceEntry) -> Result<Vec<Expansion<'_>>, usize> {
    let count = [
        e.hosts.as_ref().map_or(1, Vec::len),
        e.ports.as_ref().map_or(1, Vec::len),
        e.units.len(),
    ]
    .iter()
    .try_fold(1usize, |acc, n| acc.checked_mul(*n))
    .unwrap_or(usize::MAX);
    if count > MAX_EXPANSION {
        return Err(count);
    }
    let hosts: Vec<Option<&str>> = match &e.hosts {
        Some(h) => h.iter().map(|s| Some(s.as_str())).collect(),
        None => vec![None],
    };
    let ports: Vec<Option<u16>> = match &e.ports {
        Some(p) => p.iter().map(|x| Some(*x)).collect(),
        None => vec![None],
    };
    let mut out = Vec::new();
    for host in &hosts {
        for port in &ports {
            for unit in &e.units {
                out.push(Expansion {
                    unit: *unit,
                    port: *port,
                    host: *host,
                    index: out.len() + 1,
                });
            }
        }
    }
    Ok(out)
}

pub fn endpoint_for(pattern: &str, x: &Expansion<'_>) -> Result<Endpoint, String> {
    parse_endpoint(&fill(pattern, x)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_patterns() {
        let x = Expansion {
            unit: 7,
            port: Some(5107),
            host: Some("10.0.0.7"),
            index: 12,
        };
        assert_eq!(fill("pot-{unit:03}", &x).unwrap(), "pot-007");
        assert_eq!(fill("pot-{index}", &x).unwrap(), "pot-12");
        assert_eq!(
            fill("tcp://{host}:{port}", &x).unwrap(),
            "tcp://10.0.0.7:5107"
        );
        assert!(fill("pot-{unt}", &x).is_err());
        assert!(fill("pot-{unit", &x).is_err());
        assert!(fill("pot-{unit:3x}", &x).is_err());
        let y = Expansion {
            unit: 1,
            port: None,
            host: None,
            index: 1,
        };
        assert!(fill("tcp://h:{port}", &y)
            .unwrap_err()
            .contains("no `ports`"));
    }
}
