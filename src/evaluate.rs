//! `alsentry evaluate`: runs a simulator scenario through the real decoding and rule engine
//! (the same engine [`Driver`] as `run` and `replay`: batching, tick grid, decoding) on
//! simulated time, without sockets, and scores the warnings against the simulator's ground
//! truth. An hour of plant replays in seconds, so rule presets can be tuned on every shipped
//! scenario (EARLY-WARNING.md is produced this way).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;
use crate::core::decode::{decode_at, Image, Table};
use crate::core::driver::{sample_of, Cadence, Driver};
use crate::core::engine::{AlarmEvent, Engine, SampleBatch};
use crate::core::model::{BadReason, Quality, Ts};
use crate::sim::truth::Truth;
use crate::sim::{Plant, Scenario, TruthEvent};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Agent configuration whose devices match the scenario's (e.g. config/sim.toml).
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG")]
    pub config: PathBuf,
    /// Simulator scenarios to run (each from its own start).
    #[arg(long = "scenario", value_name = "FILE", required = true)]
    pub scenarios: Vec<PathBuf>,
    /// Seeds to run each scenario with (default: the scenario's own).
    #[arg(long = "seed", value_name = "N")]
    pub seeds: Vec<u64>,
    /// How long to run a scenario (default: until its last fault ends, plus 10 minutes).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Print the result as a Markdown table.
    #[arg(long)]
    pub markdown: bool,
}

/// Which rules detect which simulated fault.
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

/// Rules whose activations count as early warnings of an anode effect.
pub const EARLY_WARNING_RULES: [&str; 2] = ["ae_warning", "ae_forecast"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultScore {
    pub kind: String,
    pub device: String,
    pub start_ms: Ts,
    pub end_ms: Ts,
    pub onset_ms: Option<Ts>,
    /// First activation of a detecting rule: (rule, ms after start or onset).
    pub detected: Option<(String, Ts)>,
    /// First early warning before onset: (rule, lead ms).
    pub warned: Option<(String, Ts)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_ms: Ts,
    pub cells: usize,
    pub faults: Vec<FaultScore>,
    /// Early warnings outside every anode-effect window.
    pub false_warnings: usize,
    /// All annunciations during a potline outage, by rule.
    pub outage_annunciations: BTreeMap<String, usize>,
    pub annunciations: usize,
    /// Activations by rule, over the whole run.
    pub by_rule: BTreeMap<String, usize>,
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
    let end_of_faults = scenario
        .faults
        .iter()
        .map(|f| f.end_tick as i64 * tick_ms)
        .max()
        .unwrap_or(0);
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
    Ok(score(
        &name,
        seed,
        duration_ms,
        cells,
        &merge_truth(&truth.events()),
        &all,
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

pub fn score(
    scenario: &str,
    seed: u64,
    duration_ms: Ts,
    cells: usize,
    truth: &[TruthEvent],
    events: &[AlarmEvent],
) -> Report {
    let acts: Vec<&AlarmEvent> = events.iter().filter(|e| is_activation(e)).collect();
    let mut faults = Vec::new();
    for f in truth {
        let rules = detecting_rules(f.kind);
        // Communication faults other than a silent unit live in the Modbus framing, which
        // this offline run does not model; the live tests cover them.
        if rules.is_empty() {
            continue;
        }
        // Line faults are detected by area alarms, everything else on the device itself.
        let line_fault = f.kind.contains("line") || f.kind.contains("outage");
        let same_device = |e: &&&AlarmEvent| {
            *e.device == *f.device || (line_fault && &*e.device == crate::core::engine::AREA_DEVICE)
        };
        let reference = f.onset_ms.unwrap_or(f.start_ms);
        let detected = acts
            .iter()
            .filter(same_device)
            .filter(|e| {
                rules.contains(&&*e.rule)
                    && e.transition.at >= f.start_ms
                    && e.transition.at <= f.end_ms + 60_000
            })
            .map(|e| (e.rule.to_string(), e.transition.at - reference))
            .next();
        let warned = f.onset_ms.and_then(|onset| {
            acts.iter()
                .filter(same_device)
                .filter(|e| {
                    EARLY_WARNING_RULES.contains(&&*e.rule)
                        && e.transition.at >= f.start_ms
                        && e.transition.at < onset
                })
                .map(|e| (e.rule.to_string(), onset - e.transition.at))
                .next()
        });
        faults.push(FaultScore {
            kind: f.kind.to_string(),
            device: f.device.clone(),
            start_ms: f.start_ms,
            end_ms: f.end_ms,
            onset_ms: f.onset_ms,
            detected,
            warned,
        });
    }
    let false_warnings = acts
        .iter()
        .filter(|e| EARLY_WARNING_RULES.contains(&&*e.rule))
        .filter(|e| {
            !truth.iter().any(|f| {
                f.kind == "anode_effect"
                    && f.device == *e.device
                    && e.transition.at >= f.start_ms
                    && e.transition.at <= f.end_ms + 600_000
            })
        })
        .count();
    let mut outage_annunciations = BTreeMap::new();
    let mut seen_outages = std::collections::HashSet::new();
    for f in truth
        .iter()
        .filter(|f| f.kind == "potline_outage" && seen_outages.insert(f.fault_id))
    {
        for e in acts
            .iter()
            .filter(|e| e.transition.at >= f.start_ms && e.transition.at <= f.end_ms)
        {
            *outage_annunciations.entry(e.rule.to_string()).or_insert(0) += 1;
        }
    }
    let mut by_rule = BTreeMap::new();
    for e in &acts {
        *by_rule.entry(e.rule.to_string()).or_insert(0) += 1;
    }
    Report {
        scenario: scenario.to_string(),
        seed,
        duration_ms,
        cells,
        faults,
        false_warnings,
        outage_annunciations,
        annunciations: acts.len(),
        by_rule,
    }
}

fn median(mut v: Vec<Ts>) -> Option<Ts> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// The summary table over many reports.
pub fn table(reports: &[Report], markdown: bool) -> String {
    let mut by_kind: BTreeMap<String, Vec<&FaultScore>> = BTreeMap::new();
    for r in reports {
        for f in &r.faults {
            by_kind.entry(f.kind.clone()).or_default().push(f);
        }
    }
    let mut out = String::new();
    let sep = if markdown { " | " } else { "  " };
    let head = [
        "fault",
        "faults",
        "detected",
        "median delay s",
        "max delay s",
        "warned before onset",
        "median lead s",
    ];
    if markdown {
        out.push_str(&format!(
            "| {} |\n|{}|\n",
            head.join(" | "),
            head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        ));
    } else {
        out.push_str(&format!(
            "{:<22}{:>7}{:>10}{:>16}{:>13}{:>21}{:>15}\n",
            head[0], head[1], head[2], head[3], head[4], head[5], head[6]
        ));
    }
    for (kind, fs) in &by_kind {
        let n = fs.len();
        let det = fs.iter().filter(|f| f.detected.is_some()).count();
        let delay = median(
            fs.iter()
                .filter_map(|f| f.detected.as_ref().map(|d| d.1))
                .collect(),
        )
        .map(|d| format!("{:.1}", d as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
        let max_delay = fs
            .iter()
            .filter_map(|f| f.detected.as_ref().map(|d| d.1))
            .max()
            .map(|d| format!("{:.1}", d as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let with_onset = fs.iter().filter(|f| f.onset_ms.is_some()).count();
        let warned = fs.iter().filter(|f| f.warned.is_some()).count();
        let lead = median(
            fs.iter()
                .filter_map(|f| f.warned.as_ref().map(|w| w.1))
                .collect(),
        )
        .map(|d| format!("{:.0}", d as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
        let warned_s = if with_onset > 0 {
            format!("{warned}/{with_onset}")
        } else {
            "-".into()
        };
        if markdown {
            out.push_str(&format!("| {kind}{sep}{n}{sep}{det}/{n}{sep}{delay}{sep}{max_delay}{sep}{warned_s}{sep}{lead} |\n"));
        } else {
            out.push_str(&format!(
                "{kind:<22}{n:>7}{:>10}{delay:>16}{max_delay:>13}{warned_s:>21}{lead:>15}\n",
                format!("{det}/{n}")
            ));
        }
    }
    let cell_hours: f64 = reports
        .iter()
        .map(|r| r.cells as f64 * r.duration_ms as f64 / 3_600_000.0)
        .sum();
    let false_warnings: usize = reports.iter().map(|r| r.false_warnings).sum();
    out.push_str(&format!(
        "\nfalse early warnings: {false_warnings} in {cell_hours:.1} cell-hours = {:.2} per 100 cell-hours\n",
        if cell_hours > 0.0 { false_warnings as f64 * 100.0 / cell_hours } else { 0.0 }
    ));
    for r in reports
        .iter()
        .filter(|r| !r.outage_annunciations.is_empty())
    {
        out.push_str(&format!(
            "alarms raised during the potline outage in {} (seed {}): {:?}\n",
            r.scenario, r.seed, r.outage_annunciations
        ));
    }
    out
}

pub fn main(args: EvaluateArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return crate::telemetry::config_refused(&args.config, &e, "; not evaluating"),
    };
    let duration = match args
        .duration
        .as_deref()
        .map(crate::config::units::parse_duration_ms)
    {
        Some(Err(e)) => {
            eprintln!("--duration: {e}");
            return ExitCode::from(2);
        }
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let mut reports = Vec::new();
    for path in &args.scenarios {
        let scenario = match Scenario::from_file(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let seeds = if args.seeds.is_empty() {
            vec![scenario.plant.seed]
        } else {
            args.seeds.clone()
        };
        for seed in seeds {
            match run(&cfg, scenario.clone(), seed, duration) {
                Ok(r) => {
                    eprintln!("{}: seed {seed}, {:.1} h simulated, {} faults, {} alarms raised, {} false early warnings: {:?}", path.display(), r.duration_ms as f64 / 3_600_000.0, r.faults.len(), r.annunciations, r.false_warnings, r.by_rule);
                    reports.push(r);
                }
                Err(e) => {
                    eprintln!("{}: {e:#}", path.display());
                    return ExitCode::from(1);
                }
            }
        }
    }
    print!("{}", table(&reports, args.markdown));
    ExitCode::SUCCESS
}
