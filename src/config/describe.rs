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
    for sink in &cfg.sinks {
        let _ = writeln!(
            s,
            "sink {}: {} topic root {}",
            sink.name, sink.url, sink.topic_root
        );
    }
    s
}
