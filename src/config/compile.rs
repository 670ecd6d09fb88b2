//! The checked file compiled into the core [`Spec`], once per load, and the spec's problems
//! placed at their file, line and key. `alsentry check`, `alsentry run` and a reload all load
//! through here, so the engine is built only from what `check` accepted.
//!
//! A problem inside a template is placed at the template's own item (once, however many device
//! entries use it); a problem that only follows from something refused earlier (a tag whose
//! `type` was wrong, a rule that did not parse) is not reported again.

use std::collections::{BTreeMap, HashSet};

use super::reader::{join, Problems, Source};
use super::rule::{self, Rule, Selector};
use super::{selects, Device, EntryTable, TemplateParts};
use crate::core::alarm::AlarmSettings;
use crate::core::spec::{
    AlarmOptions, DerivedDraft, DerivedProblem, DeviceDraft, Draft, RuleDraft, RuleProblem, Spec,
    SpecError, TableDraft, TagDraft,
};

/// What the compile needs from the rest of the load.
pub(super) struct Input<'a> {
    pub sources: &'a [Source],
    pub area: &'a str,
    pub alarms: &'a AlarmOptions,
    pub devices: &'a [Device],
    /// Index into `tables` of each device's entry.
    pub device_table: &'a [usize],
    pub tables: &'a [EntryTable],
    pub templates: &'a BTreeMap<String, TemplateParts>,
    pub rules: &'a [Rule],
    /// Names of rules that did not parse.
    pub refused_rules: &'a HashSet<String>,
    /// Rules whose selector was refused (unknown template, tag not in the template).
    pub selector_refused: &'a HashSet<usize>,
}

/// The spec, or `None` with every problem added to `p`.
pub(super) fn compile(input: &Input<'_>, p: &mut Problems) -> Option<Spec> {
    match draft(input).compile() {
        Ok(spec) => Some(spec),
        Err(errors) => {
            place(input, &errors, p);
            None
        }
    }
}

fn draft(i: &Input<'_>) -> Draft {
    Draft {
        area: i.area.to_string(),
        alarms: i.alarms.clone(),
        tables: i
            .tables
            .iter()
            .map(|t| TableDraft {
                tags: t
                    .tags
                    .iter()
                    .map(|x| TagDraft {
                        name: x.name.clone(),
                        unit: x.unit.clone(),
                    })
                    .collect(),
                derived: t
                    .derived
                    .iter()
                    .map(|x| DerivedDraft {
                        name: x.name.clone(),
                        expr: x.expr.clone(),
                        unit: x.unit.clone(),
                    })
                    .collect(),
            })
            .collect(),
        devices: i
            .devices
            .iter()
            .zip(i.device_table)
            .map(|(d, &table)| DeviceDraft {
                name: d.name.clone(),
                poll_ms: d.poll_ms,
                table,
            })
            .collect(),
        rules: i
            .rules
            .iter()
            .map(|r| RuleDraft {
                name: r.name.clone(),
                tag: r.tag.clone(),
                kind: r.kind.clone(),
                alarm: AlarmSettings {
                    priority: r.priority,
                    on_delay_ms: r.on_delay_ms,
                    off_delay_ms: r.off_delay_ms,
                    latching: r.latching,
                },
                message: Some(r.message.clone()),
                scope: r.scope,
                suppress_when: r.suppress_when.clone(),
                hold_off: r.hold_off.iter().map(|(h, _)| h.clone()).collect(),
                devices: i
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| selects(&r.selector, d))
                    .map(|(k, _)| k as u32)
                    .collect(),
            })
            .collect(),
    }
}

/// Where a problem about one item of an entry's tag table goes: the template's item when the
/// item comes from the template, else the entry's `key` (as device-level problems always were).
struct TableSite<'a> {
    input: &'a Input<'a>,
    table: &'a EntryTable,
}

impl TableSite<'_> {
    fn template(&self) -> Option<&TemplateParts> {
        self.table
            .template
            .as_ref()
            .and_then(|t| self.input.templates.get(t))
    }

    fn entry(&self, p: &mut Problems, key: &str, message: String) {
        p.add(
            &self.input.sources[self.table.si],
            self.table.tags_offset,
            &join(&self.table.path, key),
            message,
        );
    }

    /// `index` counts tags, then derived tags.
    fn name(&self, p: &mut Problems, index: usize, message: String) {
        let tags = self.table.tags.len();
        let site = self.template().and_then(|t| {
            if index < tags {
                t.tag_sites.get(index)
            } else {
                t.derived_sites.get(index - tags)
            }
        });
        // A template's items come first in the table: a site found is the template's own.
        let from_template = self.template().is_some_and(|t| {
            index < t.template.tags.len()
                || (index >= tags && index - tags < t.template.derived.len())
        });
        match site.filter(|_| from_template) {
            Some((si, at)) => p.add(
                &self.input.sources[*si],
                at.name_offset,
                &join(&at.path, "name"),
                message,
            ),
            None => self.entry(p, "tags", message),
        }
    }

    fn derived(&self, p: &mut Problems, index: usize, message: String) {
        let site = self
            .template()
            .filter(|t| index < t.template.derived.len())
            .and_then(|t| t.derived_sites.get(index));
        match site {
            Some((si, at)) => p.add(
                &self.input.sources[*si],
                at.expr_offset,
                &join(&at.path, "expr"),
                message,
            ),
            None => self.entry(p, "derived", message),
        }
    }
}

fn place(i: &Input<'_>, errors: &[SpecError], p: &mut Problems) {
    // What the devices of each rule lack, gathered so that each is reported as often as it
    // always was: once per pattern, per extra tag, or per rule.
    let mut lacking: Vec<Vec<&RuleProblem>> = vec![Vec::new(); i.rules.len()];
    for e in errors {
        match e {
            SpecError::DuplicateTag { table, index, name } => {
                let site = TableSite {
                    input: i,
                    table: &i.tables[*table],
                };
                site.name(
                    p,
                    *index,
                    format!("duplicate tag name \"{name}\" (template and device tags share one namespace)"),
                );
            }
            SpecError::TooManyTags { table, count } => {
                let site = TableSite {
                    input: i,
                    table: &i.tables[*table],
                };
                site.entry(
                    p,
                    "tags",
                    format!("{count} tags; a device has at most {}", u16::MAX),
                );
            }
            SpecError::Derived {
                table,
                index,
                name,
                problem,
            } => {
                let t = &i.tables[*table];
                let message = match problem {
                    DerivedProblem::UnknownTag(v) if t.refused(v) => continue,
                    DerivedProblem::UnknownTag(v) => format!("derived tag \"{name}\" uses \"{v}\", which is not a tag of this device (or a derived tag defined before it)"),
                    DerivedProblem::Syntax(e) | DerivedProblem::Compile(e) => {
                        format!("derived tag \"{name}\": {e}")
                    }
                };
                TableSite { input: i, table: t }.derived(p, *index, message);
            }
            SpecError::Rule { rule, problem, .. } => {
                let r = &i.rules[*rule];
                let src = &i.sources[r.origin.0];
                match problem {
                    RuleProblem::Message(e) => {
                        p.add(src, r.message_offset, &join(&r.path, "message"), e.to_string())
                    }
                    RuleProblem::SuppressSyntax(e) => p.add(
                        src,
                        r.suppress_offset,
                        &join(&r.path, "suppress_when"),
                        format!("{e}; write an expression over the device's tags (e.g. \"current < 100\") or \"alarm:RULE\""),
                    ),
                    RuleProblem::SuppressCompile(e) => p.add(
                        src,
                        r.suppress_offset,
                        &join(&r.path, "suppress_when"),
                        e.to_string(),
                    ),
                    RuleProblem::Settings(e) => p.add(src, r.origin.1, &r.path, e.clone()),
                    RuleProblem::HoldSyntax { index, error }
                    | RuleProblem::HoldCompile { index, error } => p.add(
                        src,
                        r.hold_off.get(*index).map_or(r.origin.1, |h| h.1),
                        &format!("{}.hold_off[{index}].when", r.path),
                        format!("{error}; write an expression over the device's tags, e.g. \"tapping or anode_change\", or \"alarm:RULE\""),
                    ),
                    RuleProblem::HoldNoSuchRule { index, rule } => p.add(
                        src,
                        r.hold_off.get(*index).map_or(r.origin.1, |h| h.1),
                        &format!("{}.hold_off[{index}].when", r.path),
                        format!("no rule is named \"{rule}\"; \"alarm:RULE\" holds this rule off while the device's alarm of RULE is active"),
                    ),
                    RuleProblem::HoldsItself { index } => p.add(
                        src,
                        r.hold_off.get(*index).map_or(r.origin.1, |h| h.1),
                        &format!("{}.hold_off[{index}].when", r.path),
                        "a rule cannot hold itself off".to_string(),
                    ),
                    // Its devices were not checked against a selector that was refused.
                    _ if i.selector_refused.contains(rule) => {}
                    other => lacking[*rule].push(other),
                }
            }
            // The file cannot lead here (config refuses duplicate names first); placed anyway.
            SpecError::DuplicateDevice { device, .. } | SpecError::UnknownTable { device, .. } => {
                let (si, offset) = i.devices.get(*device).map_or((0, 0), |d| d.origin);
                p.add(&i.sources[si], offset, "devices", e.to_string());
            }
            SpecError::BuiltinMessage(_) => p.add(&i.sources[0], 0, "", e.to_string()),
        }
    }
    for (ri, problems) in lacking.iter().enumerate() {
        if !problems.is_empty() {
            place_rule(i, &i.rules[ri], problems, p);
        }
    }
}

/// What a rule's devices lack, reported as `check` always has: the first device lacking the
/// watched tag per pattern, the first lacking each extra tag, the first `suppress_when` tag
/// lacking, the first duplicate alarm. Tags refused where they are defined are not reported.
fn place_rule(i: &Input<'_>, r: &Rule, problems: &[&RuleProblem], p: &mut Problems) {
    let src = &i.sources[r.origin.0];
    let off = r.origin.1;
    let refused = |device: u32, tag: &str| {
        i.device_table
            .get(device as usize)
            .and_then(|&t| i.tables.get(t))
            .is_some_and(|t| t.refused(tag))
    };
    let name_of = |device: u32| {
        i.devices
            .get(device as usize)
            .map_or("", |d| d.name.as_str())
    };
    let mut extra_seen = HashSet::new();
    let (mut suppress_done, mut duplicate_done) = (false, false);
    for problem in problems {
        match problem {
            RuleProblem::NoSuchRule(n) if !i.refused_rules.contains(n) => p.add(
                src,
                off,
                &join(&r.path, "suppress_when"),
                format!("no rule is named \"{n}\""),
            ),
            RuleProblem::SuppressesItself => p.add(
                src,
                off,
                &join(&r.path, "suppress_when"),
                "a rule cannot suppress itself",
            ),
            RuleProblem::NoExtraTag { device, tag, .. }
                if !refused(*device, tag) && extra_seen.insert(tag.as_str()) =>
            {
                p.add(
                    src,
                    off,
                    &r.path,
                    format!(
                        "device \"{}\" has no tag \"{tag}\" (used by this {} rule)",
                        name_of(*device),
                        r.kind.type_name()
                    ),
                );
            }
            RuleProblem::SuppressNoTag { device, tag, .. }
                if !suppress_done && !refused(*device, tag) =>
            {
                suppress_done = true;
                p.add(
                    src,
                    off,
                    &join(&r.path, "suppress_when"),
                    format!("device \"{}\" has no tag \"{tag}\"", name_of(*device)),
                );
            }
            RuleProblem::HoldNoTag {
                index, device, tag, ..
            } if !refused(*device, tag) => p.add(
                src,
                r.hold_off.get(*index).map_or(off, |h| h.1),
                &format!("{}.hold_off[{index}].when", r.path),
                format!("device \"{}\" has no tag \"{tag}\"", name_of(*device)),
            ),
            RuleProblem::DuplicateAlarm { device, .. } if !duplicate_done => {
                duplicate_done = true;
                p.add(src, off, &join(&r.path, "name"), format!("rule name \"{}\" is used twice for device \"{}\"; one alarm per (device, rule)", r.name, name_of(*device)));
            }
            RuleProblem::UnknownDevice(d) => {
                p.add(src, off, &r.path, format!("no device #{d}"));
            }
            _ => {}
        }
    }
    // The watched tag: per pattern, the first device it matches that lacks it.
    let Selector::Devices(patterns) = &r.selector else {
        return;
    };
    let lacks: Vec<u32> = problems
        .iter()
        .filter_map(|x| match x {
            RuleProblem::NoTag { device, tag, .. } if !refused(*device, tag) => Some(*device),
            _ => None,
        })
        .collect();
    for pat in patterns {
        let Some(&d) = lacks.iter().find(|&&d| rule::glob_match(pat, name_of(d))) else {
            continue;
        };
        let Some(dev) = i.devices.get(d as usize) else {
            continue;
        };
        let known = dev
            .tags
            .iter()
            .map(|t| t.name.as_str())
            .chain(dev.derived.iter().map(|t| t.name.as_str()))
            .collect::<Vec<_>>();
        p.add(
            src,
            r.tag_offset,
            &join(&r.path, "tag"),
            format!(
                "device \"{}\" has no tag \"{}\"; its tags: {}",
                dev.name,
                r.tag,
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::core::engine::{Engine, SampleBatch};
    use crate::core::model::Quality;

    const FILE: &str = r#"
[agent]
id = "gw"
site = "s"
area = "potline-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[templates.cell]
tags = [
  { name = "voltage", table = "input", address = 0, type = "f32", unit = "V" },
  { name = "current", table = "input", address = 2, type = "f32", unit = "kA" },
]
derived = [ { name = "pseudo_r", expr = "(voltage - 1.65) / current * 1000", unit = "uOhm" } ]
[[devices]]
name = "pot-{unit:03}"
template = "cell"
endpoint = "tcp://127.0.0.1:5020"
units = "1-3"
[[devices]]
name = "rect"
endpoint = "tcp://127.0.0.1:5021"
tags = [ { name = "line_current", table = "input", address = 0, type = "f32", unit = "kA" } ]
[[rules]]
name = "r_high"
template = "cell"
tag = "pseudo_r"
type = "high"
limit = 6.0
suppress_when = "current < 100"
message = "{device}: R {value:.2} {unit}"
[[rules]]
name = "line_low"
devices = ["rect"]
tag = "line_current"
type = "low"
limit = 400
"#;

    #[test]
    fn a_loaded_file_is_the_spec_its_engine_runs() {
        let cfg = Config::from_str(Path::new("t.toml"), FILE).unwrap();
        let spec = &cfg.spec;
        assert_eq!(spec.area().as_ref(), "potline-1");
        assert_eq!(spec.devices().len(), 4);
        // The three cells of one entry share one tag table.
        assert!(std::sync::Arc::ptr_eq(
            &spec.devices()[0].tags,
            &spec.devices()[2].tags
        ));
        let r = spec.rule("r_high").unwrap();
        let devices: Vec<u32> = r.instances.iter().map(|i| i.device).collect();
        assert_eq!(devices, [0, 1, 2]);
        assert_eq!(
            r.bindings[r.instances[0].binding as usize].tag, 2,
            "pseudo_r follows the two raw tags"
        );
        assert_eq!(spec.rule("line_low").unwrap().instances[0].device, 3);

        let mut e = Engine::new(spec);
        let mut out = Vec::new();
        let batch = |device, v, i| SampleBatch {
            device,
            ts: 1_000,
            values: vec![(0, v, Quality::Good), (1, i, Quality::Good)],
        };
        e.on_batch(&batch(1, 4.0, 300.0), 1_000, &mut out);
        let ev: Vec<_> = out.iter().filter(|e| &*e.rule == "r_high").collect();
        assert_eq!(ev.len(), 1, "{out:?}");
        assert_eq!(ev[0].message, "pot-002: R 7.83 uOhm");
        out.clear();
        e.on_batch(&batch(2, 4.0, 50.0), 1_000, &mut out);
        assert!(
            out.iter()
                .filter(|e| &*e.rule == "r_high")
                .all(|e| e.transition.to == "suppressed"),
            "{out:?}"
        );
    }

    #[test]
    fn what_only_the_engine_refused_is_refused_at_load() {
        // Needs 17 evaluation slots: main's `check` accepted it and `run` failed to start.
        let deep = (0..17).fold("current".to_string(), |e, _| format!("current + ({e})"));
        let file = FILE.replace("current < 100", &format!("{deep} > 1"));
        let problems = Config::from_str(Path::new("t.toml"), &file)
            .unwrap_err()
            .problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "rules[0].suppress_when");
        assert_eq!(
            problems[0].message,
            "expression needs 17 evaluation slots; the limit is 16"
        );
    }
}
