//! `alsentry tune`: calibrates the early-warning limits on the plant's own data. The inputs are
//! what `replay` reads (files in any order, `[record]` directories); the truth is the cell
//! controller's own anode-effect register; every setting of every swept rule is replayed
//! through the same engine driver as `replay` and `run`, scored, and the best setting that
//! meets the targets is proposed as TOML. `DIR/report.html` shows each anode effect and each
//! rule's trade-off. See docs/TUNE.md.

pub mod data;
pub(crate) mod report;
pub(crate) mod sweep;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context as _;

use crate::config::units::parse_duration_ms;
use crate::config::{Config, DEFAULT_PATH};
use crate::core::driver::{Cadence, MAX_TICKED_GAP_MS};
use crate::core::model::Ts;
use crate::core::rule::RuleKind;
use crate::replay::order::OrderOptions;
use crate::replay::progress::Progress;
use data::{AnodeEffect, Loaded};
use sweep::{Score, Setting, Span, Targets};

fn duration_arg(s: &str) -> Result<i64, String> {
    parse_duration_ms(s)
}

/// `alsentry tune`: sweep rule limits against the controller's anode-effect register.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// Configuration file whose rules are tuned (devices, tags, rules).
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Samples, as `replay` takes them: CSV files in any order, `[record]` directories, `-`.
    #[arg(short, long, value_name = "FILE|DIR|-", required = true)]
    pub input: Vec<PathBuf>,
    /// Directory for report.html and proposal.toml (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also sweep these rules (by name); `ae_*` rules and rules that fired before an anode
    /// effect are swept anyway.
    #[arg(long = "rule", value_name = "NAME")]
    pub rules: Vec<String>,
    /// How long before an onset an activation counts as its early warning.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = duration_arg)]
    pub lookback: i64,
    /// How long after an onset an activation still counts as detecting it (0: only warnings
    /// before the onset count).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration_arg)]
    pub margin: i64,
    /// Target: share of anode effects detected, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 80.0)]
    pub min_detection: f64,
    /// Target: false warnings per 100 cell-hours at most.
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub max_false: f64,
    /// Engine tick period on file time, as `replay`.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration_arg)]
    pub tick: i64,
    /// Late-row tolerance, as `replay`.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration_arg)]
    pub reorder_tolerance: i64,
    /// Replays run at once (default: the available cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub extra_rules: Vec<String>,
    pub targets: Targets,
    pub tick_ms: i64,
    pub reorder_tolerance_ms: i64,
    pub jobs: usize,
    /// Rows kept in memory for the replays; past this they are read from the files again.
    pub max_rows_in_memory: u64,
    pub progress: bool,
}

impl TuneOptions {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> TuneOptions {
        TuneOptions {
            inputs,
            out,
            extra_rules: Vec::new(),
            targets: Targets {
                lookback_ms: 900_000,
                margin_ms: 0,
                min_detection: 0.8,
                max_false_per_100_cell_hours: 1.0,
            },
            tick_ms: 250,
            reorder_tolerance_ms: 2_000,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_rows_in_memory: MAX_ROWS_IN_MEMORY,
            progress: false,
        }
    }
}

/// About 24 bytes a row: 16 M rows is under 400 MB.
pub const MAX_ROWS_IN_MEMORY: u64 = 16_000_000;
/// The figures show this long before each onset, and this long after.
const BEFORE_MS: Ts = 1_800_000;
const AFTER_MS: Ts = 300_000;
/// Copies of rules per engine: more engines than cores keep the cores busy and the progress
/// moving.
const COPIES_PER_ENGINE: usize = 24;

/// One swept rule's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOutcome {
    pub rule: String,
    pub settings: Vec<(Setting, Score)>,
    /// Index into `settings` of the proposal, if a setting met the targets.
    pub proposed: Option<usize>,
}

impl RuleOutcome {
    pub fn current(&self) -> Option<&(Setting, Score)> {
        self.settings.iter().find(|(s, _)| s.current)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TuneOutcome {
    pub effects: Vec<AnodeEffect>,
    pub cell_hours: f64,
    pub rules: Vec<RuleOutcome>,
    /// The proposal as TOML, to paste over the rules of the same name.
    pub snippet: String,
    pub table: String,
    pub report: PathBuf,
    pub bad_rows: u64,
    pub problems: Vec<String>,
}

fn describe(kind: &RuleKind, tag: &str, limit: f64, on_delay_ms: i64) -> String {
    format!(
        "{} on {tag}, {} {limit}, on_delay {}",
        kind.type_name(),
        sweep::limit_key(kind),
        fmt_duration(on_delay_ms)
    )
}

/// A duration as the configuration writes it.
pub fn fmt_duration(ms: i64) -> String {
    if ms != 0 && ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Runs the sweep and writes `out/report.html` and `out/proposal.toml`.
pub fn run_tune(cfg: &Config, opts: &TuneOptions) -> anyhow::Result<TuneOutcome> {
    let (sources, stdin_copy) = crate::replay::sources(&opts.inputs)?;
    let order = OrderOptions::new(opts.reorder_tolerance_ms);
    let cadence = Cadence {
        tick_ms: opts.tick_ms,
        max_ticked_gap_ms: MAX_TICKED_GAP_MS,
    };
    let loaded = data::load(
        cfg,
        sources,
        &order,
        opts.max_rows_in_memory,
        20,
        opts.progress,
    )?;
    let t = opts.targets;
    let by_device = data::by_device(&loaded.effects);
    let cell_hours = loaded.cell_hours();

    // The configuration as it is, once: which rules fire before anode effects, and the
    // figures' data.
    let base = sweep::base_draft(cfg);
    let (resistance_tag, slope_window_ms, slope_per_ms) = resistance_series(cfg);
    let mut trace = sweep::Trace::new(cfg, &loaded.effects, BEFORE_MS, AFTER_MS, &resistance_tag);
    let mut progress = if opts.progress {
        Progress::rows("as configured", loaded.records)
    } else {
        Progress::hidden()
    };
    let baseline = sweep::replay(
        &base,
        cfg,
        &loaded.rows,
        &order,
        cadence,
        Some(&mut trace),
        &mut progress,
    )?;

    // Without an anode effect there is nothing to score a setting against.
    let swept = if loaded.effects.is_empty() {
        Vec::new()
    } else {
        rules_to_sweep(cfg, &opts.extra_rules, &baseline, &loaded.effects, &t)
    };
    let settings: Vec<Setting> = swept
        .iter()
        .flat_map(|&r| sweep::settings(cfg, r))
        .collect();
    let spans = replay_settings(cfg, &base, &settings, &loaded, &order, cadence, opts)?;
    drop(stdin_copy);

    let mut starts: Vec<Vec<(u32, Ts)>> = vec![Vec::new(); settings.len()];
    for s in &spans {
        if let Some(k) = sweep::copy_index(&s.rule).filter(|k| *k < settings.len()) {
            starts[k].push((s.device, s.start));
        }
    }
    let total = loaded.effects.len();
    let mut rules = Vec::new();
    for &r in &swept {
        let scored: Vec<(Setting, Score)> = settings
            .iter()
            .zip(&starts)
            .filter(|(s, _)| s.rule == r)
            .map(|(s, st)| {
                (
                    s.clone(),
                    sweep::score(st, &by_device, total, cell_hours, &t),
                )
            })
            .collect();
        let current = sweep::limit_of(&cfg.rules[r].kind).unwrap_or(0.0);
        let best = sweep::best(&scored, current, &t);
        rules.push(RuleOutcome {
            rule: cfg.rules[r].name.clone(),
            settings: scored,
            proposed: best,
        });
    }

    let snippet = proposal(cfg, &rules, &t, total, cell_hours);
    let table = table(cfg, &rules, &t);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create the directory", opts.out.display()))?;
    let proposal_path = opts.out.join("proposal.toml");
    std::fs::write(&proposal_path, &snippet)
        .with_context(|| format!("{}: cannot write", proposal_path.display()))?;

    let names: Vec<&str> = cfg.devices.iter().map(|d| d.name.as_str()).collect();
    let figures: Vec<report::EffectFigure<'_>> = loaded
        .effects
        .iter()
        .enumerate()
        .map(|(i, e)| report::EffectFigure {
            effect: e,
            device: names.get(e.device as usize).copied().unwrap_or("?"),
            points: &trace.points[i],
            resistance_tag: &trace.resistance_tag,
            slope_window_ms,
            slope_per_ms,
            spans: baseline
                .iter()
                .filter(|s| {
                    s.device == e.device
                        && s.start <= e.onset + AFTER_MS
                        && s.end.is_none_or(|end| end >= e.onset - BEFORE_MS)
                })
                .collect(),
            before_ms: BEFORE_MS,
            after_ms: AFTER_MS,
        })
        .collect();
    let page = report::Report {
        title: "alsentry tune".into(),
        summary: vec![
            ("configuration".into(), cfg.files.first().map_or_else(String::new, |f| f.display().to_string())),
            ("rows".into(), loaded.records.to_string()),
            ("cells".into(), loaded.cells.to_string()),
            ("cell-hours".into(), format!("{cell_hours:.1}")),
            ("anode effects".into(), total.to_string()),
            (
                "targets".into(),
                format!(
                    "detection ≥ {:.0} %, ≤ {} false warnings / 100 cell-hours, longest median lead; warnings count up to {} before an onset",
                    t.min_detection * 100.0,
                    t.max_false_per_100_cell_hours,
                    fmt_duration(t.lookback_ms)
                ),
            ),
        ],
        effects: figures,
        rules: rules
            .iter()
            .map(|o| {
                let r = cfg.rules.iter().find(|r| r.name == o.rule);
                report::RuleResult {
                    rule: &o.rule,
                    description: r.map_or_else(String::new, |r| {
                        format!(
                            "now: {}",
                            describe(
                                &r.kind,
                                &r.tag,
                                sweep::limit_of(&r.kind).unwrap_or(0.0),
                                r.on_delay_ms
                            )
                        )
                    }),
                    rows: o.settings.iter().map(|(s, sc)| (s, sc)).collect(),
                    proposed: o.proposed,
                }
            })
            .collect(),
        snippet: snippet.clone(),
    };
    let html = report::html(&page)?;
    let report_path = opts.out.join("report.html");
    std::fs::write(&report_path, html)
        .with_context(|| format!("{}: cannot write", report_path.display()))?;
    Ok(TuneOutcome {
        effects: loaded.effects.clone(),
        cell_hours,
        rules,
        snippet,
        table,
        report: report_path,
        bad_rows: loaded.bad_rows,
        problems: loaded.problems.clone(),
    })
}

/// The series the figures show under the voltage: the tag of the first `ae_*` slope (or
/// trend) rule, with its window; else the cell template's `resistance`, over 5 minutes.
fn resistance_series(cfg: &Config) -> (String, Ts, Ts) {
    for r in cfg.rules.iter().filter(|r| r.name.starts_with("ae_")) {
        match r.kind {
            RuleKind::Slope {
                window_ms, per_ms, ..
            }
            | RuleKind::Rate {
                window_ms, per_ms, ..
            } => return (r.tag.clone(), window_ms, per_ms),
            RuleKind::Predict { window_ms, .. } => return (r.tag.clone(), window_ms, 60_000),
            _ => {}
        }
    }
    ("resistance".into(), 300_000, 60_000)
}

/// `ae_*` rules with a limit, the rules asked for, and every rule with a limit that warned:
/// fired within the lookback before an anode effect on its cell, with the configuration as it
/// is.
fn rules_to_sweep(
    cfg: &Config,
    extra: &[String],
    baseline: &[Span],
    effects: &[AnodeEffect],
    t: &Targets,
) -> Vec<usize> {
    let fired: BTreeSet<&str> = baseline
        .iter()
        .filter(|s| {
            effects.iter().any(|e| {
                e.device == s.device && s.start >= e.onset - t.lookback_ms && s.start < e.onset
            })
        })
        .map(|s| &*s.rule)
        .collect();
    cfg.rules
        .iter()
        .enumerate()
        .filter(|(_, r)| sweep::limit_of(&r.kind).is_some())
        .filter(|(_, r)| {
            r.name.starts_with("ae_")
                || extra.iter().any(|e| e == &r.name)
                || fired.contains(r.name.as_str())
        })
        .map(|(i, _)| i)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn replay_settings(
    cfg: &Config,
    base: &crate::core::spec::Draft,
    settings: &[Setting],
    loaded: &Loaded,
    order: &OrderOptions,
    cadence: Cadence,
    opts: &TuneOptions,
) -> anyhow::Result<Vec<Span>> {
    if settings.is_empty() {
        return Ok(Vec::new());
    }
    let engines = opts
        .jobs
        .max(settings.len().div_ceil(COPIES_PER_ENGINE))
        .min(settings.len());
    let drafts = sweep::variant_drafts(base, settings, engines);
    let next = AtomicUsize::new(0);
    let progress = Mutex::new((
        if opts.progress {
            Progress::steps("sweep", drafts.len() as u64)
        } else {
            Progress::hidden()
        },
        0u64,
    ));
    let results: Mutex<Vec<anyhow::Result<Vec<Span>>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, drafts.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = drafts.get(i) else { break };
                let r = sweep::replay(
                    d,
                    cfg,
                    &loaded.rows,
                    order,
                    cadence,
                    None,
                    &mut Progress::hidden(),
                );
                if let Ok(mut p) = progress.lock() {
                    p.1 += 1;
                    let done = p.1;
                    p.0.set(done);
                }
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
            });
        }
    });
    if let Ok(mut p) = progress.lock() {
        p.0.finish();
    }
    let mut spans = Vec::new();
    for r in results.into_inner().unwrap_or_default() {
        spans.extend(r?);
    }
    Ok(spans)
}

/// The per-rule tables, as printed.
fn table(cfg: &Config, rules: &[RuleOutcome], t: &Targets) -> String {
    let mut s = String::new();
    for o in rules {
        let Some(r) = cfg.rules.iter().find(|r| r.name == o.rule) else {
            continue;
        };
        s.push_str(&format!(
            "\n{} ({})\n",
            o.rule,
            describe(
                &r.kind,
                &r.tag,
                sweep::limit_of(&r.kind).unwrap_or(0.0),
                r.on_delay_ms
            )
        ));
        s.push_str(&format!(
            "  {:>12} {:>9} {:>12} {:>15} {:>18}\n",
            sweep::limit_key(&r.kind),
            "on_delay",
            "detected",
            "median lead s",
            "false/100 cell-h"
        ));
        for (i, (set, sc)) in o.settings.iter().enumerate() {
            let mark = if Some(i) == o.proposed {
                "  <- proposed"
            } else if set.current {
                "  (current)"
            } else {
                ""
            };
            s.push_str(&format!(
                "  {:>12} {:>9} {:>7}/{:<4} {:>15} {:>18.2}{mark}\n",
                set.limit,
                fmt_duration(set.on_delay_ms),
                sc.detected,
                sc.effects,
                sc.median_lead_s
                    .map_or_else(|| "-".into(), |l| format!("{l:.0}")),
                sc.false_per_100_cell_hours,
            ));
        }
        if o.proposed.is_none() {
            s.push_str(&format!(
                "  no setting detects {:.0} % of the anode effects with at most {} false warnings per 100 cell-hours\n",
                t.min_detection * 100.0,
                t.max_false_per_100_cell_hours
            ));
        }
    }
    s
}

/// The rule's `[[rules]]` block as written in its file, trailing comments (which introduce the
/// next block) left out.
fn rule_block(cfg: &Config, rule: &crate::config::rule::Rule) -> Option<String> {
    let text = std::fs::read_to_string(cfg.files.get(rule.origin.0)?).ok()?;
    let at = rule.origin.1.min(text.len());
    let head_end = (at + "[[rules]]".len()).min(text.len());
    let start = text.get(..head_end)?.rfind("[[rules]]")?;
    let body_from = start + "[[rules]]".len();
    let end = text[body_from..]
        .match_indices('\n')
        .map(|(i, _)| body_from + i + 1)
        .find(|&i| text[i..].trim_start_matches([' ', '\t']).starts_with('['))
        .unwrap_or(text.len());
    let mut lines: Vec<&str> = text[start..end].lines().collect();
    while lines
        .last()
        .is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        lines.pop();
    }
    Some(lines.join("\n"))
}

fn key_of(line: &str) -> Option<&str> {
    let l = line.trim_start();
    if l.starts_with('#') {
        return None;
    }
    Some(l.split_once('=')?.0.trim())
}

/// The block with the proposed limit (and deadband) and on-delay written in.
fn rewrite_block(block: &str, kind: &RuleKind, s: &Setting) -> String {
    let new_kind = sweep::with_limit(kind, s.limit);
    let deadband = match new_kind {
        RuleKind::Rate { deadband, .. }
        | RuleKind::Slope { deadband, .. }
        | RuleKind::Noise { deadband, .. } => Some(sweep::round3(deadband)),
        _ => None,
    };
    let limit_key = sweep::limit_key(kind);
    let delay = format!("on_delay = \"{}\"", fmt_duration(s.on_delay_ms));
    let mut out = Vec::new();
    let mut has_delay = false;
    for line in block.lines() {
        match key_of(line) {
            Some(k) if k == limit_key => {
                out.push(format!("{limit_key} = {}", s.limit));
            }
            Some("deadband") if deadband.is_some() => {
                out.push(format!("deadband = {}", deadband.unwrap_or(0.0)));
            }
            Some("on_delay") => {
                has_delay = true;
                out.push(delay.clone());
            }
            _ => out.push(line.to_string()),
        }
    }
    if !has_delay && s.on_delay_ms != 0 {
        out.push(delay);
    }
    out.join("\n")
}

/// The proposal: each rule with a setting that meets the targets, as its whole `[[rules]]`
/// block with the new limit and on-delay, to paste over the block of the same name.
fn proposal(cfg: &Config, rules: &[RuleOutcome], t: &Targets, effects: usize, ch: f64) -> String {
    let mut s = format!(
        "# Proposed by `alsentry tune` from {effects} anode effect(s) over {ch:.1} cell-hours.\n\
         # Targets: detection >= {:.0} %, <= {} false warnings per 100 cell-hours, longest median lead.\n\
         # Each block replaces the [[rules]] block of the same name (in the file that defines it).\n",
        t.min_detection * 100.0,
        t.max_false_per_100_cell_hours,
    );
    for o in rules {
        let Some(rule) = cfg.rules.iter().find(|r| r.name == o.rule) else {
            continue;
        };
        let Some((set, sc)) = o.proposed.and_then(|i| o.settings.get(i)) else {
            s.push_str(&format!(
                "\n# {}: no setting met the targets; left as it is.\n",
                o.rule
            ));
            continue;
        };
        s.push_str(&format!(
            "\n# {}: detected {}/{}, median lead {} s, {:.2} false warnings per 100 cell-hours (was {} {}, on_delay {}).\n",
            o.rule,
            sc.detected,
            sc.effects,
            sc.median_lead_s.map_or_else(|| "-".into(), |l| format!("{l:.0}")),
            sc.false_per_100_cell_hours,
            sweep::limit_key(&rule.kind),
            sweep::limit_of(&rule.kind).unwrap_or(0.0),
            fmt_duration(rule.on_delay_ms),
        ));
        let block = rule_block(cfg, rule).unwrap_or_else(|| {
            format!(
                "[[rules]]\nname = \"{}\"\n{} = {}\n# (the rule's other keys as they are)",
                rule.name,
                sweep::limit_key(&rule.kind),
                sweep::limit_of(&rule.kind).unwrap_or(0.0)
            )
        });
        s.push_str(&rewrite_block(&block, &rule.kind, set));
        s.push('\n');
    }
    s
}

/// `alsentry tune`. Exit codes: 0 = report written; 1 = no anode effect in the data, nothing
/// to tune against (the report is still written); 2 = inputs or the output directory
/// unusable; 78 = invalid configuration.
pub fn main(args: TuneArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return crate::telemetry::config_refused(&args.config, &e, "; not tuning"),
    };
    let mut opts = TuneOptions::new(args.input.clone(), args.out.clone());
    opts.extra_rules = args.rules.clone();
    opts.targets = Targets {
        lookback_ms: args.lookback,
        margin_ms: args.margin,
        min_detection: args.min_detection / 100.0,
        max_false_per_100_cell_hours: args.max_false,
    };
    opts.tick_ms = args.tick;
    opts.reorder_tolerance_ms = args.reorder_tolerance;
    if let Some(j) = args.jobs {
        opts.jobs = j.max(1);
    }
    opts.progress = true;
    let started = crate::clock::Stopwatch::start();
    let outcome = match run_tune(&cfg, &opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    for p in &outcome.problems {
        eprintln!("{p}");
    }
    if outcome.bad_rows > 0 {
        eprintln!("{} bad row(s) skipped", outcome.bad_rows);
    }
    eprintln!(
        "{} anode effect(s) over {:.1} cell-hours; {} rule(s) swept in {:.1} s",
        outcome.effects.len(),
        outcome.cell_hours,
        outcome.rules.len(),
        started.elapsed().as_secs_f64()
    );
    print!("{}", outcome.table);
    println!();
    print!("{}", outcome.snippet);
    eprintln!(
        "wrote {} and {}",
        outcome.report.display(),
        Path::new(&args.out).join("proposal.toml").display()
    );
    if outcome.effects.is_empty() {
        eprintln!(
            "no anode effect in the data (no rising edge of {} nor increment of {}): nothing to tune against",
            data::AE_ACTIVE,
            data::AE_COUNT
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
