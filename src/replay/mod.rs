//! `alsentry replay`: runs the live engine over recorded samples on file time, writes the alarm
//! transitions as the same JSON the MQTT sinks publish, summarises them per rule and, given the
//! simulator's ground truth, scores detections. See `docs/REPLAY.md`.
//!
//! Live and replay share one code path: the engine [`Driver`] (batching, tick grid), fed sample
//! rows. Only the source of time differs: here `now` is the file's timestamp, so an hour replays
//! in a second. The sample format is [`crate::io::samples`], which `[record]` writes.

pub mod order;
pub(crate) mod progress;
pub mod score;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::units::parse_duration_ms;
use crate::config::{Config, DEFAULT_PATH};
use crate::core::driver::{Cadence, Driver, MAX_TICKED_GAP_MS};
use crate::core::engine::Engine;
use crate::core::model::Ts;
use crate::core::payload::{alarm_payload_with_id, replay_event_id, Identity};
use crate::core::report::{DayReport, Reports};
use crate::io::samples::{HeaderError, Names, RowErrorKind};
use order::{Item, OrderOptions, OrderStats, Source};
use progress::Progress;
use score::{Activation, Matches, ScoreInput};

fn duration_arg(s: &str) -> Result<i64, String> {
    parse_duration_ms(s)
}

/// `alsentry replay`: run the engine over recorded samples.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Configuration file (devices, tags and rules; MQTT settings are not used).
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Sample CSV: `ts,device,tag,value[,quality]`, in any order (rows grouped per device or
    /// per tag are put in time order). Repeat for several files; a directory is read as its
    /// `*.csv` files in name order (as `[record]` writes them); `-` reads stdin.
    #[arg(short, long, value_name = "FILE|DIR|-", required = true)]
    pub input: Vec<PathBuf>,
    /// Where to write alarm transitions as JSON lines (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit 0 even if some rows were bad (they are still reported and skipped).
    #[arg(long)]
    pub lenient: bool,
    /// Engine tick period on file time; on/off delays fire on this grid, as live.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration_arg)]
    pub tick: i64,
    /// A row older than the newest row before it by at most this much (and not older than its
    /// device's previous row) keeps its place and is applied at the current replay time (as
    /// live, where late batches are evaluated on arrival); any other row that goes back starts
    /// another time-ordered run, and runs are merged.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration_arg)]
    pub reorder_tolerance: i64,
    /// Ground truth from the simulator (JSON lines) to score the alarms against.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Rules that detect a fault kind, e.g. `anode_effect=ae_event,ae_warning`; replaces the
    /// default mapping for that kind. Repeatable.
    #[arg(long = "match", value_name = "KIND=RULE[,RULE]")]
    pub matches: Vec<String>,
    /// Slack around each fault window within which an activation still counts as detection.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg)]
    pub margin: i64,
    /// Also write the score as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub score_json: Option<PathBuf>,
    /// How many bad rows to print individually (all are counted).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_errors: usize,
    /// Also compute the daily energy and emissions reports (docs/REPORT.md) from the samples
    /// and write them to this directory, one JSON file per day and device (`DAY/DEVICE.json`,
    /// `DAY/_area.json`), as `alsentry run` publishes them. The last day of data is written
    /// too, marked `"partial": true`.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    pub inputs: Vec<PathBuf>,
    pub tick_ms: i64,
    pub reorder_tolerance_ms: i64,
    /// Bad rows kept with their message in the report; the rest are only counted.
    pub max_reported: usize,
    /// Runs merged directly, and rows per sorted chunk when the runs are more (see [`order`]).
    pub max_runs: usize,
    pub chunk_rows: usize,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
    /// Write the daily reports here (`--report`).
    pub report_dir: Option<PathBuf>,
}

impl ReplayOptions {
    pub fn new(inputs: Vec<PathBuf>) -> ReplayOptions {
        ReplayOptions {
            inputs,
            tick_ms: 250,
            reorder_tolerance_ms: 2_000,
            max_reported: 20,
            max_runs: order::MAX_RUNS,
            chunk_rows: order::CHUNK_ROWS,
            progress: false,
            report_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Header { path: PathBuf, source: HeaderError },
    #[error("{}: no *.csv files in this directory", .0.display())]
    EmptyDir(PathBuf),
    #[error("writing the alarm output: {0}")]
    Output(std::io::Error),
    #[error("sorting the rows in a temporary file: {0}")]
    Spill(std::io::Error),
    #[error("{}: cannot write the report: {source}", .path.display())]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Per-rule totals over the replay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSummary {
    pub rule: String,
    pub activations: u64,
    pub clears: u64,
    /// Distinct devices on which the rule activated.
    pub devices: usize,
    /// Summed active time; alarms still active at the end count up to the last sample.
    pub active_ms: i64,
    pub still_active: usize,
}

/// One alarm transition, as seen in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionSeen {
    pub device: String,
    pub rule: String,
    pub from: &'static str,
    pub to: &'static str,
    pub at: Ts,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplayReport {
    pub files: usize,
    /// Rows applied to the engine.
    pub rows: u64,
    pub batches: u64,
    pub bad_rows: u64,
    pub bad_by_kind: BTreeMap<&'static str, u64>,
    /// The first `max_reported` bad rows: `file:line: message`.
    pub problems: Vec<String>,
    /// Rows that arrived late within the tolerance and were applied at the current time.
    pub late_rows: u64,
    /// Rows of derived tags, which the engine computes itself.
    pub derived_rows: u64,
    pub first_ts: Option<Ts>,
    pub last_ts: Option<Ts>,
    /// Devices with at least one row.
    pub devices: usize,
    pub transitions: Vec<TransitionSeen>,
    pub activations: Vec<Activation>,
    pub rules: Vec<RuleSummary>,
    /// How the rows were put in time order.
    pub order: OrderStats,
    /// Daily report files written (`--report`).
    pub report_files: Vec<PathBuf>,
}

fn is_active(label: &str) -> bool {
    matches!(label, "active_unacked" | "active_acked")
}

#[derive(Debug, Default)]
struct RuleAcc {
    activations: u64,
    clears: u64,
    devices: std::collections::BTreeSet<Arc<str>>,
    active_ms: i64,
}

/// The replay loop: feeds rows to the driver on file time and collects what comes out.
struct Replayer<'w> {
    driver: Driver,
    who: Identity,
    out: &'w mut dyn Write,
    seq: u64,
    /// Newest row timestamp accepted so far.
    newest: Option<Ts>,
    rules: BTreeMap<Arc<str>, RuleAcc>,
    active: HashMap<(Arc<str>, Arc<str>), Ts>,
    seen_device: Vec<bool>,
    report: ReplayReport,
    report_limit: usize,
    progress: Progress,
    /// Rows to draw a bar for, from the first row replayed on (after any sorting, so that its
    /// rate is the replay's).
    bar_rows: Option<u64>,
    /// The daily reports (`--report`), fed the same samples and transitions as live.
    reports: Option<(Reports, PathBuf)>,
}

impl Replayer<'_> {
    fn drain(&mut self) -> Result<(), ReplayError> {
        let events: Vec<_> = self.driver.drain_events().collect();
        for ev in events {
            if let Some((reports, _)) = &mut self.reports {
                let done = reports.event(&ev);
                self.write_reports(done)?;
            }
            self.seq += 1;
            let id = replay_event_id(&self.who.agent, self.seq);
            let mut line = alarm_payload_with_id(&self.who, id, self.seq, &ev);
            line.push(b'\n');
            self.out.write_all(&line).map_err(ReplayError::Output)?;
            let (from, to, at) = (ev.transition.from, ev.transition.to, ev.transition.at);
            let acc = self.rules.entry(ev.rule.clone()).or_default();
            let key = (ev.device.clone(), ev.rule.clone());
            if is_active(to) && !is_active(from) {
                acc.activations += 1;
                acc.devices.insert(ev.device.clone());
                self.active.insert(key, at);
                self.report.activations.push(Activation {
                    device: ev.device.to_string(),
                    rule: ev.rule.to_string(),
                    at,
                });
            } else if is_active(from) && !is_active(to) {
                acc.clears += 1;
                if let Some(since) = self.active.remove(&key) {
                    acc.active_ms += at - since;
                }
            }
            self.report.transitions.push(TransitionSeen {
                device: ev.device.to_string(),
                rule: ev.rule.to_string(),
                from,
                to,
                at,
            });
        }
        Ok(())
    }

    /// Writes `DIR/DAY/DEVICE.json` for each report.
    fn write_reports(&mut self, done: Vec<DayReport>) -> Result<(), ReplayError> {
        let Some((_, dir)) = &self.reports else {
            return Ok(());
        };
        for r in done {
            let day = dir.join(&r.day);
            let path = day.join(format!("{}.json", r.device));
            let mut bytes = r.payload(&self.who);
            bytes.push(b'\n');
            std::fs::create_dir_all(&day)
                .and_then(|()| std::fs::write(&path, bytes))
                .map_err(|source| ReplayError::Report {
                    path: path.clone(),
                    source,
                })?;
            self.report.report_files.push(path);
        }
        Ok(())
    }

    fn bad(&mut self, file: &str, line: u64, kind: RowErrorKind, message: &str) {
        self.report.bad_rows += 1;
        *self.report.bad_by_kind.entry(kind.as_str()).or_default() += 1;
        if self.report.problems.len() < self.report_limit {
            self.report
                .problems
                .push(format!("{file}:{line}: {message}"));
        }
    }

    fn on_item(
        &mut self,
        item: Item,
        sources: &[Source],
        tolerance: i64,
    ) -> Result<(), ReplayError> {
        let (row, file) = match item {
            Item::Derived => {
                self.report.derived_rows += 1;
                return Ok(());
            }
            Item::Bad { file, error } => {
                self.bad(
                    &sources[file].display,
                    error.line,
                    error.kind,
                    &error.message,
                );
                return Ok(());
            }
            Item::Row { row, file } => (row, file),
        };
        if let Some(total) = self.bar_rows.take() {
            self.progress = Progress::rows("replay", total);
        }
        self.progress.row();
        if let Some(newest) = self.newest {
            if row.ts < newest {
                // Ordering cuts runs where a row is later than this, so this is a safety net.
                if newest - row.ts > tolerance {
                    let msg = format!(
                        "out of order: {} is {} ms before an earlier row's {} (tolerance {} ms)",
                        crate::clock::rfc3339_ms(row.ts),
                        newest - row.ts,
                        crate::clock::rfc3339_ms(newest),
                        tolerance
                    );
                    self.bad(
                        &sources[file].display,
                        row.line,
                        RowErrorKind::OutOfOrder,
                        &msg,
                    );
                    return Ok(());
                }
                self.report.late_rows += 1;
            }
        }
        self.driver
            .push_row(row.device, row.ts, row.tag, row.value, row.quality);
        // The transitions of the batches before this row first, then the row itself.
        self.drain()?;
        if let Some((reports, _)) = &mut self.reports {
            let done = reports.sample(row.device, row.ts, row.tag, row.value, row.quality);
            self.write_reports(done)?;
        }
        self.report.rows += 1;
        self.newest = Some(self.newest.map_or(row.ts, |n| n.max(row.ts)));
        self.report.first_ts = Some(self.report.first_ts.map_or(row.ts, |f| f.min(row.ts)));
        if let Some(seen) = self.seen_device.get_mut(row.device as usize) {
            *seen = true;
        }
        Ok(())
    }
}

fn copy_stdin() -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::NamedTempFile::new()?;
    std::io::copy(&mut std::io::stdin().lock(), tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    Ok(tmp)
}

/// The files to read, in order (see [`expand_inputs`]), and the temporary copy of standard
/// input if `-` is among them (read twice, so it must be a file; deleted when dropped).
pub fn sources(
    inputs: &[PathBuf],
) -> Result<(Vec<Source>, Option<tempfile::NamedTempFile>), ReplayError> {
    let files = expand_inputs(inputs)?;
    let mut stdin_copy = None;
    let mut sources = Vec::with_capacity(files.len());
    for path in &files {
        if path.as_os_str() == "-" {
            let tmp = copy_stdin().map_err(|source| ReplayError::Read {
                path: path.clone(),
                source,
            })?;
            sources.push(Source {
                path: tmp.path().to_path_buf(),
                display: "-".into(),
            });
            stdin_copy = Some(tmp);
        } else {
            sources.push(Source {
                path: path.clone(),
                display: path.display().to_string(),
            });
        }
    }
    Ok((sources, stdin_copy))
}

/// Files to replay, in order: directories expand to their `*.csv` files sorted by name.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for p in inputs {
        if p.as_os_str() != "-" && p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|source| ReplayError::Read {
                path: p.clone(),
                source,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "csv"))
                .collect();
            if files.is_empty() {
                return Err(ReplayError::EmptyDir(p.clone()));
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Replays `opts.inputs` through a fresh engine built from `cfg`, writing each alarm transition
/// to `out` as one JSON line (the MQTT alarm payload, with the replay's own sequence from 1 and
/// ids `{agent}-replay-{seq}`, which never collide with live ids).
/// Bad rows are counted and skipped; only an unreadable input or header stops the replay.
pub fn run_replay(
    cfg: &Config,
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplayReport, ReplayError> {
    let engine = Engine::new(&cfg.spec);
    let names = Names::new(cfg);
    let cadence = Cadence {
        tick_ms: opts.tick_ms,
        max_ticked_gap_ms: MAX_TICKED_GAP_MS,
    };
    let mut r = Replayer {
        driver: Driver::new(engine, cadence),
        who: Identity {
            topic_root: cfg
                .sinks
                .first()
                .map_or_else(|| "alsentry".to_string(), |s| s.topic_root.clone()),
            agent: cfg.agent.id.clone(),
            site: cfg.agent.site.clone(),
            area: cfg.agent.area.clone(),
        },
        out,
        seq: 0,
        newest: None,
        rules: BTreeMap::new(),
        active: HashMap::new(),
        seen_device: vec![false; cfg.devices.len()],
        report: ReplayReport::default(),
        report_limit: opts.max_reported,
        progress: Progress::hidden(),
        bar_rows: None,
        reports: opts.report_dir.as_ref().map(|d| {
            let o = cfg.report.options.clone();
            (
                Reports::from_spec(&cfg.spec, o, &cfg.agent.timezone),
                d.clone(),
            )
        }),
    };
    let (sources, stdin_copy) = sources(&opts.inputs)?;
    let order_opts = OrderOptions {
        tolerance_ms: opts.reorder_tolerance_ms,
        max_runs: opts.max_runs,
        chunk_rows: opts.chunk_rows,
        progress: opts.progress,
    };
    let tolerance = opts.reorder_tolerance_ms;
    let plan = order::plan(&sources, &names, &order_opts)?;
    if opts.progress {
        r.bar_rows = Some(plan.stats().records);
    }
    let stats = plan.for_each(&mut |item| r.on_item(item, &sources, tolerance))?;
    r.progress.finish();
    drop(stdin_copy);
    r.report.files = sources.len();
    r.report.order = stats;
    // Delays due by the last sample fire; nothing is invented past the data.
    r.driver.finish();
    r.drain()?;
    if let (Some((reports, _)), Some(last)) = (&mut r.reports, r.driver.now()) {
        let done = reports.finish(last);
        r.write_reports(done)?;
    }
    r.out.flush().map_err(ReplayError::Output)?;
    let last = r.driver.now();
    r.report.batches = r.driver.batches();
    let mut report = std::mem::take(&mut r.report);
    report.last_ts = last;
    report.devices = r.seen_device.iter().filter(|s| **s).count();
    let mut still: HashMap<Arc<str>, (usize, i64)> = HashMap::new();
    for ((_, rule), since) in &r.active {
        let e = still.entry(rule.clone()).or_default();
        e.0 += 1;
        e.1 += last.unwrap_or(*since) - since;
    }
    report.rules = r
        .rules
        .iter()
        .map(|(rule, acc)| {
            let (open, open_ms) = still.get(rule).copied().unwrap_or((0, 0));
            RuleSummary {
                rule: rule.to_string(),
                activations: acc.activations,
                clears: acc.clears,
                devices: acc.devices.len(),
                active_ms: acc.active_ms + open_ms,
                still_active: open,
            }
        })
        .collect();
    Ok(report)
}

/// The per-rule summary as a table.
pub fn summary_table(report: &ReplayReport) -> String {
    let mut s = format!(
        "{:<24} {:>11} {:>7} {:>8} {:>14} {:>12}\n",
        "rule", "activations", "clears", "devices", "active time", "still active"
    );
    for r in &report.rules {
        s.push_str(&format!(
            "{:<24} {:>11} {:>7} {:>8} {:>14} {:>12}\n",
            r.rule,
            r.activations,
            r.clears,
            r.devices,
            humantime::format_duration(std::time::Duration::from_secs(
                (r.active_ms.max(0) / 1000) as u64
            ))
            .to_string(),
            r.still_active
        ));
    }
    if report.rules.is_empty() {
        s.push_str("(no alarm transitions)\n");
    }
    s
}

/// Mapping mistakes that would silently score every fault as missed.
fn match_warnings(
    cfg: &Config,
    matches: &Matches,
    given: &[String],
    faults: &[score::Fault],
) -> Vec<String> {
    let known: std::collections::BTreeSet<&str> =
        cfg.rules.iter().map(|r| r.name.as_str()).collect();
    let mut out = Vec::new();
    for g in given {
        if let Some((kind, rules)) = g.split_once('=') {
            for r in rules.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                if !known.contains(r) {
                    out.push(format!(
                        "--match {}: the configuration has no rule \"{r}\"",
                        kind.trim()
                    ));
                }
            }
        }
    }
    let kinds: std::collections::BTreeSet<&str> = faults.iter().map(|f| f.kind.as_str()).collect();
    for kind in kinds {
        let rules = matches.rules_for(kind);
        if !rules.iter().any(|r| known.contains(r.as_str())) {
            out.push(format!(
                "no rule in the configuration detects \"{kind}\" (looked for: {}); every such fault will count as missed; map one with --match {kind}=RULE",
                rules.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}

fn open_output(path: &Option<PathBuf>) -> std::io::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::with_capacity(1 << 16, File::create(p)?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

/// `alsentry replay`. Exit codes: 0 = clean (or `--lenient`); 1 = some rows were bad;
/// 2 = nothing sensible could be replayed (unreadable input or header, truth); 78 = invalid
/// configuration (`telemetry::EX_CONFIG`).
pub fn main(args: ReplayArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return crate::telemetry::config_refused(&args.config, &e, "; not replaying"),
    };
    let matches = match Matches::with_overrides(&args.matches) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Truth is read first: a typo in its path should not cost a whole replay.
    let truth = match &args.truth {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => {
                let (faults, problems) = score::parse_truth(&t);
                for pr in &problems {
                    eprintln!("{}: {pr} (skipped)", p.display());
                }
                Some(faults)
            }
            Err(e) => {
                eprintln!("{}: cannot read the ground truth: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut out = match open_output(&args.output) {
        Ok(o) => o,
        Err(e) => {
            let name = args
                .output
                .as_ref()
                .map_or_else(|| "stdout".into(), |p| p.display().to_string());
            eprintln!("{name}: cannot open for writing: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = ReplayOptions {
        inputs: args.input.clone(),
        tick_ms: args.tick,
        reorder_tolerance_ms: args.reorder_tolerance,
        max_reported: args.max_errors,
        progress: true,
        report_dir: args.report.clone(),
        ..ReplayOptions::new(Vec::new())
    };
    let started = crate::clock::Stopwatch::start();
    let report = match run_replay(&cfg, &opts, &mut out) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    drop(out);
    let elapsed = started.elapsed().as_secs_f64();

    for p in &report.problems {
        eprintln!("{p}");
    }
    if report.bad_rows > report.problems.len() as u64 {
        eprintln!(
            "... and {} more bad row(s)",
            report.bad_rows - report.problems.len() as u64
        );
    }
    eprint!("{}", summary_table(&report));
    let span_s = match (report.first_ts, report.last_ts) {
        (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    eprintln!(
        "{} row(s) in {} batch(es) from {} file(s), {} device(s), {:.0} s of data, replayed in {:.2} s ({:.0} rows/s); {} transition(s)",
        report.rows,
        report.batches,
        report.files,
        report.devices,
        span_s,
        elapsed,
        report.rows as f64 / elapsed.max(1e-9),
        report.transitions.len()
    );
    if report.order.runs > 1 {
        eprintln!(
            "the input was not in time order: {} run(s) merged{}",
            report.order.runs,
            if report.order.spilled_chunks > 0 {
                format!(
                    ", after sorting {} chunk(s) in temporary files",
                    report.order.spilled_chunks
                )
            } else {
                String::new()
            }
        );
    }
    if report.late_rows > 0 {
        eprintln!(
            "{} row(s) were up to {} ms late and applied at the replay time",
            report.late_rows, args.reorder_tolerance
        );
    }
    if report.derived_rows > 0 {
        eprintln!(
            "{} row(s) of derived tags skipped (the engine computes them)",
            report.derived_rows
        );
    }
    if let Some(dir) = &args.report {
        eprintln!(
            "{} daily report file(s) written to {}",
            report.report_files.len(),
            dir.display()
        );
    }
    if report.bad_rows > 0 {
        let kinds: Vec<String> = report
            .bad_by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        eprintln!("{} bad row(s): {}", report.bad_rows, kinds.join(", "));
    }

    if let Some(faults) = truth {
        for w in match_warnings(&cfg, &matches, &args.matches, &faults) {
            eprintln!("warning: {w}");
        }
        let s = score::score(&ScoreInput {
            faults: &faults,
            activations: &report.activations,
            matches: &matches,
            margin_ms: args.margin,
            replay_start: report.first_ts.unwrap_or(0),
            replay_end: report.last_ts.unwrap_or(0),
            devices: report.devices,
        });
        eprint!("{}", score::table(&s));
        if let Some(p) = &args.score_json {
            let written = serde_json::to_vec_pretty(&s)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(p, b));
            if let Err(e) = written {
                eprintln!("{}: cannot write the score: {e}", p.display());
                return ExitCode::from(2);
            }
        }
    } else if args.score_json.is_some() {
        eprintln!("--score-json needs --truth; no score written");
    }

    if report.bad_rows > 0 && !args.lenient {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mapping_mistakes_are_warned_about() {
        let cfg = Config::from_str(
            Path::new("t.toml"),
            r#"
[agent]
id = "gw"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "pot-001"
endpoint = "tcp://127.0.0.1:5020"
tags = [ { name = "voltage", table = "input", address = 0, type = "f32" } ]
[[rules]]
name = "ae_event"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 8.0
"#,
        )
        .unwrap();
        let given = vec!["frozen=stuck_voltage".to_string()];
        let m = Matches::with_overrides(&given).unwrap();
        let fault = |kind: &str| score::Fault {
            device: "pot-001".into(),
            kind: kind.into(),
            start_ms: 0,
            end_ms: None,
            onset_ms: None,
        };
        let w = match_warnings(&cfg, &m, &given, &[fault("anode_effect"), fault("frozen")]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("no rule \"stuck_voltage\""), "{w:?}");
        assert!(w[1].contains("detects \"frozen\""), "{w:?}");
    }
}
