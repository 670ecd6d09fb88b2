//! `alsentry tune` on recordings of the simulator with anode effects: the truth comes from the
//! cells' own `ae_active` register, the proposal meets the targets on held-out data of the same
//! plant, a grouped export of the same rows gives the same result, and the report has one
//! figure per anode effect.

use std::path::{Path, PathBuf};

use alsentry::config::Config;
use alsentry::tune::{run_tune, TuneOptions, TuneOutcome};

use crate::support::simrec::{config, record, scenario};

fn tune(cfg_path: &Path, inputs: Vec<PathBuf>, out: &Path) -> TuneOutcome {
    let cfg = Config::load(cfg_path).unwrap();
    let mut opts = TuneOptions::new(inputs, out.to_path_buf());
    opts.jobs = 2;
    run_tune(&cfg, &opts).unwrap()
}

/// Writes the proposal's `[[rules]]` blocks over the blocks of the same name in `rules_file`.
fn apply(proposal: &str, rules_file: &Path) {
    let mut text = std::fs::read_to_string(rules_file).unwrap();
    for block in proposal.split("\n[[rules]]\n").skip(1) {
        let block: String = block
            .lines()
            .take_while(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap();
        let at = text.find(&format!("name = \"{name}\"")).unwrap();
        let start = text[..at].rfind("[[rules]]").unwrap();
        let end = text[at..].find("\n[").map_or(text.len(), |e| at + e + 1);
        // Comments before the next block stay with it.
        let end = text[start..end]
            .rfind("\n\n")
            .map_or(end, |e| start + e + 1)
            .max(at);
        text.replace_range(start..end, &format!("[[rules]]\n{}\n", block.trim_end()));
    }
    std::fs::write(rules_file, text).unwrap();
}

#[test]
fn tune_on_a_sim_recording_proposes_limits_that_hold_on_held_out_data_and_draws_each_anode_effect()
{
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = config(dir.path());
    let cfg = Config::load(&cfg_path).unwrap();
    let train = dir.path().join("record-train");
    let effects = [(1, 12), (3, 30), (5, 48), (2, 66), (4, 84)];
    record(&cfg, scenario(21, &effects), 21, 100, &train);

    let out = dir.path().join("out");
    let got = tune(&cfg_path, vec![train.clone()], &out);
    assert_eq!(got.bad_rows, 0, "{:?}", got.problems);
    assert_eq!(got.effects.len(), effects.len(), "{:?}", got.effects);
    assert!(got.effects.iter().all(|e| e.source == "ae_active"));
    eprintln!("{}\n{}", got.table, got.snippet);
    let warning = got.rules.iter().find(|r| r.rule == "ae_warning").unwrap();
    assert!(warning.proposed.is_some(), "{}", got.table);
    assert!(
        got.snippet.contains("name = \"ae_warning\""),
        "{}",
        got.snippet
    );
    let parsed: toml::Table = toml::from_str(&got.snippet).unwrap();
    assert!(parsed["rules"].as_array().is_some_and(|r| !r.is_empty()));

    // One figure per anode effect, each one inline SVG.
    let html = std::fs::read_to_string(&got.report).unwrap();
    assert_eq!(
        html.matches("data-testid=\"ae-figure\"").count(),
        effects.len()
    );
    for i in 1..=effects.len() {
        let at = html.find(&format!("id=\"ae-{i}\"")).unwrap();
        let figure = &html[at..at + html[at..].find("</figure>").unwrap()];
        assert_eq!(figure.matches("<svg").count(), 1, "figure {i}");
        assert!(
            figure.contains("<polyline") || figure.contains("<path"),
            "figure {i}"
        );
    }
    assert!(html.matches("data-testid=\"tradeoff-figure\"").count() >= 1);

    // The same rows exported per device, in one file, give the same truth and proposal.
    let export = dir.path().join("export.csv");
    grouped_export(&train, &export);
    // Read from the file for each replay rather than kept in memory: the same again.
    let mut opts = TuneOptions::new(vec![export], dir.path().join("out2"));
    opts.jobs = 2;
    opts.max_rows_in_memory = 0;
    let again = run_tune(&cfg, &opts).unwrap();
    assert_eq!(again.effects, got.effects);
    assert_eq!(again.snippet, got.snippet);

    // Held-out data of the same plant (other cells, times and seed), with the proposal applied.
    apply(&got.snippet, &dir.path().join("cell-rules.toml"));
    let tuned = Config::load(&cfg_path).unwrap();
    let held_out = dir.path().join("record-held-out");
    record(
        &tuned,
        scenario(5, &[(2, 15), (6, 40), (4, 64), (1, 85)]),
        5,
        100,
        &held_out,
    );
    let check = tune(&cfg_path, vec![held_out], &dir.path().join("out3"));
    assert_eq!(check.effects.len(), 4);
    let t = TuneOptions::new(vec![], PathBuf::new()).targets;
    for r in got.rules.iter().filter(|r| r.proposed.is_some()) {
        let now = check.rules.iter().find(|c| c.rule == r.rule).unwrap();
        let (_, score) = now.current().unwrap();
        assert!(
            t.met(score),
            "{} as proposed on held-out data: {score:?}\n{}",
            r.rule,
            check.table
        );
    }
}

/// The rows of a `[record]` directory, regrouped per device into one file.
fn grouped_export(record_dir: &Path, to: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(record_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut per_device: std::collections::BTreeMap<String, String> = Default::default();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines().skip(1) {
            let device = line.split(',').nth(1).unwrap().to_string();
            let rows = per_device.entry(device).or_default();
            rows.push_str(line);
            rows.push('\n');
        }
    }
    let mut text = String::from("ts,device,tag,value,quality\n");
    for rows in per_device.values() {
        text.push_str(rows);
    }
    std::fs::write(to, text).unwrap();
}

/// The binary: the table and the proposal on stdout, the files in `--out`, exit 0; exit 1 when
/// the data holds no anode effect; no progress bar when stderr is not a terminal.
#[test]
fn cli_tune_writes_the_report_and_exits_1_without_anode_effects() {
    let bin = env!("CARGO_BIN_EXE_alsentry");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = config(dir.path());
    let cfg = Config::load(&cfg_path).unwrap();
    let with = dir.path().join("with");
    record(&cfg, scenario(3, &[(2, 12), (5, 20)]), 3, 30, &with);
    let without = dir.path().join("without");
    record(&cfg, scenario(3, &[]), 3, 5, &without);
    let run = |input: &Path, out: &Path| {
        std::process::Command::new(bin)
            .args(["tune", "--jobs", "2", "--config"])
            .arg(&cfg_path)
            .arg("--input")
            .arg(input)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let out = dir.path().join("out");
    let o = run(&with, &out);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 anode effect(s)"), "{stderr}");
    assert!(!stderr.contains("ETA"), "{stderr}");
    assert!(stdout.contains("ae_warning ("), "{stdout}");
    assert!(stdout.contains("median lead s"), "{stdout}");
    let proposal = std::fs::read_to_string(out.join("proposal.toml")).unwrap();
    assert!(stdout.contains(&proposal));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("data-testid=\"ae-figure\"").count(), 2);

    let o = run(&without, &dir.path().join("out-none"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no anode effect in the data"), "{stderr}");
    assert!(dir.path().join("out-none/report.html").is_file());
}

/// A cell without `ae_active` rows: its anode effects are the increments of `ae_count`; a
/// cell with `ae_active` is read from its rising edges only (its counter is not counted twice).
#[test]
fn truth_comes_from_ae_active_edges_or_else_ae_count_increments() {
    use alsentry::replay::order::OrderOptions;
    use alsentry::tune::data::load;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(&config(dir.path())).unwrap();
    let t0: i64 = 1_795_824_000_000;
    let mut csv = String::from("ts,device,tag,value,quality\n");
    for s in 0..600i64 {
        let ts = t0 + s * 1000;
        // pot-001: counter only, 7 -> 8 at 100 s and 8 -> 9 at 400 s; a bad read in between.
        let count = 7 + i32::from(s >= 100) + i32::from(s >= 400);
        if s == 250 {
            csv.push_str(&format!("{ts},pot-001,ae_count,,bad:timeout\n"));
        } else {
            csv.push_str(&format!("{ts},pot-001,ae_count,{count}\n"));
        }
        // pot-002: the status bit high from 300 s to 345 s, and its counter stepping too.
        let on = i32::from((300..345).contains(&s));
        csv.push_str(&format!("{ts},pot-002,ae_active,{on}\n"));
        csv.push_str(&format!(
            "{ts},pot-002,ae_count,{}\n",
            3 + i32::from(s >= 300)
        ));
    }
    let path = dir.path().join("s.csv");
    std::fs::write(&path, csv).unwrap();
    let (sources, _) = alsentry::replay::sources(&[path]).unwrap();
    let loaded = load(&cfg, sources, &OrderOptions::new(2000), u64::MAX, 20, false).unwrap();
    let got: Vec<(u32, i64, i64, &str)> = loaded
        .effects
        .iter()
        .map(|e| {
            (
                e.device,
                (e.onset - t0) / 1000,
                (e.end - t0) / 1000,
                e.source,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 100, 160, "ae_count"),
            (1, 300, 345, "ae_active"),
            (0, 400, 460, "ae_count"),
        ]
    );
    assert_eq!(loaded.cells, 2);
    assert_eq!(loaded.bad_rows, 0);
}
