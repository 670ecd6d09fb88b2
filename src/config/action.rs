//! `[[actions]]` and `[disposal]`: what the agent may write to plant equipment, and when
//! (docs/DISPOSAL.md). Read after the devices and rules, so that every name, write target,
//! bound and interlock is checked against them and reported as `FILE:LINE:COL: key: message`.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{f64_of, index, type_name, Problems, Source, TableReader};
use super::{selects, Device, Rule};
use crate::core::action::{
    encode, ActionSpec, Formula, Kill, Mode, ReadBack, Target, Trigger, Value, ALARM_PREFIX,
};
use crate::core::decode::{DataType, Table};
use crate::core::rule::BUILTIN_RULES;

/// `[disposal]`: the kill switches as configured (a command can change them at run time).
pub fn parse_disposal(v: &Spanned<DeValue<'_>>, src: &Source, p: &mut Problems) -> Kill {
    let mut k = Kill::default();
    let Some(mut r) = TableReader::of(v, src, "disposal".into(), p) else {
        return k;
    };
    k.all = r.opt_bool(p, "kill").unwrap_or(false);
    if let Some(areas) = r.opt_str_list(p, "killed_areas") {
        k.areas = areas.into_iter().collect();
    }
    r.finish(p);
    k
}

/// What the actions are checked against.
pub struct Context<'c> {
    pub devices: &'c [Device],
    pub rules: &'c [Rule],
    pub area: &'c str,
}

/// Reads one `[[actions]]` array of one file.
pub fn parse_actions(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    cx: &Context<'_>,
    p: &mut Problems,
) -> Vec<ActionSpec> {
    let DeValue::Array(items) = v.get_ref() else {
        p.add(
            src,
            v.span().start,
            "actions",
            format!(
                "expected an array of tables ([[actions]]), found {}",
                type_name(v.get_ref())
            ),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| parse_action(item, src, index("actions", i), cx, p))
        .collect()
}

fn duration(r: &mut TableReader<'_, '_>, p: &mut Problems, key: &'static str, def: i64) -> i64 {
    match r.opt_duration_ms(p, key) {
        Some(ms) if ms < 0 => {
            r.problem(p, key, "must not be negative");
            def
        }
        Some(ms) => ms,
        None => def,
    }
}

fn parse_action(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    cx: &Context<'_>,
    p: &mut Problems,
) -> Option<ActionSpec> {
    let mut r = TableReader::of(v, src, path.clone(), p)?;
    let before = p.list.len();
    let name = r.req_str(p, "name", "an action name (e.g. \"extra_feed\")");
    if let Some(n) = &name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(
                p,
                "name",
                "an action name may contain only letters, digits, '_' and '-'",
            );
        }
    }
    let rule = r.req_str(p, "rule", "the rule whose alarm triggers the action");
    let on = match r.opt_str(p, "on").as_deref() {
        None => Some(Trigger::Activation),
        Some(s) => Trigger::parse(s).or_else(|| {
            r.problem(
                p,
                "on",
                format!("unknown trigger \"{s}\"; accepted: activation, return"),
            );
            None
        }),
    };
    let enabled = r.opt_bool(p, "enabled").unwrap_or(false);
    let mode = match r.opt_str(p, "mode").as_deref() {
        None => Some(Mode::DryRun),
        Some(s) => Mode::parse(s).or_else(|| {
            r.problem(
                p,
                "mode",
                format!("unknown mode \"{s}\"; accepted: {}", Mode::NAMES),
            );
            None
        }),
    };
    let area = r.opt_str(p, "area").unwrap_or_else(|| cx.area.to_string());

    // The devices: those of the rule (every rule of that name).
    let mut devices: Vec<(u32, String)> = Vec::new();
    if let Some(rn) = &rule {
        let of_rule: Vec<&Rule> = cx.rules.iter().filter(|x| &x.name == rn).collect();
        if of_rule.is_empty() {
            let known: Vec<&str> = cx.rules.iter().map(|x| x.name.as_str()).collect();
            r.problem(
                p,
                "rule",
                format!(
                    "unknown rule \"{rn}\"; configured: {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        for (i, d) in cx.devices.iter().enumerate() {
            if of_rule.iter().any(|x| selects(&x.selector, d)) {
                devices.push((i as u32, d.name.clone()));
            }
        }
    }
    let on_devices: Vec<&Device> = devices
        .iter()
        .filter_map(|(i, _)| cx.devices.get(*i as usize))
        .collect();

    let target = match r.get("target") {
        None => {
            r.missing(
                p,
                "target",
                "the tag to write: a tag name of the devices' register map (e.g. \"feed_request\"), or { name, table, address, type, ... }",
            );
            None
        }
        Some(t) => target(t, src, &r.key_path("target"), &on_devices, p),
    };

    let value = match r.get("value") {
        None => {
            r.missing(p, "value", "the value to write: a number, or an expression over the device's tags such as \"draft_setpoint - 5\"");
            None
        }
        Some(x) => match x.get_ref() {
            DeValue::String(s) => formula(
                s,
                src,
                x.span().start,
                &r.key_path("value"),
                cx,
                &on_devices,
                p,
            )
            .map(Value::Formula),
            DeValue::Boolean(b) => Some(Value::Const(f64::from(u8::from(*b)))),
            other => match f64_of(other) {
                Some(f) => Some(Value::Const(f)),
                None => {
                    r.problem(
                        p,
                        "value",
                        format!(
                            "expected a number or an expression string, found {}",
                            type_name(other)
                        ),
                    );
                    None
                }
            },
        },
    };
    let min = r.opt_f64(p, "min");
    let max = r.opt_f64(p, "max");
    let (min, max) = match (min, max) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            if !r.has("min") {
                r.missing(
                    p,
                    "min",
                    "the lowest value the action may write (bounds are required)",
                );
            }
            if !r.has("max") {
                r.missing(
                    p,
                    "max",
                    "the highest value the action may write (bounds are required)",
                );
            }
            (f64::NAN, f64::NAN)
        }
    };
    if min > max {
        r.problem(p, "max", format!("max {max} is below min {min}"));
    }
    if let (Some(Value::Const(c)), true) = (&value, min <= max) {
        if !(*c >= min && *c <= max) {
            r.problem(
                p,
                "value",
                format!("{c} is outside the bounds [{min}, {max}]"),
            );
        }
    }
    if let Some(t) = &target {
        for (key, b) in [("min", min), ("max", max)] {
            if b.is_finite() {
                if let Err(e) = encode(&t.encoding, b) {
                    r.problem(p, key, format!("cannot be written to \"{}\": {e}", t.name));
                }
            }
        }
    }

    let mut interlocks = Vec::new();
    if let Some(list) = r.get("interlocks") {
        match list.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ipath = index(&r.key_path("interlocks"), i);
                    match item.get_ref() {
                        DeValue::String(s) => {
                            if let Some(f) =
                                formula(s, src, item.span().start, &ipath, cx, &on_devices, p)
                            {
                                interlocks.push(f);
                            }
                        }
                        other => p.add(
                            src,
                            item.span().start,
                            &ipath,
                            format!("expected an expression string, found {}", type_name(other)),
                        ),
                    }
                }
            }
            other => p.add(
                src,
                list.span().start,
                &r.key_path("interlocks"),
                format!(
                    "expected an array of expression strings, found {}",
                    type_name(other)
                ),
            ),
        }
    }
    let confirm_within_ms = duration(&mut r, p, "confirm_within", 120_000);
    if confirm_within_ms == 0 {
        r.problem(p, "confirm_within", "must be longer than 0");
    }
    let cooldown_ms = duration(&mut r, p, "cooldown", 300_000);
    let max_per_hour = match r.opt_int(p, "max_per_hour") {
        None => 6,
        Some(n) if (0..=3600).contains(&n) => n as u32,
        Some(_) => {
            r.problem(p, "max_per_hour", "must be between 0 (no limit) and 3600");
            6
        }
    };
    let mut read_back = ReadBack {
        attempts: 3,
        delay_ms: 500,
    };
    if let Some(rb) = r.get("read_back") {
        if let Some(mut rr) = TableReader::of(rb, src, r.key_path("read_back"), p) {
            match rr.opt_int(p, "attempts") {
                Some(n) if (1..=10).contains(&n) => read_back.attempts = n as u32,
                Some(_) => rr.problem(p, "attempts", "must be between 1 and 10"),
                None => {}
            }
            match rr.opt_duration_ms(p, "delay") {
                Some(ms) if (0..=60_000).contains(&ms) => read_back.delay_ms = ms,
                Some(_) => rr.problem(p, "delay", "must be between 0 and 60s"),
                None => {}
            }
            rr.finish(p);
        }
    }
    r.finish(p);
    if p.list.len() > before {
        return None;
    }
    Some(ActionSpec {
        name: name?,
        rule: rule?,
        on: on?,
        enabled,
        mode: mode?,
        area,
        devices,
        target: target?,
        value: value?,
        min,
        max,
        interlocks,
        confirm_within_ms,
        cooldown_ms,
        max_per_hour,
        read_back,
    })
}

/// The write target: a tag of every device of the rule (the same register on each), or one
/// given inline; a coil, or holding registers that are not one bit.
fn target(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: &str,
    devices: &[&Device],
    p: &mut Problems,
) -> Option<Target> {
    let at = v.span().start;
    let t = match v.get_ref() {
        DeValue::String(name) => {
            let mut found: Option<Target> = None;
            for d in devices {
                let Some(tag) = d.tags.iter().find(|t| t.name == **name) else {
                    let known: Vec<&str> = d.tags.iter().map(|t| t.name.as_str()).collect();
                    p.add(
                        src,
                        at,
                        path,
                        format!(
                            "device \"{}\" has no tag \"{name}\"; its tags: {}",
                            d.name,
                            known.join(", ")
                        ),
                    );
                    return None;
                };
                let this = Target {
                    name: tag.name.clone(),
                    address: tag.address,
                    encoding: tag.encoding,
                };
                match &found {
                    Some(f) if *f != this => {
                        p.add(src, at, path, format!("tag \"{name}\" is not the same register on every device of the rule (\"{}\" differs); give the target inline", d.name));
                        return None;
                    }
                    Some(_) => {}
                    None => found = Some(this),
                }
            }
            match found {
                Some(f) => f,
                None => {
                    // No device to look in (the rule matched none, reported there).
                    return None;
                }
            }
        }
        DeValue::Table(_) => {
            let tag = super::tag::parse_tag(v, src, path.to_string(), p)?;
            Target {
                name: tag.name,
                address: tag.address,
                encoding: tag.encoding,
            }
        }
        other => {
            p.add(
                src,
                at,
                path,
                format!("expected a tag name or a table, found {}", type_name(other)),
            );
            return None;
        }
    };
    let e = &t.encoding;
    let problem = match e.table {
        Table::Input | Table::Discrete => Some(format!(
            "\"{}\" is in the {} table, which cannot be written; a target is a coil (FC 05) or holding registers (FC 06/16)",
            t.name, e.table
        )),
        Table::Holding if e.bit.is_some() || e.dtype == DataType::Bool => Some(format!(
            "\"{}\" is one bit of a holding register; writing one bit is not supported (use a coil or a whole register)",
            t.name
        )),
        _ => None,
    };
    if let Some(m) = problem {
        p.add(src, at, path, m);
        return None;
    }
    Some(t)
}

/// An expression over the tags of every device of the rule and `alarm_<rule>` states.
fn formula(
    s: &str,
    src: &Source,
    at: usize,
    path: &str,
    cx: &Context<'_>,
    devices: &[&Device],
    p: &mut Problems,
) -> Option<Formula> {
    let f = match Formula::parse(s) {
        Ok(f) => f,
        Err(e) => {
            p.add(src, at, path, format!("\"{s}\": {e}"));
            return None;
        }
    };
    for var in f.variables() {
        if let Some(rule) = var.strip_prefix(ALARM_PREFIX) {
            if cx.rules.iter().any(|r| r.name == rule) || BUILTIN_RULES.contains(&rule) {
                continue;
            }
        }
        let missing = devices.iter().find(|d| {
            !d.tags.iter().any(|t| t.name == *var) && !d.derived.iter().any(|t| t.name == *var)
        });
        if let Some(d) = missing {
            p.add(
                src,
                at,
                path,
                format!(
                    "\"{s}\": unknown variable \"{var}\": not a tag of device \"{}\", nor {ALARM_PREFIX}RULE of a configured rule",
                    d.name
                ),
            );
            return None;
        }
    }
    Some(f)
}
