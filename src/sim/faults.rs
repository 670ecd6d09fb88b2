//! Fault kinds, their parameters, and resolution of a scenario's timeline to model ticks.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::registers::Table;
use super::scenario::{
    default_signal, kind_accepts, parse_duration, DeviceKind, DeviceSpec, FaultCfg, GroupCfg,
};

/// A register block: (table, first address, count).
pub type RegisterBlock = (Table, u16, u16);

/// What a hostile server does instead of a clean reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostileMode {
    /// Reply with a transaction id that does not match the request.
    WrongTransactionId,
    /// MBAP length field disagrees with the bytes sent.
    WrongLength,
    /// Reply with a different function code.
    WrongFunctionCode,
    /// Send an extra, unsolicited frame before the reply.
    Unsolicited,
}

/// What comes before an anode effect's voltage jump (docs/DOMAIN.md A5b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecursorKind {
    /// Partly blocked feeder: the R slope grows slowly over 5-25 min.
    Slow,
    /// Blocked feeder: the R slope grows fast over a few minutes.
    Fast,
    /// No alumina precursor (anode problem): the voltage jumps out of a normal cell.
    None,
}

impl PrecursorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrecursorKind::Slow => "slow",
            PrecursorKind::Fast => "fast",
            PrecursorKind::None => "none",
        }
    }
}

/// A fault and its parameters (defaults are [U] engineering defaults, see docs/SIMULATOR.md).
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    AnodeEffect {
        precursor: Duration,
        shape: f64,
        v_min: f64,
        v_max: f64,
        precursor_kind: PrecursorKind,
        /// Realistic cells: R slope at the start and at the end of the precursor, nΩ/min.
        slope_from: f64,
        slope_to: f64,
    },
    /// Metal tapping flagged by the controller: R rises by `rise_uohm` over `ramp`.
    Tapping {
        rise_uohm: f64,
        ramp: Duration,
    },
    /// Anode change: flagged for `flag`, R and noise disturbed for the whole duration.
    AnodeChange {
        flag: Duration,
        r_step_uohm: f64,
        noise_gain: f64,
    },
    /// Anode-beam move of `mm` (negative = down), by hand or by the cell controller.
    BeamMove {
        mm: f64,
    },
    /// Measurement noise of `sigma` (engineering units) on one signal: a sensor fault.
    SensorNoise {
        sigma: Option<f64>,
    },
    NoiseBurst {
        noise_gain: f64,
        pad_mv: f64,
    },
    HotCell {
        temp_rise_c: f64,
        voltage_rise_mv: f64,
    },
    LineCurrentDrop {
        fraction: f64,
        ramp: Duration,
    },
    PotlineOutage,
    CurveLag {
        lag_c: f64,
    },
    DraftLoss {
        to_pa: f64,
        ramp: Duration,
    },
    IncompleteCombustion {
        co_ppm: f64,
        o2_pct: f64,
        ramp: Duration,
    },
    Frozen,
    Dropout {
        nan: bool,
    },
    OutOfRange {
        value: Option<f64>,
    },
    UnitSilent,
    SlowUnit {
        delay: Duration,
    },
    Exception {
        code: u8,
        block: Option<RegisterBlock>,
    },
    ConnDrop {
        after_bytes: usize,
    },
    HostileReply {
        mode: HostileMode,
    },
}

pub const KINDS: [&str; 20] = [
    "anode_effect",
    "tapping",
    "anode_change",
    "beam_move",
    "sensor_noise",
    "noise_burst",
    "hot_cell",
    "line_current_drop",
    "potline_outage",
    "curve_lag",
    "draft_loss",
    "incomplete_combustion",
    "frozen",
    "dropout",
    "out_of_range",
    "unit_silent",
    "slow_unit",
    "exception",
    "conn_drop",
    "hostile_reply",
];

impl FaultKind {
    pub fn name(&self) -> &'static str {
        use FaultKind::*;
        match self {
            AnodeEffect { .. } => "anode_effect",
            Tapping { .. } => "tapping",
            AnodeChange { .. } => "anode_change",
            BeamMove { .. } => "beam_move",
            SensorNoise { .. } => "sensor_noise",
            NoiseBurst { .. } => "noise_burst",
            HotCell { .. } => "hot_cell",
            LineCurrentDrop { .. } => "line_current_drop",
            PotlineOutage => "potline_outage",
            CurveLag { .. } => "curve_lag",
            DraftLoss { .. } => "draft_loss",
            IncompleteCombustion { .. } => "incomplete_combustion",
            Frozen => "frozen",
            Dropout { .. } => "dropout",
            OutOfRange { .. } => "out_of_range",
            UnitSilent => "unit_silent",
            SlowUnit { .. } => "slow_unit",
            Exception { .. } => "exception",
            ConnDrop { .. } => "conn_drop",
            HostileReply { .. } => "hostile_reply",
        }
    }

    /// Faults on the shared line current: they hit every cell of the potline.
    pub fn is_line_fault(&self) -> bool {
        matches!(
            self,
            FaultKind::LineCurrentDrop { .. } | FaultKind::PotlineOutage
        )
    }

    fn is_sensor_fault(&self) -> bool {
        matches!(
            self,
            FaultKind::Frozen
                | FaultKind::Dropout { .. }
                | FaultKind::OutOfRange { .. }
                | FaultKind::SensorNoise { .. }
        )
    }

    /// Family of the disturbance, written to the ground truth so a scorer can tell a sensor
    /// fault from a process fault and a controller's own action from either.
    pub fn class(&self) -> &'static str {
        use FaultKind::*;
        match self {
            Tapping { .. } | AnodeChange { .. } | BeamMove { .. } => "operation",
            Frozen | Dropout { .. } | OutOfRange { .. } | SensorNoise { .. } => "sensor",
            UnitSilent
            | SlowUnit { .. }
            | Exception { .. }
            | ConnDrop { .. }
            | HostileReply { .. } => "comm",
            _ => "process",
        }
    }

    /// Anode effects: what precedes the voltage jump.
    pub fn precursor(&self) -> Option<&'static str> {
        match self {
            FaultKind::AnodeEffect { precursor_kind, .. } => Some(precursor_kind.as_str()),
            _ => None,
        }
    }
}

/// One device hit by a fault, with the signal index for sensor faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub device: usize,
    pub signal: Option<usize>,
}

/// A resolved fault: which devices, from which tick to which.
#[derive(Debug, Clone)]
pub struct FaultSpec {
    pub id: usize,
    pub kind: FaultKind,
    pub targets: Vec<Target>,
    /// For line faults: the cell groups whose line current is affected.
    pub groups: Vec<usize>,
    /// First tick the fault is active, and the first tick it no longer is.
    pub start_tick: u64,
    pub end_tick: u64,
    /// For faults with precursors: the tick the event itself starts (AE voltage jump).
    pub onset_tick: Option<u64>,
    /// The parameters as given plus defaults, for the ground-truth file.
    pub params: serde_json::Value,
}

impl FaultSpec {
    pub fn active(&self, tick: u64) -> bool {
        tick >= self.start_tick && tick < self.end_tick
    }

    /// Fraction 0 → 1 of `ramp` elapsed at `tick`.
    pub fn ramp(&self, tick: u64, ramp_ticks: u64) -> f64 {
        if ramp_ticks == 0 {
            return 1.0;
        }
        (tick.saturating_sub(self.start_tick) as f64 / ramp_ticks as f64).min(1.0)
    }
}

pub fn ticks(d: Duration, tick: Duration) -> u64 {
    (d.as_nanos().div_ceil(tick.as_nanos().max(1))) as u64
}

fn dur_param(name: &str, v: &Option<String>, default: &str) -> Result<Duration, String> {
    let s = v.as_deref().unwrap_or(default);
    parse_duration(name, s).map_err(|e| e.to_string())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AeP {
    precursor: Option<String>,
    shape: Option<f64>,
    v_min: Option<f64>,
    v_max: Option<f64>,
    precursor_kind: Option<String>,
    slope_from: Option<f64>,
    slope_to: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TapP {
    rise_uohm: Option<f64>,
    ramp: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AnodeP {
    flag: Option<String>,
    r_step_uohm: Option<f64>,
    noise_gain: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BeamP {
    mm: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoiseP {
    noise_gain: Option<f64>,
    pad_mv: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HotP {
    temp_rise_c: Option<f64>,
    voltage_rise_mv: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LineP {
    fraction: Option<f64>,
    ramp: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoP {}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LagP {
    lag_c: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DraftP {
    to_pa: Option<f64>,
    ramp: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CombP {
    co_ppm: Option<f64>,
    o2_pct: Option<f64>,
    ramp: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SensorP {
    signal: Option<String>,
    mode: Option<String>,
    value: Option<f64>,
    sigma: Option<f64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SlowP {
    delay: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExcP {
    code: Option<u8>,
    table: Option<String>,
    address: Option<u16>,
    count: Option<u16>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DropP {
    after_bytes: Option<usize>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostileP {
    mode: Option<String>,
}

fn params<T: for<'de> Deserialize<'de>>(t: &toml::Table) -> Result<T, String> {
    toml::Value::Table(t.clone())
        .try_into::<T>()
        .map_err(|e| format!("bad [faults.params]: {}", e.message()))
}

fn parse_kind(cfg: &FaultCfg, duration: Duration) -> Result<(FaultKind, Option<String>), String> {
    let p = &cfg.params;
    let kind = match cfg.kind.as_str() {
        "anode_effect" => {
            let x: AeP = params(p)?;
            let default_precursor = match x.precursor_kind.as_deref() {
                Some("none") => "0s",
                Some("fast") => "3m",
                _ => "10m",
            };
            let precursor = dur_param("precursor", &x.precursor, default_precursor)?;
            let precursor_kind = match x.precursor_kind.as_deref() {
                None if precursor.is_zero() => PrecursorKind::None,
                None if precursor < Duration::from_secs(300) => PrecursorKind::Fast,
                None | Some("slow") => PrecursorKind::Slow,
                Some("fast") => PrecursorKind::Fast,
                Some("none") => PrecursorKind::None,
                Some(other) => {
                    return Err(format!(
                        "precursor_kind `{other}`: use \"slow\", \"fast\" or \"none\""
                    ))
                }
            };
            if precursor_kind == PrecursorKind::None && !precursor.is_zero() {
                return Err("precursor_kind \"none\" needs precursor = \"0s\"".into());
            }
            // [U] docs/DOMAIN.md A5b: ~4 → tens of nΩ/min (slow), far steeper when blocked.
            let (from, to) = match precursor_kind {
                PrecursorKind::Fast => (10.0, 150.0),
                _ => (4.0, 30.0),
            };
            let (slope_from, slope_to) = (x.slope_from.unwrap_or(from), x.slope_to.unwrap_or(to));
            if !(slope_from > 0.0 && slope_to >= slope_from && slope_to <= 10_000.0) {
                return Err(
                    "slopes must satisfy 0 < slope_from <= slope_to <= 10000 nΩ/min".into(),
                );
            }
            if precursor >= duration {
                return Err(format!(
                    "precursor ({}) must be shorter than the duration ({}): the AE itself needs time",
                    humantime::format_duration(precursor),
                    humantime::format_duration(duration)
                ));
            }
            let (v_min, v_max) = (x.v_min.unwrap_or(10.0), x.v_max.unwrap_or(40.0));
            if !(8.0..=100.0).contains(&v_min) || v_max < v_min || v_max > 100.0 {
                return Err("v_min/v_max must satisfy 8 <= v_min <= v_max <= 100".into());
            }
            let shape = x.shape.unwrap_or(2.0);
            if !(0.2..=5.0).contains(&shape) {
                return Err("shape must be within 0.2..5 (1 = linear, 2 = accelerating)".into());
            }
            FaultKind::AnodeEffect {
                precursor,
                shape,
                v_min,
                v_max,
                precursor_kind,
                slope_from,
                slope_to,
            }
        }
        "tapping" => {
            let x: TapP = params(p)?;
            let rise_uohm = x.rise_uohm.unwrap_or(0.10);
            if !(-1.0..=1.0).contains(&rise_uohm) {
                return Err("rise_uohm must be within -1..1 µΩ".into());
            }
            FaultKind::Tapping {
                rise_uohm,
                ramp: dur_param("ramp", &x.ramp, "3m")?,
            }
        }
        "anode_change" => {
            let x: AnodeP = params(p)?;
            let flag = dur_param("flag", &x.flag, "10m")?;
            if flag > duration {
                return Err("flag must not be longer than the duration".into());
            }
            let noise_gain = x.noise_gain.unwrap_or(2.5);
            if !(0.0..=20.0).contains(&noise_gain) {
                return Err("noise_gain must be within 0..20".into());
            }
            FaultKind::AnodeChange {
                flag,
                r_step_uohm: x.r_step_uohm.unwrap_or(0.06),
                noise_gain,
            }
        }
        "beam_move" => {
            let x: BeamP = params(p)?;
            let mm = x.mm.unwrap_or(-1.0);
            if !(-50.0..=50.0).contains(&mm) {
                return Err("mm must be within -50..50".into());
            }
            FaultKind::BeamMove { mm }
        }
        "noise_burst" => {
            let x: NoiseP = params(p)?;
            FaultKind::NoiseBurst {
                noise_gain: x.noise_gain.unwrap_or(4.0),
                pad_mv: x.pad_mv.unwrap_or(60.0),
            }
        }
        "hot_cell" => {
            let x: HotP = params(p)?;
            FaultKind::HotCell {
                temp_rise_c: x.temp_rise_c.unwrap_or(15.0),
                voltage_rise_mv: x.voltage_rise_mv.unwrap_or(80.0),
            }
        }
        "line_current_drop" => {
            let x: LineP = params(p)?;
            let fraction = x.fraction.unwrap_or(0.93);
            if !(0.0..=1.5).contains(&fraction) {
                return Err("fraction must be within 0..1.5".into());
            }
            FaultKind::LineCurrentDrop {
                fraction,
                ramp: dur_param("ramp", &x.ramp, "2s")?,
            }
        }
        "potline_outage" => {
            let _: NoP = params(p)?;
            FaultKind::PotlineOutage
        }
        "curve_lag" => {
            let x: LagP = params(p)?;
            FaultKind::CurveLag {
                lag_c: x.lag_c.unwrap_or(60.0),
            }
        }
        "draft_loss" => {
            let x: DraftP = params(p)?;
            FaultKind::DraftLoss {
                to_pa: x.to_pa.unwrap_or(-2.0),
                ramp: dur_param("ramp", &x.ramp, "30s")?,
            }
        }
        "incomplete_combustion" => {
            let x: CombP = params(p)?;
            FaultKind::IncompleteCombustion {
                co_ppm: x.co_ppm.unwrap_or(2500.0),
                o2_pct: x.o2_pct.unwrap_or(0.8),
                ramp: dur_param("ramp", &x.ramp, "30s")?,
            }
        }
        "frozen" | "dropout" | "out_of_range" | "sensor_noise" => {
            let x: SensorP = params(p)?;
            if x.sigma.is_some() && cfg.kind != "sensor_noise" {
                return Err("`sigma` is a sensor_noise parameter".into());
            }
            let kind = match cfg.kind.as_str() {
                "frozen" => FaultKind::Frozen,
                "sensor_noise" => FaultKind::SensorNoise { sigma: x.sigma },
                "dropout" => FaultKind::Dropout {
                    nan: match x.mode.as_deref().unwrap_or("zero") {
                        "zero" => false,
                        "nan" => true,
                        other => return Err(format!("mode `{other}`: use \"zero\" or \"nan\"")),
                    },
                },
                _ => FaultKind::OutOfRange { value: x.value },
            };
            return Ok((kind, x.signal));
        }
        "unit_silent" => {
            let _: NoP = params(p)?;
            FaultKind::UnitSilent
        }
        "slow_unit" => {
            let x: SlowP = params(p)?;
            FaultKind::SlowUnit {
                delay: dur_param("delay", &x.delay, "2s")?,
            }
        }
        "exception" => {
            let x: ExcP = params(p)?;
            let code = x.code.unwrap_or(2);
            if code == 0 {
                return Err("code must be 1-255 (02, 04, 06, 0B are typical)".into());
            }
            let block = match (x.table.as_deref(), x.address) {
                (None, None) => None,
                (Some(t), Some(a)) => {
                    let table = Table::parse(t).ok_or_else(|| {
                        format!("table `{t}`: use coil, discrete, holding or input")
                    })?;
                    Some((table, a, x.count.unwrap_or(1).max(1)))
                }
                _ => return Err("give both `table` and `address`, or neither".into()),
            };
            FaultKind::Exception { code, block }
        }
        "conn_drop" => {
            let x: DropP = params(p)?;
            FaultKind::ConnDrop {
                after_bytes: x.after_bytes.unwrap_or(3),
            }
        }
        "hostile_reply" => {
            let x: HostileP = params(p)?;
            let mode = match x.mode.as_deref().unwrap_or("wrong_tid") {
                "wrong_tid" => HostileMode::WrongTransactionId,
                "wrong_length" => HostileMode::WrongLength,
                "wrong_fc" => HostileMode::WrongFunctionCode,
                "unsolicited" => HostileMode::Unsolicited,
                other => {
                    return Err(format!(
                        "mode `{other}`: use wrong_tid, wrong_length, wrong_fc or unsolicited"
                    ))
                }
            };
            FaultKind::HostileReply { mode }
        }
        other => {
            return Err(format!(
                "unknown kind `{other}`; known kinds: {}",
                KINDS.join(", ")
            ))
        }
    };
    Ok((kind, None))
}

fn toml_to_json(t: &toml::Table) -> serde_json::Value {
    serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
}

impl FaultSpec {
    pub(crate) fn resolve(
        id: usize,
        cfg: &FaultCfg,
        groups: &[GroupCfg],
        group_ids: &HashMap<String, usize>,
        devices: &[DeviceSpec],
        names: &HashMap<String, usize>,
        tick: Duration,
    ) -> Result<FaultSpec, String> {
        let at = parse_duration("at", &cfg.at).map_err(|e| e.to_string())?;
        let duration = parse_duration("duration", &cfg.duration).map_err(|e| e.to_string())?;
        if duration.is_zero() {
            return Err("duration must be more than 0".into());
        }
        let (kind, signal) = parse_kind(cfg, duration)?;

        // Devices: names, or group ids meaning every device of the group.
        let mut devs: Vec<usize> = Vec::new();
        let mut line_groups: Vec<usize> = Vec::new();
        for d in &cfg.devices {
            if let Some(&i) = names.get(d) {
                devs.push(i);
                line_groups.push(devices[i].group);
            } else if let Some(&g) = group_ids.get(d) {
                devs.extend(
                    devices
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.group == g)
                        .map(|(i, _)| i),
                );
                line_groups.push(g);
            } else {
                return Err(format!("no device or group named `{d}`"));
            }
        }
        if kind.is_line_fault() {
            if cfg.devices.is_empty() {
                line_groups = groups
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.kind == DeviceKind::Cell)
                    .map(|(i, _)| i)
                    .collect();
            }
            line_groups.sort_unstable();
            line_groups.dedup();
            if let Some(g) = line_groups
                .iter()
                .find(|&&g| groups[g].kind != DeviceKind::Cell)
            {
                return Err(format!(
                    "group `{}` is not a potline (kind cell)",
                    groups[*g].id
                ));
            }
            // The line current is shared: every cell of the line sees the fault.
            devs = devices
                .iter()
                .enumerate()
                .filter(|(_, x)| line_groups.contains(&x.group))
                .map(|(i, _)| i)
                .collect();
        } else {
            line_groups.clear();
        }
        if devs.is_empty() {
            return Err("no devices: give `devices = [\"name\", ...]`".into());
        }
        devs.sort_unstable();
        devs.dedup();
        let mut targets = Vec::new();
        for &i in &devs {
            let d = &devices[i];
            if !kind_accepts(d.kind, &kind) {
                return Err(format!(
                    "`{}` is a {}; this fault needs another kind",
                    d.name,
                    d.kind.as_str()
                ));
            }
            let signal = if kind.is_sensor_fault() {
                let name = signal.as_deref().unwrap_or(default_signal(d.kind));
                Some(
                    d.kind
                        .signals()
                        .iter()
                        .position(|s| *s == name)
                        .ok_or_else(|| {
                            format!(
                                "`{}` has no signal `{name}`; signals: {}",
                                d.name,
                                d.kind.signals().join(", ")
                            )
                        })?,
                )
            } else {
                None
            };
            targets.push(Target { device: i, signal });
        }
        let start_tick = ticks(at, tick).max(1);
        let end_tick = start_tick + ticks(duration, tick).max(1);
        let onset_tick = match &kind {
            FaultKind::AnodeEffect { precursor, .. } => Some(start_tick + ticks(*precursor, tick)),
            _ => None,
        };
        let mut params = toml_to_json(&cfg.params);
        if let (serde_json::Value::Object(m), Some(s)) = (&mut params, &signal) {
            m.entry("signal")
                .or_insert_with(|| serde_json::Value::String(s.clone()));
        }
        Ok(FaultSpec {
            id,
            kind,
            targets,
            groups: line_groups,
            start_tick,
            end_tick,
            onset_tick,
            params,
        })
    }
}

/// Default out-of-range value for a signal when the scenario gives none.
pub fn out_of_range_default(kind: DeviceKind, signal: usize) -> f64 {
    let name = kind.signals().get(signal).copied().unwrap_or("");
    match name {
        "voltage" => 150.0,
        "current" => 2000.0,
        "bath_temp" => 1500.0,
        "flue_temp" | "furnace_temp" => 2500.0,
        "draft" | "exhaust_draft" => 5000.0,
        _ => 60000.0,
    }
}

/// Default measurement noise (1 σ) of a `sensor_noise` fault: a few times the process noise.
pub fn sensor_noise_default(kind: DeviceKind, signal: usize) -> f64 {
    let name = kind.signals().get(signal).copied().unwrap_or("");
    match name {
        "voltage" => 0.05,
        "current" => 5.0,
        "resistance" => 0.1,
        "bath_temp" | "flue_temp" | "furnace_temp" => 5.0,
        "draft" | "exhaust_draft" => 20.0,
        _ => 1.0,
    }
}
