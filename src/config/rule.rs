//! `[[rules]]`: which devices a rule applies to, which tag it watches, and how.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{Problems, Source, TableReader};
use crate::core::model::Priority;

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// Every device built from this template.
    Template(String),
    /// Device names or glob patterns (`*`, `?`).
    Devices(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// Active while value > limit; clears at value < limit - deadband.
    High { limit: f64, deadband: f64 },
    /// Active while value < limit; clears at value > limit + deadband.
    Low { limit: f64, deadband: f64 },
}

impl RuleKind {
    pub const NAMES: &'static str = "high, low";

    pub fn type_name(&self) -> &'static str {
        match self {
            RuleKind::High { .. } => "high",
            RuleKind::Low { .. } => "low",
        }
    }

    pub fn limit(&self) -> Option<f64> {
        match self {
            RuleKind::High { limit, .. } | RuleKind::Low { limit, .. } => Some(*limit),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub selector: Selector,
    pub tag: String,
    pub kind: RuleKind,
    pub priority: Priority,
    pub on_delay_ms: i64,
    pub off_delay_ms: i64,
    pub latching: bool,
    pub message: String,
    /// Where the rule was written: (source index, byte offset).
    pub origin: (usize, usize),
    /// Offsets of `tag` and of the selector (`template` or `devices`).
    pub tag_offset: usize,
    pub selector_offset: usize,
    pub path: String,
}

/// Keys specific to one rule type or another.
const KIND_KEYS: [&str; 2] = ["limit", "deadband"];

pub fn parse_rule(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    src_idx: usize,
    path: String,
    p: &mut Problems,
) -> Option<Rule> {
    let mut r = TableReader::of(v, src, path.clone(), p)?;
    let name = r.req_str(
        p,
        "name",
        "a rule name, used in topics (e.g. \"anode_effect\")",
    );
    if let Some(n) = &name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(p, "name", "a rule name may contain only letters, digits, '_' and '-' (it becomes part of an MQTT topic)");
        }
    }
    let template = r.opt_str(p, "template");
    let devices = r.opt_str_list(p, "devices");
    let selector = match (template, devices) {
        (Some(t), None) => Some(Selector::Template(t)),
        (None, Some(d)) => Some(Selector::Devices(d)),
        (Some(_), Some(_)) => {
            r.problem(
                p,
                "devices",
                "give either `template` or `devices`, not both",
            );
            None
        }
        (None, None) => {
            r.missing(p, "template", "a rule selects its devices with `template = \"cell\"` or `devices = [\"kiln-1\", \"pot-0*\"]`");
            None
        }
    };
    let tag = r.req_str(p, "tag", "the tag this rule watches");
    let kind_name = r.req_str(p, "type", &format!("one of {}", RuleKind::NAMES));
    let kind = match kind_name.as_deref() {
        Some("high") | Some("low") => {
            let limit = r.opt_f64(p, "limit");
            if limit.is_none() && !r.has("limit") {
                r.missing(p, "limit", "the alarm limit, in the tag's unit");
            }
            let deadband = r.opt_f64(p, "deadband").unwrap_or(0.0);
            if deadband < 0.0 {
                r.problem(p, "deadband", "deadband must be 0 or positive");
            }
            limit.map(|limit| {
                if kind_name.as_deref() == Some("high") {
                    RuleKind::High { limit, deadband }
                } else {
                    RuleKind::Low { limit, deadband }
                }
            })
        }
        Some(other) => {
            r.problem(
                p,
                "type",
                format!(
                    "unknown rule type \"{other}\"; accepted: {}",
                    RuleKind::NAMES
                ),
            );
            // The other keys belong to a type we do not know: do not call them unknown too.
            for k in KIND_KEYS {
                r.get(k);
            }
            None
        }
        None => None,
    };
    let priority = match r.opt_str(p, "priority") {
        Some(s) => match Priority::parse(&s) {
            Some(pr) => Some(pr),
            None => {
                r.problem(
                    p,
                    "priority",
                    format!("unknown priority \"{s}\"; accepted: critical, high, medium, low"),
                );
                None
            }
        },
        None => Some(Priority::Medium),
    };
    let on_delay_ms = r.opt_duration_ms(p, "on_delay").unwrap_or(0);
    let off_delay_ms = r.opt_duration_ms(p, "off_delay").unwrap_or(0);
    let latching = r.opt_bool(p, "latching").unwrap_or(false);
    let message = r.opt_str(p, "message");
    let tag_offset = r.value_offset("tag");
    let selector_offset = if r.has("devices") {
        r.value_offset("devices")
    } else {
        r.value_offset("template")
    };
    if let Some(m) = &message {
        if let Err(e) = crate::core::message::MessageTemplate::parse(m) {
            r.problem(p, "message", e.to_string());
        }
    }
    r.finish(p);
    let kind = kind?;
    let default_message = match &kind {
        RuleKind::High { .. } => "{rule} on {device}: {tag} {value} {unit} above {limit}",
        RuleKind::Low { .. } => "{rule} on {device}: {tag} {value} {unit} below {limit}",
    };
    Some(Rule {
        name: name?,
        selector: selector?,
        tag: tag?,
        kind,
        priority: priority?,
        on_delay_ms,
        off_delay_ms,
        latching,
        message: message.unwrap_or_else(|| default_message.to_string()),
        origin: (src_idx, v.span().start),
        tag_offset,
        selector_offset,
        path,
    })
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("pot-0*", "pot-017"));
        assert!(glob_match("kiln-1", "kiln-1"));
        assert!(!glob_match("kiln-1", "kiln-10"));
        assert!(glob_match("pot-?1?", "pot-013"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("pot-1*", "pot-017"));
    }
}
