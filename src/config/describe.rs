//! What a configuration holds, in a few lines: printed by `alsentry check` and logged by
//! `alsentry run` at start.

use std::fmt::Write;

use super::Config;

/// A few lines naming what the configuration holds.
pub fn summary(cfg: &Config) -> String {
    let tags: usize = cfg
        .devices
        .iter()
        .map(|d| d.tags.len() + d.derived.len())
        .sum();
    let links: std::collections::BTreeSet<String> =
        cfg.devices.iter().map(|d| d.endpoint.link_key()).collect();
    let instances: usize = cfg.rules.iter().map(|r| cfg.rule_devices(r).count()).sum();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "agent {} at {}/{}; config {} (hash {})",
        cfg.agent.id,
        cfg.agent.site,
        cfg.agent.area,
        cfg.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.hash
    );
    let _ = writeln!(
        s,
        "{} devices on {} links, {} tags",
        cfg.devices.len(),
        links.len(),
        tags
    );
    let _ = writeln!(
        s,
        "{} rules, {} alarm instances",
        cfg.rules.len(),
        instances
    );
    // Writes to plant equipment: say plainly whether anything can be written.
    if !cfg.actions.is_empty() {
        let enabled: Vec<String> = cfg
            .actions
            .iter()
            .filter(|a| a.enabled)
            .map(|a| format!("{} ({})", a.name, a.mode.as_str()))
            .collect();
        let kill = if cfg.disposal.all {
            "; kill switch ON: nothing is written"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{} actions, enabled: {}{kill}",
            cfg.actions.len(),
            if enabled.is_empty() {
                "none (nothing is written)".to_string()
            } else {
                enabled.join(", ")
            }
        );
    }
    for sink in &cfg.sinks {
        let _ = writeln!(
            s,
            "sink {}: {} topic root {}",
            sink.name, sink.url, sink.topic_root
        );
    }
    s
}

/// Why the summary KPIs (pseudo-resistance, energy against the benchmark) would be missing or
/// wrong for a cell: they are computed from the tags `voltage` in V and `current` in kA
/// ([`crate::core::payload::KPI_VOLTAGE`], [`crate::core::payload::KPI_CURRENT`]). A device is
/// taken for a cell when it has one of those tags or its name or template says cell or pot.
/// Warnings only: the configuration is valid either way. One line per template (or device).
pub fn kpi_warnings(cfg: &Config) -> Vec<String> {
    use crate::core::payload::{KPI_CURRENT, KPI_VOLTAGE};
    if cfg.summary.interval_ms == 0 {
        return Vec::new();
    }
    // (what the devices share, its problems) -> device names
    let mut found: Vec<(String, Vec<String>, Vec<&str>)> = Vec::new();
    for d in &cfg.devices {
        let unit_of = |name: &str| {
            d.tags
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.unit.as_str())
                .or_else(|| {
                    d.derived
                        .iter()
                        .find(|t| t.name == name)
                        .map(|t| t.unit.as_str())
                })
        };
        let (v, i) = (unit_of(KPI_VOLTAGE.0), unit_of(KPI_CURRENT.0));
        let named = |s: &str| {
            let s = s.to_ascii_lowercase();
            s.contains("cell") || s.contains("pot")
        };
        let cell = v.is_some()
            || i.is_some()
            || named(&d.name)
            || d.template.as_deref().is_some_and(named);
        if !cell {
            continue;
        }
        let mut problems = Vec::new();
        for ((name, want), got) in [(KPI_VOLTAGE, v), (KPI_CURRENT, i)] {
            match got {
                None => problems.push(format!("no tag \"{name}\"")),
                Some(u) if u != want => {
                    problems.push(format!("\"{name}\" is in \"{u}\", not \"{want}\""))
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            continue;
        }
        let owner = match &d.template {
            Some(t) => format!("template \"{t}\""),
            None => format!("device \"{}\"", d.name),
        };
        match found
            .iter_mut()
            .find(|(o, p, _)| *o == owner && *p == problems)
        {
            Some((_, _, names)) => names.push(&d.name),
            None => found.push((owner, problems, vec![&d.name])),
        }
    }
    found
        .into_iter()
        .map(|(owner, problems, names)| {
            let devices = match names.len() {
                1 => names[0].to_string(),
                n => format!("{} and {} more", names[0], n - 1),
            };
            format!(
                "{owner} ({devices}): {}; the summary KPIs of a cell need \"{}\" in {} and \"{}\" in {}, so its summaries carry {}",
                problems.join(", "),
                KPI_VOLTAGE.0,
                KPI_VOLTAGE.1,
                KPI_CURRENT.0,
                KPI_CURRENT.1,
                if problems.iter().any(|p| p.starts_with("no tag")) {
                    "no kpi block"
                } else {
                    "KPIs computed in the wrong units"
                }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(devices: &str) -> Vec<String> {
        let text = format!(
            "[agent]\nid = \"gw\"\nsite = \"s\"\narea = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n{devices}"
        );
        let cfg = Config::from_str(std::path::Path::new("t.toml"), &text).unwrap();
        kpi_warnings(&cfg)
    }

    #[test]
    fn kpi_tags_missing_or_in_other_units_are_warned_about_once_per_template() {
        let w = warnings(
            r#"
[templates.cell]
tags = [
  { name = "cell_voltage", address = "30001", type = "f32", unit = "V" },
  { name = "current", address = "30003", type = "f32", unit = "A" },
]
[[devices]]
name = "pot-{unit:03}"
template = "cell"
endpoint = "tcp://127.0.0.1:5020"
units = "1-3"
"#,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("template \"cell\" (pot-001 and 2 more): no tag \"voltage\", \"current\" is in \"A\", not \"kA\""), "{w:?}");
        // A cell with both tags in V and kA, and a kiln: nothing to say.
        let w = warnings(
            r#"
[[devices]]
name = "pot-1"
endpoint = "tcp://127.0.0.1:5020"
tags = [
  { name = "voltage", address = "30001", type = "f32", unit = "V" },
  { name = "current", address = "30003", type = "f32", unit = "kA" },
]
[[devices]]
name = "kiln-1"
endpoint = "tcp://127.0.0.1:5021"
tags = [{ name = "flue_temp", address = "40001" }]
"#,
        );
        assert!(w.is_empty(), "{w:?}");
    }
}
