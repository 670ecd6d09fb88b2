//! Operator message templates: parsed and validated once (at config load), rendered per alarm.
//!
//! Syntax: text with placeholders `{name}` or, for numeric ones, `{name:.N}` (N decimals, 0–9).
//! `{{` and `}}` are literal braces. Any other text, including non-ASCII (plants write messages
//! in Chinese), passes through untouched. Error offsets are character indices counted from 0.

use thiserror::Error;

use super::model::{Priority, Ts};

/// Largest precision accepted in `{value:.N}`.
pub const MAX_PRECISION: usize = 9;

/// Shown for a value that is not available (no limit, no ETA, ...).
pub const MISSING: &str = "—";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{name}}} at char {offset}; allowed: device, tag, rule, unit, value, limit, eta, priority, state")]
    UnknownPlaceholder { name: String, offset: usize },
    #[error("empty placeholder {{}} at char {offset}; write {{{{ for a literal brace")]
    EmptyPlaceholder { offset: usize },
    #[error("unclosed '{{' at char {offset}; write {{{{ for a literal brace")]
    Unclosed { offset: usize },
    #[error("unmatched '}}' at char {offset}; write }}}} for a literal brace")]
    UnmatchedClose { offset: usize },
    #[error("invalid format '{spec}' in {{{name}}} at char {offset}; expected ':.N' with N from 0 to 9, e.g. {{{name}:.2}}")]
    BadFormat {
        name: String,
        spec: String,
        offset: usize,
    },
    #[error("placeholder {{{name}}} at char {offset} is not numeric; a precision applies only to value and limit")]
    NotNumeric { name: String, offset: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Device,
    Tag,
    Rule,
    Unit,
    Value,
    Limit,
    Eta,
    Priority,
    State,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "device" => Field::Device,
            "tag" => Field::Tag,
            "rule" => Field::Rule,
            "unit" => Field::Unit,
            "value" => Field::Value,
            "limit" => Field::Limit,
            "eta" => Field::Eta,
            "priority" => Field::Priority,
            "state" => Field::State,
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Field::Device => "device",
            Field::Tag => "tag",
            Field::Rule => "rule",
            Field::Unit => "unit",
            Field::Value => "value",
            Field::Limit => "limit",
            Field::Eta => "eta",
            Field::Priority => "priority",
            Field::State => "state",
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Field::Value | Field::Limit)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Field {
        field: Field,
        precision: Option<usize>,
    },
}

/// What a template is rendered with. Missing numbers and ETA render as [`MISSING`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MessageContext<'a> {
    pub device: &'a str,
    pub tag: &'a str,
    pub rule: &'a str,
    pub unit: &'a str,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    /// Time until the limit is expected to be reached, in ms.
    pub eta_ms: Option<Ts>,
    pub priority: Option<Priority>,
    /// Published alarm state, e.g. "active_unacked".
    pub state: &'a str,
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl MessageTemplate {
    pub fn parse(source: &str) -> Result<MessageTemplate, TemplateError> {
        let mut segments = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().enumerate().peekable();
        while let Some((offset, c)) = chars.next() {
            match c {
                '{' if chars.next_if(|&(_, next)| next == '{').is_some() => text.push('{'),
                '}' if chars.next_if(|&(_, next)| next == '}').is_some() => text.push('}'),
                '}' => return Err(TemplateError::UnmatchedClose { offset }),
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            None | Some((_, '{')) => {
                                return Err(TemplateError::Unclosed { offset })
                            }
                            Some((_, ch)) => inner.push(ch),
                        }
                    }
                    if !text.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut text)));
                    }
                    segments.push(parse_placeholder(&inner, offset)?);
                }
                other => text.push(other),
            }
        }
        if !text.is_empty() {
            segments.push(Segment::Text(text));
        }
        Ok(MessageTemplate {
            source: source.to_string(),
            segments,
        })
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template uses placeholder `name` (e.g. to warn that `{eta}` has no source).
    pub fn uses(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|segment| matches!(segment, Segment::Field { field, .. } if field.name() == name))
    }

    pub fn render(&self, ctx: &MessageContext<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Field { field, precision } => match field {
                    Field::Device => out.push_str(ctx.device),
                    Field::Tag => out.push_str(ctx.tag),
                    Field::Rule => out.push_str(ctx.rule),
                    Field::Unit => out.push_str(ctx.unit),
                    Field::State => out.push_str(ctx.state),
                    Field::Value => push_number(&mut out, ctx.value, *precision),
                    Field::Limit => push_number(&mut out, ctx.limit, *precision),
                    Field::Eta => out.push_str(&format_eta(ctx.eta_ms)),
                    Field::Priority => out.push_str(ctx.priority.map_or(MISSING, |p| p.as_str())),
                },
            }
        }
        out
    }
}

fn parse_placeholder(inner: &str, offset: usize) -> Result<Segment, TemplateError> {
    let (name, spec) = match inner.split_once(':') {
        Some((name, spec)) => (name, Some(spec)),
        None => (inner, None),
    };
    if name.is_empty() {
        return Err(TemplateError::EmptyPlaceholder { offset });
    }
    let field = Field::parse(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
        name: name.to_string(),
        offset,
    })?;
    let precision = match spec {
        None => None,
        Some(_) if !field.is_numeric() => {
            return Err(TemplateError::NotNumeric {
                name: name.to_string(),
                offset,
            })
        }
        Some(spec) => Some(
            parse_precision(spec).ok_or_else(|| TemplateError::BadFormat {
                name: name.to_string(),
                spec: spec.to_string(),
                offset,
            })?,
        ),
    };
    Ok(Segment::Field { field, precision })
}

/// `.N` with N a small decimal number.
fn parse_precision(spec: &str) -> Option<usize> {
    let digits = spec.strip_prefix('.')?;
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<usize>().ok().filter(|&n| n <= MAX_PRECISION)
}

fn push_number(out: &mut String, value: Option<f64>, precision: Option<usize>) {
    match value {
        Some(v) => out.push_str(&format_number(v, precision)),
        None => out.push_str(MISSING),
    }
}

/// `precision` decimals, or by default up to 3 decimals without trailing zeros.
/// Never prints a negative zero.
pub fn format_number(value: f64, precision: Option<usize>) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let mut text = match precision {
        Some(decimals) => format!("{value:.decimals$}"),
        None => {
            let mut text = format!("{value:.3}");
            if text.contains('.') {
                let trimmed = text.trim_end_matches('0').trim_end_matches('.').len();
                text.truncate(trimmed);
            }
            text
        }
    };
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text.remove(0);
    }
    text
}

/// Human duration like "45 s", "4 min 10 s", "2 h 5 min", "3 d 4 h"; [`MISSING`] when absent
/// or negative. Rounded down to the unit shown.
pub fn format_eta(eta_ms: Option<Ts>) -> String {
    let Some(ms) = eta_ms.filter(|&ms| ms >= 0) else {
        return MISSING.to_string();
    };
    let secs = ms / 1000;
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let pair = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big} {big_unit}")
        } else {
            format!("{big} {big_unit} {small} {small_unit}")
        }
    };
    if days > 0 {
        pair(days, "d", hours, "h")
    } else if hours > 0 {
        pair(hours, "h", mins, "min")
    } else if mins > 0 {
        pair(mins, "min", s, "s")
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MessageContext<'static> {
        MessageContext {
            device: "pot117",
            tag: "cell_voltage",
            rule: "anode_effect",
            unit: "V",
            value: Some(8.256),
            limit: Some(7.5),
            eta_ms: Some(250_000),
            priority: Some(Priority::High),
            state: "active_unacked",
        }
    }

    fn render(template: &str) -> String {
        MessageTemplate::parse(template).unwrap().render(&ctx())
    }

    #[test]
    fn renders_every_placeholder() {
        assert_eq!(
            render("{device}/{tag} {rule}: {value} {unit} > {limit} {unit}, eta {eta} [{priority}, {state}]"),
            "pot117/cell_voltage anode_effect: 8.256 V > 7.5 V, eta 4 min 10 s [high, active_unacked]"
        );
    }

    #[test]
    fn chinese_text_passes_through() {
        assert_eq!(
            render("电解槽 {device} 阳极效应: {value:.1} V（限值 {limit:.2}）"),
            "电解槽 pot117 阳极效应: 8.3 V（限值 7.50）"
        );
    }

    #[test]
    fn precision_and_default_number_format() {
        assert_eq!(render("{value:.0}|{value:.2}|{limit:.1}"), "8|8.26|7.5");
        assert_eq!(format_number(7.5, None), "7.5");
        assert_eq!(format_number(960.0, None), "960");
        assert_eq!(format_number(0.12345, None), "0.123");
        assert_eq!(format_number(1.0006, None), "1.001");
        assert_eq!(format_number(-0.0001, None), "0");
        assert_eq!(format_number(-0.001, Some(1)), "0.0");
        assert_eq!(format_number(-2.5, None), "-2.5");
        assert_eq!(format_number(1200.0, Some(2)), "1200.00");
        assert_eq!(format_number(f64::NAN, None), "NaN");
    }

    #[test]
    fn literal_braces() {
        assert_eq!(render("{{device}} = {{{device}}}"), "{device} = {pot117}");
        assert_eq!(render("}}{{"), "}{");
    }

    #[test]
    fn missing_values_render_as_dash() {
        let template = MessageTemplate::parse("{value} {limit:.1} {eta} {priority}").unwrap();
        assert_eq!(template.render(&MessageContext::default()), "— — — —");
    }

    #[test]
    fn eta_formatting() {
        assert_eq!(format_eta(None), "—");
        assert_eq!(format_eta(Some(-1)), "—");
        assert_eq!(format_eta(Some(999)), "0 s");
        assert_eq!(format_eta(Some(45_000)), "45 s");
        assert_eq!(format_eta(Some(240_000)), "4 min");
        assert_eq!(format_eta(Some(250_999)), "4 min 10 s");
        assert_eq!(format_eta(Some(7_500_000)), "2 h 5 min");
        assert_eq!(
            format_eta(Some(3 * 86_400_000 + 4 * 3_600_000 + 59_000)),
            "3 d 4 h"
        );
        assert_eq!(format_eta(Some(86_400_000)), "1 d");
    }

    #[test]
    fn unknown_placeholder_reports_name_and_char_offset() {
        // Offsets count characters, not bytes: the Chinese prefix is 4 chars, 12 bytes.
        let err = MessageTemplate::parse("电解槽 {cell} {value}").unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownPlaceholder {
                name: "cell".into(),
                offset: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown placeholder {cell} at char 4; allowed: device, tag, rule, unit, value, limit, eta, priority, state"
        );
    }

    #[test]
    fn malformed_templates_are_rejected() {
        let parse = |s: &str| MessageTemplate::parse(s).unwrap_err();
        assert_eq!(parse("ab {value"), TemplateError::Unclosed { offset: 3 });
        assert_eq!(parse("{value {x}"), TemplateError::Unclosed { offset: 0 });
        assert_eq!(parse("a } b"), TemplateError::UnmatchedClose { offset: 2 });
        assert_eq!(parse("x{}"), TemplateError::EmptyPlaceholder { offset: 1 });
        assert_eq!(
            parse("{value:2}"),
            TemplateError::BadFormat {
                name: "value".into(),
                spec: "2".into(),
                offset: 0
            }
        );
        assert!(matches!(
            parse("{limit:.}"),
            TemplateError::BadFormat { .. }
        ));
        assert!(matches!(
            parse("{limit:.10}"),
            TemplateError::BadFormat { .. }
        ));
        assert!(matches!(
            parse("{limit:.-1}"),
            TemplateError::BadFormat { .. }
        ));
        assert_eq!(
            parse("{device:.2}"),
            TemplateError::NotNumeric {
                name: "device".into(),
                offset: 0
            }
        );
        assert_eq!(
            parse("{ value }"),
            TemplateError::UnknownPlaceholder {
                name: " value ".into(),
                offset: 0
            }
        );
        assert_eq!(
            parse("{value:.2x}").to_string(),
            "invalid format '.2x' in {value} at char 0; expected ':.N' with N from 0 to 9, e.g. {value:.2}"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_plain_text_round_trips(source in "\\PC*") {
            let parsed = MessageTemplate::parse(&source);
            if !source.contains(['{', '}']) {
                proptest::prop_assert_eq!(parsed.map(|t| t.render(&ctx())), Ok(source));
            }
        }

        #[test]
        fn numbers_never_panic(value in proptest::num::f64::ANY, precision in proptest::option::of(0usize..=9)) {
            let text = format_number(value, precision);
            proptest::prop_assert!(!text.is_empty());
        }
    }

    #[test]
    fn template_reports_its_source_and_placeholders() {
        let template = MessageTemplate::parse("{device}: {value:.1}").unwrap();
        assert_eq!(template.source(), "{device}: {value:.1}");
        assert!(template.uses("value") && template.uses("device"));
        assert!(!template.uses("eta"));
        assert_eq!(MessageTemplate::parse("").unwrap().render(&ctx()), "");
    }
}
