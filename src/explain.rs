//! `alsentry check --explain`: what was loaded and how each device will be read.

use std::fmt::Write;

use crate::config::{Config, Device};
use crate::core::plan::{Limits, Planner, TagSpan};

pub fn planner_for(d: &Device) -> Planner {
    let spans = d
        .tags
        .iter()
        .map(|t| TagSpan {
            table: t.encoding.table,
            start: t.address,
            width: t.encoding.width(),
        })
        .collect();
    Planner::new(
        spans,
        Limits {
            max_gap: d.max_gap,
            max_registers: d.max_registers,
            max_bits: d.max_bits,
        },
    )
}

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
    for sink in &cfg.sinks {
        let _ = writeln!(
            s,
            "sink {}: {} topic root {}",
            sink.name, sink.url, sink.topic_root
        );
    }
    s
}

pub fn read_plan(cfg: &Config) -> String {
    let mut s = String::new();
    for d in &cfg.devices {
        let planner = planner_for(d);
        let _ = writeln!(
            s,
            "{} ({} unit {}, every {}, timeout {}): {} reads",
            d.name,
            d.endpoint,
            d.unit,
            crate::config::units::format_duration_ms(d.poll_ms),
            crate::config::units::format_duration_ms(d.timeout_ms),
            planner.blocks().len()
        );
        for b in planner.blocks() {
            let names: Vec<&str> = b.tags.iter().map(|&i| d.tags[i].name.as_str()).collect();
            let fc = match b.table {
                crate::core::decode::Table::Coil => "FC01",
                crate::core::decode::Table::Discrete => "FC02",
                crate::core::decode::Table::Holding => "FC03",
                crate::core::decode::Table::Input => "FC04",
            };
            let _ = writeln!(
                s,
                "  {fc} {} {}..{} ({} {}): {}",
                b.table,
                b.start,
                u32::from(b.start) + u32::from(b.count) - 1,
                b.count,
                if b.table.is_bits() {
                    "bits"
                } else {
                    "registers"
                },
                names.join(", ")
            );
        }
    }
    s
}
