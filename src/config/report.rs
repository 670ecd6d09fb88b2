//! `[report]`: the daily energy and emissions report (docs/REPORT.md). The slope coefficients
//! and GWPs are configurable because the defaults are not verified for every cell technology;
//! current and rectifier efficiency come from `[summary]`, so that the report and the summary
//! give the same kWh/t.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{Problems, Source, TableReader};
pub use crate::core::report::ReportOptions;

/// How often the live agent saves the partial day by default (a crash loses at most this).
pub const DEFAULT_SAVE_INTERVAL_MS: i64 = 10_000;

/// `[report]` as read: the accumulator's options and the live agent's save interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    pub options: ReportOptions,
    pub save_interval_ms: i64,
    /// Where `ae_rule` is written, when it is: checked against the rules once they are read.
    pub ae_rule_offset: Option<usize>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            options: ReportOptions::default(),
            save_interval_ms: DEFAULT_SAVE_INTERVAL_MS,
            ae_rule_offset: None,
        }
    }
}

pub fn parse_report(v: &Spanned<DeValue<'_>>, src: &Source, p: &mut Problems) -> ReportConfig {
    let mut c = ReportConfig::default();
    let Some(mut r) = TableReader::of(v, src, "report".into(), p) else {
        return c;
    };
    let o = &mut c.options;
    if let Some(b) = r.opt_bool(p, "enabled") {
        o.enabled = b;
    }
    if let Some(s) = r.opt_str(p, "ae_rule") {
        if s.is_empty() {
            r.problem(p, "ae_rule", "must name a rule, e.g. \"anode_effect\"");
        } else {
            o.ae_rule = s;
            c.ae_rule_offset = Some(r.value_offset("ae_rule"));
        }
    }
    for (key, slot, example) in [
        ("slope_cf4", &mut o.slope_cf4, "0.143"),
        ("slope_c2f6", &mut o.slope_c2f6, "0.0173"),
        ("gwp_cf4", &mut o.gwp_cf4, "7390"),
        ("gwp_c2f6", &mut o.gwp_c2f6, "12200"),
        ("voltage_max", &mut o.voltage_max, "100.0"),
    ] {
        if let Some(f) = r.opt_f64(p, key) {
            if f.is_finite() && f >= 0.0 {
                *slot = f;
            } else {
                r.problem(p, key, format!("must be a number >= 0, e.g. {example}"));
            }
        }
    }
    if let Some(d) = r.opt_duration_ms(p, "coverage_gap") {
        if d < 1_000 {
            r.problem(
                p,
                "coverage_gap",
                "must be at least \"1s\" (default \"1m\")",
            );
        } else {
            o.coverage_gap_ms = d;
        }
    }
    if let Some(d) = r.opt_duration_ms(p, "save_interval") {
        if d < 1_000 {
            r.problem(
                p,
                "save_interval",
                "must be at least \"1s\" (default \"10s\")",
            );
        } else {
            c.save_interval_ms = d;
        }
    }
    r.finish(p);
    c
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = "[agent]\nid = \"gw\"\nsite = \"s\"\narea = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[[devices]]\nname = \"pot-1\"\nendpoint = \"tcp://127.0.0.1:502\"\ntags = [ { name = \"voltage\", table = \"input\", address = 0, type = \"f32\", unit = \"V\" } ]\n[[rules]]\nname = \"anode_effect\"\ndevices = [\"pot-1\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\n";

    fn load(extra: &str) -> Result<Config, String> {
        Config::from_str(Path::new("t.toml"), &format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_the_summary_efficiencies() {
        let c = load("[summary]\ncurrent_efficiency = 0.92\n").unwrap();
        let o = &c.report.options;
        assert!(o.enabled);
        assert_eq!(o.ae_rule, "anode_effect");
        assert_eq!((o.slope_cf4, o.slope_c2f6), (0.143, 0.0173));
        assert_eq!((o.gwp_cf4, o.gwp_c2f6), (7390.0, 12200.0));
        assert_eq!((o.current_efficiency, o.rectifier_efficiency), (0.92, 0.98));
        assert_eq!(c.report.save_interval_ms, 10_000);
    }

    #[test]
    fn every_key_is_read_and_bad_values_are_named() {
        let c = load("[report]\nenabled = false\nslope_cf4 = 0.1\nslope_c2f6 = 0.01\ngwp_cf4 = 6630\ngwp_c2f6 = 11100\nvoltage_max = 90.0\ncoverage_gap = \"30s\"\nsave_interval = \"20s\"\n").unwrap();
        let o = &c.report.options;
        assert!(!o.enabled);
        assert_eq!(
            (o.slope_cf4, o.slope_c2f6, o.gwp_cf4, o.gwp_c2f6),
            (0.1, 0.01, 6630.0, 11100.0)
        );
        assert_eq!(
            (o.coverage_gap_ms, c.report.save_interval_ms),
            (30_000, 20_000)
        );
        let e = load("[report]\nslope_cf4 = -1\nae_rule = \"nope\"\ncolour = 1\n").unwrap_err();
        assert!(
            e.contains("t.toml:18:13: report.slope_cf4: must be a number >= 0"),
            "{e}"
        );
        assert!(e.contains("report.ae_rule: no rule \"nope\""), "{e}");
        assert!(e.contains("report.colour"), "{e}");
    }
}
