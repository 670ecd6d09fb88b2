//! `[schedule]`: seeded, randomly timed disturbances on every cell (a "plant day"), expanded
//! into ordinary faults so they run, and are written to the ground truth, like scripted ones.
//! The timing depends on the seed, so held-out seeds give a different day.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::FaultSpec;
use super::rng::Rng;
use super::scenario::{parse_duration, DeviceKind, DeviceSpec, FaultCfg, GroupCfg};

/// Counts and mean intervals of each disturbance. Figures are [U] (docs/DOMAIN.md A5, A5b).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCfg {
    /// Disturbances are placed within this much simulated time from the start.
    pub horizon: String,
    /// Mean interval between metal tappings of one cell (24-48 h in plants); "0s" = none.
    #[serde(default = "default_tapping")]
    pub tapping_every: String,
    /// Mean interval between anode changes of one cell (~30 h); "0s" = none.
    #[serde(default = "default_anode_change")]
    pub anode_change_every: String,
    /// Anode effects over the horizon, by precursor kind, each on a different random cell.
    #[serde(default)]
    pub slow_aes: u32,
    #[serde(default)]
    pub fast_aes: u32,
    #[serde(default)]
    pub sudden_aes: u32,
    /// Line-current dips of each potline (to 93-97 % for 2-6 min).
    #[serde(default)]
    pub line_dips: u32,
    /// Sensor faults on the voltage of random cells (stuck, out of range, noisy).
    #[serde(default)]
    pub sensor_faults: u32,
}

fn default_tapping() -> String {
    "24h".into()
}
fn default_anode_change() -> String {
    "30h".into()
}

/// Quiet time kept around each anode effect on its cell (other disturbances stay away from it,
/// so each AE's precursor and recovery are scored on their own).
const AE_CLEAR_S: f64 = 30.0 * 60.0;
/// No disturbance starts before this (every rule has history by then).
const WARMUP_S: f64 = 15.0 * 60.0;

fn fmt_s(s: f64) -> String {
    format!("{}ms", (s * 1000.0).round() as u64)
}

struct Planned {
    cfg: FaultCfg,
}

/// Busy windows per cell, in seconds.
#[derive(Default)]
struct Busy(HashMap<String, Vec<(f64, f64)>>);

impl Busy {
    fn free(&self, dev: &str, a: f64, b: f64) -> bool {
        self.0
            .get(dev)
            .is_none_or(|v| v.iter().all(|&(x, y)| b <= x || a >= y))
    }
    fn add(&mut self, dev: &str, a: f64, b: f64) {
        self.0.entry(dev.to_string()).or_default().push((a, b));
    }
}

impl ScheduleCfg {
    pub fn horizon(&self) -> Result<Duration, String> {
        parse_duration("[schedule] horizon", &self.horizon).map_err(|e| e.to_string())
    }

    /// The disturbances of one seed as fault configs, in time order per kind.
    fn plan(
        &self,
        seed: u64,
        devices: &[DeviceSpec],
        groups: &[GroupCfg],
    ) -> Result<Vec<Planned>, String> {
        let horizon = self.horizon()?.as_secs_f64();
        if horizon < 2.0 * WARMUP_S {
            return Err("[schedule] horizon must be at least 30m".into());
        }
        let every = |k: &str, v: &str| -> Result<f64, String> {
            Ok(parse_duration(k, v)
                .map_err(|e| e.to_string())?
                .as_secs_f64())
        };
        let tap_every = every("[schedule] tapping_every", &self.tapping_every)?;
        let ac_every = every("[schedule] anode_change_every", &self.anode_change_every)?;
        let cells: Vec<&DeviceSpec> = devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Cell)
            .collect();
        let aes = (self.slow_aes + self.fast_aes + self.sudden_aes) as usize;
        if aes > cells.len() {
            return Err(format!(
                "[schedule] {aes} anode effects need as many cells ({} here)",
                cells.len()
            ));
        }
        let mut rng = Rng::new(seed, 7_000_000);
        let mut busy = Busy::default();
        let mut out = Vec::new();
        let latest = horizon - 20.0 * 60.0;
        let mut push = |kind: &str, dev: &str, at: f64, dur: f64, params: toml::Table| {
            out.push(Planned {
                cfg: FaultCfg {
                    kind: kind.into(),
                    devices: vec![dev.into()],
                    at: fmt_s(at),
                    duration: fmt_s(dur),
                    params,
                },
            })
        };

        // Anode effects first, on distinct cells, then everything else around them.
        let mut order: Vec<usize> = (0..cells.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (rng.uniform() * (i + 1) as f64) as usize;
            order.swap(i, j.min(i));
        }
        let kinds = std::iter::repeat_n("slow", self.slow_aes as usize)
            .chain(std::iter::repeat_n("fast", self.fast_aes as usize))
            .chain(std::iter::repeat_n("none", self.sudden_aes as usize));
        for (k, pk) in kinds.enumerate() {
            let dev = &cells[order[k]].name;
            let precursor = match pk {
                "slow" => rng.range(5.0, 25.0) * 60.0,
                "fast" => rng.range(2.0, 5.0) * 60.0,
                _ => 0.0,
            };
            let onset = rng.range(
                WARMUP_S + precursor + 10.0 * 60.0,
                latest.max(WARMUP_S + precursor + 10.0 * 60.0 + 1.0),
            );
            let length = rng.range(25.0, 60.0);
            let mut p = toml::Table::new();
            p.insert("precursor_kind".into(), pk.into());
            p.insert("precursor".into(), fmt_s(precursor).into());
            if pk == "slow" {
                p.insert("slope_to".into(), rng.range(20.0, 45.0).into());
            }
            busy.add(
                dev,
                onset - precursor - AE_CLEAR_S,
                onset + length + AE_CLEAR_S,
            );
            push(
                "anode_effect",
                dev,
                onset - precursor,
                precursor + length,
                p,
            );
        }

        for c in &cells {
            for (kind, mean) in [("tapping", tap_every), ("anode_change", ac_every)] {
                if mean <= 0.0 {
                    continue;
                }
                // A cell's next event is uniformly placed within one mean interval, then every
                // interval ±20 %: over a short horizon only some cells see one, as in a plant.
                let mut t = rng.range(0.0, mean);
                while t < latest {
                    let (dur, p) = if kind == "tapping" {
                        let mut p = toml::Table::new();
                        p.insert("rise_uohm".into(), rng.range(0.07, 0.13).into());
                        p.insert("ramp".into(), fmt_s(rng.range(120.0, 240.0)).into());
                        (rng.range(4.0, 8.0) * 60.0, p)
                    } else {
                        let mut p = toml::Table::new();
                        p.insert("flag".into(), fmt_s(rng.range(8.0, 15.0) * 60.0).into());
                        p.insert("r_step_uohm".into(), rng.range(0.03, 0.09).into());
                        (rng.range(40.0, 55.0) * 60.0, p)
                    };
                    if t >= WARMUP_S && busy.free(&c.name, t, t + dur) {
                        busy.add(&c.name, t, t + dur);
                        push(kind, &c.name, t, dur, p);
                    }
                    t += mean * rng.range(0.8, 1.2);
                }
            }
        }

        for _ in 0..self.line_dips {
            for g in groups.iter().filter(|g| g.kind == DeviceKind::Cell) {
                let at = rng.range(WARMUP_S, latest);
                let mut p = toml::Table::new();
                p.insert("fraction".into(), rng.range(0.93, 0.97).into());
                p.insert("ramp".into(), "5s".into());
                push(
                    "line_current_drop",
                    &g.id,
                    at,
                    rng.range(2.0, 6.0) * 60.0,
                    p,
                );
            }
        }

        for _ in 0..self.sensor_faults {
            // A few tries for a free window; a crowded plan just gets fewer sensor faults.
            for _ in 0..20 {
                let c = cells[((rng.uniform() * cells.len() as f64) as usize).min(cells.len() - 1)];
                let at = rng.range(WARMUP_S, latest);
                let dur = rng.range(2.0, 10.0) * 60.0;
                if !busy.free(&c.name, at, at + dur) {
                    continue;
                }
                busy.add(&c.name, at, at + dur);
                let kind = ["frozen", "out_of_range", "sensor_noise"]
                    [((rng.uniform() * 3.0) as usize).min(2)];
                let mut p = toml::Table::new();
                p.insert("signal".into(), "voltage".into());
                push(kind, &c.name, at, dur, p);
                break;
            }
        }
        Ok(out)
    }

    /// Resolve the seed's disturbances; ids continue after the scenario's own faults.
    pub(crate) fn expand(
        &self,
        seed: u64,
        first_id: usize,
        groups: &[GroupCfg],
        devices: &[DeviceSpec],
        tick: Duration,
    ) -> Result<Vec<FaultSpec>, String> {
        let group_ids: HashMap<String, usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.id.clone(), i))
            .collect();
        let names: HashMap<String, usize> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        let mut specs = Vec::new();
        for (k, p) in self.plan(seed, devices, groups)?.into_iter().enumerate() {
            let spec = FaultSpec::resolve(
                first_id + k,
                &p.cfg,
                groups,
                &group_ids,
                devices,
                &names,
                tick,
            )
            .map_err(|m| format!("[schedule] {} on {:?}: {m}", p.cfg.kind, p.cfg.devices))?;
            specs.push(spec);
        }
        Ok(specs)
    }
}
