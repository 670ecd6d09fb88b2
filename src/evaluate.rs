//! `alsentry evaluate`: runs simulator scenarios through the real decoding and rule engine
//! (the same engine [`Driver`] as `run` and `replay`: batching, tick grid, decoding) on
//! simulated time, without sockets, replays the independent generator's samples through
//! `replay`'s path, and scores every alarm against the ground truth. EARLY-WARNING.md is this
//! command's `--markdown` output (bench/early_warning.sh).
//!
//! Scoring (one activation = an alarm entering active_unacked):
//! - *true*: a rule that detects the fault's kind ([`detecting_rules`]) on the fault's device
//!   (the area for line faults) within [start, end + 60 s], or an `ae_*` rule on an anode-effect
//!   cell between the precursor's start and the voltage jump (a warning ahead);
//! - *during a fault*: any other activation on a device while it has a process, sensor or
//!   communication fault (or in the 10 min after): not a healthy cell, reported apart;
//! - *false*: everything else, i.e. every alarm on a healthy cell, including during metal
//!   tapping, anode changes and beam moves (operations, not faults).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;
use crate::core::decode::{decode_at, Image, Table};
use crate::core::driver::{sample_of, Cadence, Driver};
use crate::core::engine::{
    AlarmEvent, Engine, SampleBatch, AREA_DEVICE, COMM_LOSS_RULE, FLOOD_RULE,
};
use crate::core::model::{BadReason, Priority, Quality, Ts};
use crate::sim::truth::Truth;
use crate::sim::{Plant, Scenario, TruthEvent};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Agent configuration whose devices match the scenario's (e.g. config/sim.toml).
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG")]
    pub config: PathBuf,
    /// Calibration scenarios (run with every `--seed`, and with every `--heldout-seed` for the
    /// held-out figures).
    #[arg(long = "scenario", value_name = "FILE")]
    pub scenarios: Vec<PathBuf>,
    /// Calibration seeds (default: each scenario's own).
    #[arg(long = "seed", value_name = "N")]
    pub seeds: Vec<u64>,
    /// Scenarios never used for tuning: reported as held out, with every seed.
    #[arg(long = "heldout-scenario", value_name = "FILE")]
    pub heldout_scenarios: Vec<PathBuf>,
    /// Seeds never used for tuning: every scenario runs with them too, reported as held out.
    #[arg(long = "heldout-seed", value_name = "N")]
    pub heldout_seeds: Vec<u64>,
    /// Samples from another generator (long-form CSV `ts,device,tag,value`, or a directory of
    /// them), replayed through the presets; pairs with `--independent-truth` in order.
    #[arg(long = "independent", value_name = "CSV|DIR")]
    pub independent: Vec<PathBuf>,
    /// Ground truth (JSON lines) of each `--independent` input.
    #[arg(long = "independent-truth", value_name = "FILE")]
    pub independent_truth: Vec<PathBuf>,
    /// Configuration for the `--independent` replays (default: `--config`).
    #[arg(long = "independent-config", value_name = "FILE")]
    pub independent_config: Option<PathBuf>,
    /// How long to run a scenario (default: until its last fault ends, plus 10 minutes).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Print the result as a Markdown document (EARLY-WARNING.md).
    #[arg(long)]
    pub markdown: bool,
    /// Prefix of the section titles (several configurations in one document).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
}

/// Which rules detect which fault.
pub fn detecting_rules(kind: &str) -> &'static [&'static str] {
    match kind {
        "anode_effect" => &["anode_effect"],
        "noise_burst" => &["cell_noise", "cell_noise_alarm"],
        "hot_cell" => &["hot_cell"],
        "line_current_drop" => &["line_current_low", "line_current_loss"],
        "potline_outage" => &["line_current_loss"],
        "curve_lag" => &["curve_lag", "curve_deviation", "furnace_low"],
        "draft_loss" => &["draft_loss"],
        "incomplete_combustion" => &["incomplete_combustion", "co_high", "o2_low", "o2_very_low"],
        "frozen" => &["voltage_frozen", "flue_frozen"],
        "dropout" => &["voltage_dropout", "voltage_stale"],
        "out_of_range" => &["voltage_out_of_range", "flue_out_of_range"],
        "unit_silent" => &["comm_loss"],
        _ => &[],
    }
}

/// An alarm that warns of an anode effect: its name starts with `ae_`.
pub fn is_ae_warning(rule: &str) -> bool {
    rule.starts_with("ae_")
}

/// Line-current rules: one area alarm per dip is their target, not silence.
fn is_line_rule(rule: &str) -> bool {
    rule.starts_with("line_current")
}

/// After an anode effect ends, no AE warning for this long (the issue's 10 minutes).
const AFTER_AE_MS: Ts = 600_000;
/// After a fault or an operation, its effects still count for this long.
const AFTER_MS: Ts = 600_000;

/// One fault or operation of the ground truth, start and end merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub fault_id: u64,
    pub kind: String,
    /// `process`, `operation`, `sensor` or `comm`.
    pub class: String,
    pub device: String,
    pub start_ms: Ts,
    pub end_ms: Ts,
    pub onset_ms: Option<Ts>,
    /// Anode effects: `slow`, `fast` or `none`.
    pub precursor: Option<String>,
}

fn class_of(kind: &str) -> &'static str {
    match kind {
        "tapping" | "anode_change" | "beam_move" => "operation",
        "frozen" | "dropout" | "out_of_range" | "sensor_noise" => "sensor",
        "unit_silent" | "slow_unit" | "exception" | "conn_drop" | "hostile_reply" => "comm",
        _ => "process",
    }
}

impl Fault {
    fn from_truth(e: &TruthEvent) -> Fault {
        Fault {
            fault_id: e.fault_id as u64,
            kind: e.kind.to_string(),
            class: if e.class.is_empty() {
                class_of(e.kind).to_string()
            } else {
                e.class.to_string()
            },
            device: e.device.clone(),
            start_ms: e.start_ms,
            end_ms: e.end_ms,
            onset_ms: e.onset_ms,
            precursor: e.precursor.map(str::to_string),
        }
    }

    fn is_ae(&self) -> bool {
        self.kind == "anode_effect"
    }

    fn is_line(&self) -> bool {
        self.kind.contains("line") || self.kind.contains("outage")
    }
}

/// Reads ground truth as JSON lines (the simulator's format: `phase` start/end lines per
/// `fault_id` and device; a file with one line per fault works too).
pub fn parse_truth(text: &str) -> anyhow::Result<Vec<Fault>> {
    let mut by: BTreeMap<(u64, String, String), Fault> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("truth line {}", n + 1))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let i = |k: &str| v.get(k).and_then(|x| x.as_i64());
        let kind = s("kind").with_context(|| format!("truth line {}: no kind", n + 1))?;
        let device = s("device").unwrap_or_default();
        let fault_id = v
            .get("fault_id")
            .and_then(|x| x.as_u64())
            .unwrap_or(n as u64);
        let start = i("start_ms").with_context(|| format!("truth line {}: no start_ms", n + 1))?;
        let end = i("end_ms").unwrap_or(start);
        let f = by
            .entry((fault_id, device.clone(), kind.clone()))
            .or_insert_with(|| Fault {
                fault_id,
                class: s("class").unwrap_or_else(|| class_of(&kind).to_string()),
                kind,
                device,
                start_ms: start,
                end_ms: end,
                onset_ms: None,
                precursor: None,
            });
        f.start_ms = f.start_ms.min(start);
        f.end_ms = f.end_ms.max(end);
        f.onset_ms = f.onset_ms.or(i("onset_ms"));
        f.precursor = f.precursor.take().or(s("precursor"));
    }
    let mut v: Vec<Fault> = by.into_values().collect();
    v.sort_by_key(|f| (f.start_ms, f.device.clone()));
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Detects a fault, or warns of an anode effect ahead.
    True,
    /// On a device that has a fault: not a healthy cell.
    DuringFault,
    /// On a healthy device.
    False,
}

/// One annunciation.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub device: String,
    pub rule: String,
    pub priority: Priority,
    pub at: Ts,
    pub verdict: Verdict,
    /// What happened on the device in the hour before (operations, faults), for alarms that
    /// detect nothing: why it fired is read from this, not guessed.
    pub context: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultScore {
    pub kind: String,
    pub device: String,
    pub start_ms: Ts,
    pub end_ms: Ts,
    pub onset_ms: Option<Ts>,
    pub precursor: Option<String>,
    /// First activation of a detecting rule: (rule, ms after start or onset).
    pub detected: Option<(String, Ts)>,
    /// First `ae_*` warning before onset: (rule, lead ms).
    pub warned: Option<(String, Ts)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// When the scored span begins (ms since the epoch, as the faults' times).
    pub start_ms: Ts,
    pub duration_ms: Ts,
    pub cells: usize,
    pub faults: Vec<FaultScore>,
    pub acts: Vec<Act>,
    /// Cell time where an `ae_*` warning could fire (outside anode effects and the 10 min
    /// after them, and outside line faults), ms.
    pub ae_eligible_ms: Ts,
    /// `ae_*` activations during an anode effect or in the 10 min after it.
    pub ae_during_ae: usize,
    /// False activations during a tapping, an anode change or a beam move (or 10 min after).
    pub during_operations: Vec<Act>,
    /// Critical activations (other than detections) on a device with a sensor fault.
    pub critical_on_sensor_fault: Vec<Act>,
    /// Per line fault (start, kind): area activations during it.
    pub line_faults: Vec<(Ts, String, usize)>,
}

impl Report {
    /// False `ae_*` activations.
    pub fn false_warnings(&self) -> usize {
        self.acts
            .iter()
            .filter(|a| a.verdict == Verdict::False && is_ae_warning(&a.rule))
            .count()
    }

    pub fn annunciations(&self) -> usize {
        self.acts.len()
    }

    pub fn by_rule(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in &self.acts {
            *m.entry(a.rule.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Runs one scenario through the engine on simulated time.
pub fn run(
    cfg: &Config,
    scenario: Scenario,
    seed: u64,
    duration_ms: Option<Ts>,
) -> anyhow::Result<Report> {
    let name = scenario.plant.name.clone();
    let tick_ms = scenario.tick.as_millis().max(1) as i64;
    // Faults of the scenario and of its seeded schedule.
    let end_of_faults = scenario.end_for_seed(seed).as_millis() as i64;
    let duration_ms = duration_ms.unwrap_or(end_of_faults + 600_000).max(60_000);
    let epoch: Ts = 1_767_225_600_000; // 2026-01-01T00:00:00Z: any fixed origin keeps runs identical
    let truth = Truth::new(None, epoch, scenario.tick).context("ground truth")?;
    let mut plant = Plant::new(scenario.clone(), seed);
    let engine = Engine::new(&cfg.spec);
    let mut driver = Driver::new(engine, Cadence::default());
    // Config device index → plant device index.
    let map: Vec<Option<usize>> = cfg
        .devices
        .iter()
        .map(|d| scenario.devices.iter().position(|s| s.name == d.name))
        .collect();
    let cells = cfg
        .devices
        .iter()
        .filter(|d| d.template.as_deref() == Some("cell"))
        .count();
    let mut all: Vec<AlarmEvent> = Vec::new();
    let mut next_poll: Vec<Ts> = cfg.devices.iter().map(|_| 0).collect();
    let ticks = duration_ms / tick_ms;
    // Simulated seconds on stderr when it is a terminal (replay's progress bar).
    let mut progress =
        crate::replay::progress::Progress::sim_time(&name, (duration_ms / 1000) as u64);
    for _ in 0..ticks {
        progress.set(((plant.tick() as i64 * tick_ms) / 1000) as u64);
        let transitions = plant.step();
        truth.record(&scenario, &transitions);
        let now = truth.ms_at(plant.tick());
        let rel = now - epoch;
        for (di, d) in cfg.devices.iter().enumerate() {
            if rel < next_poll[di] {
                continue;
            }
            next_poll[di] += d.poll_ms;
            let Some(pi) = map[di] else { continue };
            let silent = plant.comm(pi).is_some_and(|c| c.silent);
            let Some(image) = plant.image(pi) else {
                continue;
            };
            let values = d
                .tags
                .iter()
                .enumerate()
                .map(|(ti, t)| {
                    if silent {
                        return (ti as u16, f64::NAN, Quality::Bad(BadReason::Timeout));
                    }
                    // The plant's whole tables, as one read from address 0 each.
                    let table = match t.encoding.table {
                        Table::Input => Image::Registers {
                            start: 0,
                            words: &image.input,
                        },
                        Table::Holding => Image::Registers {
                            start: 0,
                            words: &image.holding,
                        },
                        Table::Discrete => Image::Bits {
                            start: 0,
                            bits: &image.discrete,
                        },
                        Table::Coil => Image::Bits {
                            start: 0,
                            bits: &[],
                        },
                    };
                    let (v, q) = sample_of(decode_at(&t.encoding, t.address, table));
                    (ti as u16, v, q)
                })
                .collect();
            let batch = SampleBatch {
                device: di as u32,
                ts: now,
                values,
            };
            driver.apply(&batch, now);
        }
        driver.advance(now);
        all.extend(driver.drain_events());
    }
    progress.finish();
    let faults: Vec<Fault> = merge_truth(&truth.events())
        .iter()
        .map(Fault::from_truth)
        .collect();
    let acts: Vec<(String, String, Priority, Ts)> = all
        .iter()
        .filter(|e| is_activation(e))
        .map(|e| {
            (
                e.device.to_string(),
                e.rule.to_string(),
                e.priority,
                e.transition.at,
            )
        })
        .collect();
    Ok(score(
        &name,
        seed,
        (epoch, epoch + duration_ms),
        cells,
        &faults,
        &acts,
    ))
}

/// Start and end lines of one fault on one device, merged.
pub fn merge_truth(events: &[TruthEvent]) -> Vec<TruthEvent> {
    let mut by: HashMap<(usize, String), TruthEvent> = HashMap::new();
    for e in events {
        let key = (e.fault_id, e.device.clone());
        let entry = by.entry(key).or_insert_with(|| e.clone());
        if e.phase == "end" {
            entry.end_ms = e.end_ms;
            entry.end = e.end.clone();
        }
        if e.onset_ms.is_some() {
            entry.onset_ms = e.onset_ms;
        }
    }
    let mut v: Vec<TruthEvent> = by.into_values().collect();
    v.sort_by_key(|e| (e.start_ms, e.device.clone()));
    v
}

fn is_activation(e: &AlarmEvent) -> bool {
    e.transition.to == "active_unacked" && e.transition.from != "active_unacked"
}

/// Scores activations `(device, rule, priority, at)` over `span` (start, end ms) of `cells` cells.
pub fn score(
    scenario: &str,
    seed: u64,
    span: (Ts, Ts),
    cells: usize,
    truth: &[Fault],
    acts: &[(String, String, Priority, Ts)],
) -> Report {
    let on_device = |f: &Fault, device: &str| {
        f.device == device || (f.is_line() && device == AREA_DEVICE) || f.device == "*"
    };
    let verdict = |device: &str, rule: &str, at: Ts| -> Verdict {
        let detects = truth.iter().any(|f| {
            on_device(f, device)
                && ((detecting_rules(&f.kind).contains(&rule)
                    && at >= f.start_ms
                    && at <= f.end_ms + 60_000)
                    || (f.is_ae()
                        && is_ae_warning(rule)
                        && at >= f.start_ms
                        && at < f.onset_ms.unwrap_or(f.start_ms)))
        });
        if detects {
            return Verdict::True;
        }
        let faulty = truth.iter().any(|f| {
            f.class != "operation"
                && on_device(f, device)
                && at >= f.start_ms
                && at <= f.end_ms + AFTER_MS
        });
        if faulty {
            Verdict::DuringFault
        } else {
            Verdict::False
        }
    };
    let acts: Vec<Act> = acts
        .iter()
        .map(|(device, rule, priority, at)| Act {
            verdict: verdict(device, rule, *at),
            context: context(truth, device, *at, span.0),
            device: device.clone(),
            rule: rule.clone(),
            priority: *priority,
            at: *at,
        })
        .collect();
    let mut faults = Vec::new();
    for f in truth
        .iter()
        .filter(|f| !detecting_rules(&f.kind).is_empty())
    {
        let rules = detecting_rules(&f.kind);
        let reference = f.onset_ms.unwrap_or(f.start_ms);
        let detected = acts
            .iter()
            .filter(|a| on_device(f, &a.device))
            .filter(|a| {
                rules.contains(&a.rule.as_str()) && a.at >= f.start_ms && a.at <= f.end_ms + 60_000
            })
            .map(|a| (a.rule.clone(), a.at - reference))
            .next();
        let warned = f.onset_ms.filter(|_| f.is_ae()).and_then(|onset| {
            acts.iter()
                .filter(|a| a.device == f.device && is_ae_warning(&a.rule))
                .filter(|a| a.at >= f.start_ms && a.at < onset)
                .map(|a| (a.rule.clone(), onset - a.at))
                .next()
        });
        faults.push(FaultScore {
            kind: f.kind.clone(),
            device: f.device.clone(),
            start_ms: f.start_ms,
            end_ms: f.end_ms,
            onset_ms: f.onset_ms,
            precursor: f.precursor.clone(),
            detected,
            warned,
        });
    }
    let ae_during_ae = acts
        .iter()
        .filter(|a| is_ae_warning(&a.rule))
        .filter(|a| {
            truth.iter().any(|f| {
                f.is_ae()
                    && f.device == a.device
                    && a.at >= f.onset_ms.unwrap_or(f.start_ms)
                    && a.at <= f.end_ms + AFTER_AE_MS
            })
        })
        .count();
    let during_operations = acts
        .iter()
        .filter(|a| a.verdict == Verdict::False)
        .filter(|a| {
            truth.iter().any(|f| {
                f.class == "operation"
                    && f.device == a.device
                    && a.at >= f.start_ms
                    && a.at <= f.end_ms + AFTER_MS
            })
        })
        .cloned()
        .collect();
    let critical_on_sensor_fault = acts
        .iter()
        .filter(|a| a.priority == Priority::Critical && a.verdict != Verdict::True)
        .filter(|a| {
            truth.iter().any(|f| {
                f.class == "sensor"
                    && f.device == a.device
                    && a.at >= f.start_ms
                    && a.at <= f.end_ms + AFTER_MS
            })
        })
        .cloned()
        .collect();
    // One entry per line fault (the truth has a line per cell, maybe each with its own id).
    let mut line_faults: BTreeMap<(Ts, String), Ts> = BTreeMap::new();
    for f in truth.iter().filter(|f| f.is_line()) {
        let end = line_faults
            .entry((f.start_ms, f.kind.clone()))
            .or_insert(f.end_ms);
        *end = (*end).max(f.end_ms);
    }
    let line_faults = line_faults
        .iter()
        .map(|((start, kind), end)| {
            let n = acts
                .iter()
                .filter(|a| a.device == AREA_DEVICE && a.at >= *start && a.at <= end + 60_000)
                .count();
            (*start, kind.clone(), n)
        })
        .collect();
    // Cell time where an AE warning could fire: each cell's span minus its anode effects (to
    // 10 min after) and the line faults.
    let mut excluded: BTreeMap<&str, Vec<(Ts, Ts)>> = BTreeMap::new();
    for f in truth.iter().filter(|f| f.is_ae() || f.is_line()) {
        let end = if f.is_ae() {
            f.end_ms + AFTER_AE_MS
        } else {
            f.end_ms
        };
        excluded
            .entry(f.device.as_str())
            .or_default()
            .push((f.start_ms.max(span.0), end.min(span.1)));
    }
    let excluded_ms: Ts = excluded.values().map(|v| union_ms(v.clone())).sum();
    let ae_eligible_ms = (cells as Ts * (span.1 - span.0) - excluded_ms).max(0);
    Report {
        scenario: scenario.to_string(),
        seed,
        start_ms: span.0,
        duration_ms: span.1 - span.0,
        cells,
        faults,
        acts,
        ae_eligible_ms,
        ae_during_ae,
        during_operations,
        critical_on_sensor_fault,
        line_faults,
    }
}

/// The truth events of `device` that overlap the hour before `at`, as "kind START..END" in
/// minutes relative to `at` (negative: before), with the run time of the alarm first.
fn context(truth: &[Fault], device: &str, at: Ts, start: Ts) -> String {
    let rel = |t: Ts| (t - at) as f64 / 60_000.0;
    let mut parts = vec![format!("at {:.1} min", (at - start) as f64 / 60_000.0)];
    for f in truth
        .iter()
        .filter(|f| f.device == device && f.end_ms >= at - 3_600_000 && f.start_ms <= at)
    {
        parts.push(format!(
            "{} {:+.1}..{:+.1}",
            f.kind,
            rel(f.start_ms),
            rel(f.end_ms)
        ));
    }
    parts.join("; ")
}

/// Length of the union of intervals.
fn union_ms(mut v: Vec<(Ts, Ts)>) -> Ts {
    v.retain(|(a, b)| b > a);
    v.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(Ts, Ts)> = None;
    for (a, b) in v {
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map_or(0, |(a, b)| b - a)
}

fn median(mut v: Vec<Ts>) -> Option<Ts> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn secs(ms: Option<Ts>) -> String {
    ms.map(|d| format!("{:.1}", d as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// The figures of one set of runs (calibration, held out, independent) against the issue's
/// targets, as Markdown.
pub fn section(title: &str, reports: &[Report]) -> String {
    let mut out = format!("## {title}\n\n");
    if reports.is_empty() {
        out.push_str("No runs in this set.\n\n");
        return out;
    }
    out.push_str("| run | seed | hours | cells | annunciations |\n|---|---|---|---|---|\n");
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} |\n",
            r.scenario,
            r.seed,
            r.duration_ms as f64 / 3_600_000.0,
            r.cells,
            r.annunciations()
        ));
    }
    let faults: Vec<&FaultScore> = reports.iter().flat_map(|r| &r.faults).collect();
    let aes: Vec<&&FaultScore> = faults.iter().filter(|f| f.kind == "anode_effect").collect();
    let ae_within_5s = aes
        .iter()
        .filter(|f| f.detected.as_ref().is_some_and(|d| d.1 <= 5_000))
        .count();
    let ae_max = aes
        .iter()
        .filter_map(|f| f.detected.as_ref().map(|d| d.1))
        .max();
    let pre: Vec<&&&FaultScore> = aes
        .iter()
        .filter(|f| f.precursor.as_deref() != Some("none"))
        .collect();
    let warned = pre.iter().filter(|f| f.warned.is_some()).count();
    let lead = median(
        pre.iter()
            .filter_map(|f| f.warned.as_ref().map(|w| w.1))
            .collect(),
    );
    let sudden = aes.len() - pre.len();
    let sudden_warned = aes
        .iter()
        .filter(|f| f.precursor.as_deref() == Some("none") && f.warned.is_some())
        .count();
    let false_ae: usize = reports.iter().map(Report::false_warnings).sum();
    let eligible_h: f64 = reports
        .iter()
        .map(|r| r.ae_eligible_ms as f64 / 3_600_000.0)
        .sum();
    let rate = |n: usize, h: f64| if h > 0.0 { n as f64 * 100.0 / h } else { 0.0 };
    let other_false: Vec<&Act> = reports
        .iter()
        .flat_map(|r| &r.acts)
        .filter(|a| {
            a.verdict == Verdict::False
                && !is_ae_warning(&a.rule)
                && !is_line_rule(&a.rule)
                && a.priority <= Priority::Medium
        })
        .collect();
    let ae_during: usize = reports.iter().map(|r| r.ae_during_ae).sum();
    let ops: Vec<&Act> = reports.iter().flat_map(|r| &r.during_operations).collect();
    let crit: Vec<&Act> = reports
        .iter()
        .flat_map(|r| &r.critical_on_sensor_fault)
        .collect();
    let dips: Vec<usize> = reports
        .iter()
        .flat_map(|r| r.line_faults.iter().map(|l| l.2))
        .collect();
    let hours: f64 = reports
        .iter()
        .map(|r| r.duration_ms as f64 / 3_600_000.0)
        .sum();
    let total: usize = reports.iter().map(Report::annunciations).sum();
    let peak_10min = reports.iter().map(peak_per_10min).max().unwrap_or(0);
    let met = |ok: bool| if ok { "met" } else { "**missed**" };
    out.push_str("\n| target | measured | |\n|---|---|---|\n");
    out.push_str(&format!(
        "| every anode effect alarmed within 5 s of the voltage jump | {ae_within_5s}/{}, at most {} s | {} |\n",
        aes.len(),
        secs(ae_max),
        met(ae_within_5s == aes.len())
    ));
    let share = if pre.is_empty() {
        100.0
    } else {
        warned as f64 * 100.0 / pre.len() as f64
    };
    out.push_str(&format!(
        "| ≥ 80 % of AEs with a depletion precursor warned ahead by an `ae_*` rule | {warned}/{} ({share:.0} %) | {} |\n",
        pre.len(),
        met(share >= 80.0)
    ));
    out.push_str(&format!(
        "| median lead ≥ 5 min | {} | {} |\n",
        lead.map_or("-".into(), |l| format!("{:.1} min", l as f64 / 60_000.0)),
        met(lead.is_some_and(|l| l >= 300_000) || pre.is_empty())
    ));
    out.push_str(&format!(
        "| ≤ 1 false `ae_*` warning per 100 cell-hours (over the {eligible_h:.0} cell-hours where one could fire) | {false_ae} = {:.2} per 100 cell-hours | {} |\n",
        rate(false_ae, eligible_h),
        met(rate(false_ae, eligible_h) <= 1.0)
    ));
    out.push_str(&format!(
        "| no other preset raises medium or above on a healthy cell (line-current rules aside) | {} | {} |\n",
        other_false.len(),
        met(other_false.is_empty())
    ));
    out.push_str(&format!(
        "| no AE warning during an AE or in the 10 min after | {ae_during} | {} |\n",
        met(ae_during == 0)
    ));
    out.push_str(&format!(
        "| tapping, anode changes and beam moves raise no alarm | {} | {} |\n",
        ops.len(),
        met(ops.is_empty())
    ));
    out.push_str(&format!(
        "| a line-current dip gives one area alarm | {} dips: {:?} | {} |\n",
        dips.len(),
        dips,
        met(dips.iter().all(|&n| n == 1))
    ));
    out.push_str(&format!(
        "| a sensor fault never raises a critical process alarm | {} | {} |\n",
        crit.len(),
        met(crit.is_empty())
    ));
    out.push_str(&format!(
        "| alarm rate per operator (one per area) vs ISA-18.2 ~6/h acceptable, ~12/h manageable (docs/STANDARDS.md) | {:.1}/h average, peak {peak_10min} in 10 min | {} |\n",
        if hours > 0.0 { total as f64 / hours } else { 0.0 },
        met(hours > 0.0 && total as f64 / hours <= 6.0)
    ));
    out.push_str(&format!(
        "\nAEs without a precursor (sudden): {sudden}, warned ahead: {sudden_warned} (not expected: nothing announces them).\n"
    ));
    // False alarms, by rule and priority.
    let mut by: BTreeMap<(Priority, String), (usize, usize)> = BTreeMap::new();
    for a in reports.iter().flat_map(|r| &r.acts) {
        let e = by.entry((a.priority, a.rule.clone())).or_default();
        match a.verdict {
            Verdict::False => e.0 += 1,
            Verdict::DuringFault => e.1 += 1,
            Verdict::True => {}
        }
    }
    by.retain(|_, v| v.0 + v.1 > 0);
    out.push_str("\n### Alarms that detect nothing, by rule and priority\n\n");
    if by.is_empty() {
        out.push_str("None.\n");
    } else {
        out.push_str("| priority | rule | false (healthy cell) | on a device with another fault |\n|---|---|---|---|\n");
        for ((p, rule), (f, d)) in &by {
            out.push_str(&format!("| {p} | {rule} | {f} | {d} |\n"));
        }
    }
    if !ops.is_empty() {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &ops {
            *m.entry(a.rule.as_str()).or_insert(0) += 1;
        }
        out.push_str(&format!(
            "\nFalse alarms during operations, by rule: {m:?}\n"
        ));
    }
    let false_acts: Vec<(&Report, &Act)> = reports
        .iter()
        .flat_map(|r| r.acts.iter().map(move |a| (r, a)))
        .filter(|(_, a)| a.verdict == Verdict::False)
        .collect();
    if !false_acts.is_empty() {
        out.push_str("\n### False alarms one by one (what the device did in the hour before, min relative to the alarm)\n\n");
        out.push_str("| run | seed | device | rule | context |\n|---|---|---|---|---|\n");
        for (r, a) in false_acts {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.scenario, r.seed, a.device, a.rule, a.context
            ));
        }
    }
    out.push_str("\n### Detection by fault\n\n");
    out.push_str(&fault_table(&faults));
    out.push('\n');
    out
}

/// The most annunciations in any 10-minute window of one run.
fn peak_per_10min(r: &Report) -> usize {
    let mut at: Vec<Ts> = r.acts.iter().map(|a| a.at).collect();
    at.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= 600_000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Detection delay and warning lead per fault kind (and AE precursor kind).
fn fault_table(faults: &[&FaultScore]) -> String {
    let mut by_kind: BTreeMap<String, Vec<&FaultScore>> = BTreeMap::new();
    for f in faults {
        let key = match &f.precursor {
            Some(p) => format!("{} ({p} precursor)", f.kind),
            None => f.kind.clone(),
        };
        by_kind.entry(key).or_default().push(f);
    }
    let mut out = String::from("| fault | faults | detected | median delay s | max delay s | warned before onset | median lead min |\n|---|---|---|---|---|---|---|\n");
    for (kind, fs) in &by_kind {
        let n = fs.len();
        let delays: Vec<Ts> = fs
            .iter()
            .filter_map(|f| f.detected.as_ref().map(|d| d.1))
            .collect();
        let with_onset = fs.iter().filter(|f| f.onset_ms.is_some()).count();
        let warned = fs.iter().filter(|f| f.warned.is_some()).count();
        let lead = median(
            fs.iter()
                .filter_map(|f| f.warned.as_ref().map(|w| w.1))
                .collect(),
        )
        .map_or("-".into(), |l| format!("{:.1}", l as f64 / 60_000.0));
        out.push_str(&format!(
            "| {kind} | {n} | {}/{n} | {} | {} | {} | {lead} |\n",
            delays.len(),
            secs(median(delays.clone())),
            secs(delays.iter().copied().max()),
            if with_onset > 0 {
                format!("{warned}/{with_onset}")
            } else {
                "-".into()
            },
        ));
    }
    out
}

/// Replays the independent generator's samples through `cfg` and scores them against its truth.
pub fn run_independent(
    cfg: &Config,
    input: &std::path::Path,
    truth_path: &std::path::Path,
) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(truth_path).with_context(|| format!("{}", truth_path.display()))?;
    let truth = parse_truth(&text).with_context(|| format!("{}", truth_path.display()))?;
    let opts = crate::replay::ReplayOptions::new(vec![input.to_path_buf()]);
    let mut sink = std::io::sink();
    let rep = crate::replay::run_replay(cfg, &opts, &mut sink)
        .with_context(|| format!("replaying {}", input.display()))?;
    let priority = |rule: &str| -> Priority {
        match rule {
            COMM_LOSS_RULE => cfg.spec.alarms().comm_loss_priority,
            FLOOD_RULE => Priority::High,
            r => cfg
                .spec
                .rule(r)
                .map_or(Priority::Medium, |x| x.alarm.priority),
        }
    };
    let acts: Vec<(String, String, Priority, Ts)> = rep
        .activations
        .iter()
        .map(|a| (a.device.clone(), a.rule.clone(), priority(&a.rule), a.at))
        .collect();
    let span = (rep.first_ts.unwrap_or(0), rep.last_ts.unwrap_or(0));
    let cells = cfg
        .devices
        .iter()
        .filter(|d| d.template.as_deref() == Some("cell"))
        .count();
    // With its folder: each seed of a generator writes the same file name into its own folder.
    let tail: Vec<String> = input
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    let name = tail.into_iter().rev().collect::<Vec<_>>().join("/");
    Ok(score(&name, 0, span, cells, &truth, &acts))
}
pub fn main(args: EvaluateArgs) -> ExitCode {
    match evaluate(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure::Config(path, e)) => {
            crate::telemetry::config_refused(&path, &e, "; not evaluating")
        }
        Err(Failure::Usage(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Config(PathBuf, crate::config::ConfigError),
    Usage(String),
    Run(anyhow::Error),
}

fn evaluate(args: &EvaluateArgs) -> Result<String, Failure> {
    let cfg = Config::load(&args.config).map_err(|e| Failure::Config(args.config.clone(), e))?;
    let duration = match args
        .duration
        .as_deref()
        .map(crate::config::units::parse_duration_ms)
    {
        Some(Err(e)) => return Err(Failure::Usage(format!("--duration: {e}"))),
        Some(Ok(d)) => Some(d),
        None => None,
    };
    if args.independent.len() != args.independent_truth.len() {
        return Err(Failure::Usage(
            "give one --independent-truth per --independent, in the same order".into(),
        ));
    }
    let load = |path: &PathBuf| {
        Scenario::from_file(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
    };
    let run_set = |runs: &[(PathBuf, Option<u64>)]| -> Result<Vec<Report>, Failure> {
        let mut reports = Vec::new();
        for (path, seed) in runs {
            let scenario = load(path)?;
            let seed = seed.unwrap_or(scenario.plant.seed);
            let r = run(&cfg, scenario, seed, duration)
                .map_err(|e| Failure::Run(e.context(path.display().to_string())))?;
            eprintln!(
                "{}: seed {seed}, {:.1} h simulated, {} faults, {} alarms raised, {} false ae_* warnings: {:?}",
                path.display(),
                r.duration_ms as f64 / 3_600_000.0,
                r.faults.len(),
                r.annunciations(),
                r.false_warnings(),
                r.by_rule()
            );
            reports.push(r);
        }
        Ok(reports)
    };
    let seeds = |list: &[u64]| -> Vec<Option<u64>> {
        if list.is_empty() {
            vec![None]
        } else {
            list.iter().copied().map(Some).collect()
        }
    };
    let cross = |paths: &[PathBuf], seeds: &[Option<u64>]| -> Vec<(PathBuf, Option<u64>)> {
        paths
            .iter()
            .flat_map(|p| seeds.iter().map(move |s| (p.clone(), *s)))
            .collect()
    };
    let calibration = run_set(&cross(&args.scenarios, &seeds(&args.seeds)))?;
    let mut heldout_runs = Vec::new();
    if !args.heldout_seeds.is_empty() {
        let hs: Vec<Option<u64>> = args.heldout_seeds.iter().copied().map(Some).collect();
        heldout_runs.extend(cross(&args.scenarios, &hs));
        heldout_runs.extend(cross(&args.heldout_scenarios, &hs));
    }
    heldout_runs.extend(cross(&args.heldout_scenarios, &seeds(&args.seeds)));
    let heldout = run_set(&heldout_runs)?;
    let mut independent = Vec::new();
    if !args.independent.is_empty() {
        let icfg_path = args.independent_config.as_ref().unwrap_or(&args.config);
        let icfg = Config::load(icfg_path).map_err(|e| Failure::Config(icfg_path.clone(), e))?;
        for (input, truth) in args.independent.iter().zip(&args.independent_truth) {
            let r = run_independent(&icfg, input, truth).map_err(Failure::Run)?;
            eprintln!(
                "{}: {:.1} h replayed, {} alarms raised, {} false ae_* warnings: {:?}",
                input.display(),
                r.duration_ms as f64 / 3_600_000.0,
                r.annunciations(),
                r.false_warnings(),
                r.by_rule()
            );
            independent.push(r);
        }
    }
    let mut out = String::new();
    if args.markdown {
        out.push_str(&markdown_head(args));
    }
    let label = args
        .label
        .as_deref()
        .map_or_else(String::new, |l| format!("{l}: "));
    if !args.scenarios.is_empty() {
        out.push_str(&section(
            &format!("{label}calibration set (the presets were tuned on these runs)"),
            &calibration,
        ));
    }
    if !heldout_runs.is_empty() {
        out.push_str(&section(
            &format!("{label}held out (seeds and scenarios never used for tuning)"),
            &heldout,
        ));
    }
    if !args.independent.is_empty() {
        out.push_str(&section(
            &format!("{label}independent generator (a different model; its samples replayed through the presets)"),
            &independent,
        ));
    }
    Ok(out)
}

fn markdown_head(args: &EvaluateArgs) -> String {
    let mut cmd = format!("alsentry evaluate --config {}", args.config.display());
    let mut add = |flag: &str, v: String| cmd.push_str(&format!(" {flag} {v}"));
    for s in &args.scenarios {
        add("--scenario", s.display().to_string());
    }
    for s in &args.seeds {
        add("--seed", s.to_string());
    }
    for s in &args.heldout_scenarios {
        add("--heldout-scenario", s.display().to_string());
    }
    for s in &args.heldout_seeds {
        add("--heldout-seed", s.to_string());
    }
    if let Some(c) = &args.independent_config {
        add("--independent-config", c.display().to_string());
    }
    for (i, t) in args.independent.iter().zip(&args.independent_truth) {
        add("--independent", i.display().to_string());
        add("--independent-truth", t.display().to_string());
    }
    if let Some(d) = &args.duration {
        add("--duration", d.clone());
    }
    if let Some(l) = &args.label {
        add("--label", format!("\"{l}\""));
    }
    format!("```sh\n{cmd}\n```\n\n")
}
