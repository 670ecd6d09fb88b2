//! The whole simulated plant: models, fault effects and register images, stepped at a fixed tick.
//! Pure and deterministic: the state after N steps depends only on the scenario and the seed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::calciner::{self, Calciner};
use super::cell::{sig as cell_sig, AeDrive, Cell, CellEffects, BACK_EMF_V};
use super::faults::{
    out_of_range_default, sensor_noise_default, ticks, FaultKind, FaultSpec, HostileMode,
    PrecursorKind, RegisterBlock, Target,
};
use super::kiln::{Kiln, ThermalEffects};
use super::react::Requests;
use super::registers::{encode, Image, Layout};
use super::rng::Rng;
use super::scenario::{DeviceKind, Scenario};

#[derive(Debug, Clone)]
enum Model {
    Cell(Box<Cell>),
    Kiln(Box<Kiln>),
    Calciner(Box<Calciner>),
}

/// How a device treats Modbus requests right now (communication faults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommState {
    pub silent: bool,
    pub delay: Option<Duration>,
    /// (exception code, optional (table, first address, count)); no block = every request.
    pub exceptions: Vec<(u8, Option<RegisterBlock>)>,
    pub drop_after: Option<usize>,
    pub hostile: Option<HostileMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Start,
    End,
}

/// A fault starting or ending on one device at one tick.
#[derive(Debug, Clone)]
pub struct Transition {
    pub phase: Phase,
    pub fault: usize,
    pub device: usize,
    pub tick: u64,
    /// The fault itself (scripted, scheduled, or a move the cell controller made).
    pub spec: Arc<FaultSpec>,
}

#[derive(Debug, Clone)]
struct DeviceState {
    kind: DeviceKind,
    model: Model,
    signals: Vec<f64>,
    image: Image,
    comm: CommState,
    /// (fault index, signal index for sensor faults)
    faults: Vec<(usize, Option<usize>)>,
    /// What the agent wrote to a cell (disposal).
    requests: Requests,
}

#[derive(Debug, Clone)]
struct Line {
    rng: Rng,
    setpoint: f64,
    phase: f64,
    current: f64,
}

#[derive(Debug, Clone)]
pub struct Plant {
    scenario: Scenario,
    /// Scripted and scheduled faults of this seed.
    faults: Vec<Arc<FaultSpec>>,
    /// Controller-made beam moves still running: (end tick, device, move).
    moves: Vec<(u64, usize, Arc<FaultSpec>)>,
    next_fault_id: usize,
    sensor_rng: Rng,
    layouts: HashMap<DeviceKind, Layout>,
    devices: Vec<DeviceState>,
    lines: Vec<Option<Line>>,
    frozen: HashMap<(usize, usize), f64>,
    tick: u64,
    dt: f64,
    seed: u64,
}

impl Plant {
    pub fn new(scenario: Scenario, seed: u64) -> Plant {
        let faults: Vec<Arc<FaultSpec>> = scenario
            .faults_for_seed(seed)
            .into_iter()
            .map(Arc::new)
            .collect();
        let realism = scenario.plant.realism;
        let mut layouts = HashMap::new();
        for k in [DeviceKind::Cell, DeviceKind::Kiln, DeviceKind::Calciner] {
            layouts.insert(k, Layout::for_kind(k));
        }
        let lines = scenario
            .groups
            .iter()
            .enumerate()
            .map(|(gi, g)| {
                (g.kind == DeviceKind::Cell).then(|| {
                    let mut rng = Rng::new(seed, 1_000_000 + gi as u64);
                    let setpoint = g.line_current_ka.unwrap_or(scenario.plant.line_current_ka);
                    Line {
                        phase: rng.range(0.0, std::f64::consts::TAU),
                        rng,
                        setpoint,
                        current: setpoint,
                    }
                })
            })
            .collect::<Vec<_>>();
        let mut devices: Vec<DeviceState> = scenario
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let rng = Rng::new(seed, i as u64);
                let model = match d.kind {
                    DeviceKind::Cell => {
                        let sp = lines
                            .get(d.group)
                            .and_then(|l| l.as_ref().map(|l| l.setpoint))
                            .unwrap_or(scenario.plant.line_current_ka);
                        let aux = Rng::new(seed, 3_000_000 + i as u64);
                        Model::Cell(Box::new(Cell::new(rng, sp, aux, realism)))
                    }
                    DeviceKind::Kiln => Model::Kiln(Box::new(Kiln::new(rng))),
                    DeviceKind::Calciner => Model::Calciner(Box::new(Calciner::new(rng))),
                };
                DeviceState {
                    kind: d.kind,
                    model,
                    signals: Vec::new(),
                    image: Image::default(),
                    comm: CommState::default(),
                    faults: Vec::new(),
                    requests: Requests::default(),
                }
            })
            .collect();
        for (fi, f) in faults.iter().enumerate() {
            for t in &f.targets {
                devices[t.device].faults.push((fi, t.signal));
            }
        }
        Plant {
            dt: scenario.tick.as_secs_f64(),
            next_fault_id: faults.len(),
            faults,
            moves: Vec::new(),
            sensor_rng: Rng::new(seed, 5_000_000),
            scenario,
            layouts,
            devices,
            lines,
            frozen: HashMap::new(),
            tick: 0,
            seed,
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Scripted and scheduled faults of this run (controller beam moves come as transitions).
    pub fn faults(&self) -> &[Arc<FaultSpec>] {
        &self.faults
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn image(&self, device: usize) -> Option<&Image> {
        self.devices.get(device).map(|d| &d.image)
    }

    pub fn layout(&self, device: usize) -> Option<&Layout> {
        self.devices
            .get(device)
            .and_then(|d| self.layouts.get(&d.kind))
    }

    /// A write of holding registers from a client: only a cell's request registers take it
    /// (exception 02 elsewhere). It reads back at once, before the next tick.
    pub fn write_holding(&mut self, device: usize, address: u16, words: &[u16]) -> Result<(), u8> {
        let Some(dev) = self.devices.get_mut(device) else {
            return Err(super::server::EX_ILLEGAL_ADDRESS);
        };
        let span = address..address.saturating_add(words.len() as u16);
        if dev.kind != DeviceKind::Cell || words.is_empty() || !span.clone().all(Requests::writable)
        {
            return Err(super::server::EX_ILLEGAL_ADDRESS);
        }
        for (a, &w) in span.zip(words) {
            dev.requests.write(a, w);
            if let Some(r) = dev.image.holding.get_mut(usize::from(a)) {
                *r = w;
            }
        }
        Ok(())
    }

    pub fn comm(&self, device: usize) -> Option<&CommState> {
        self.devices.get(device).map(|d| &d.comm)
    }

    /// Model signals after fault overrides (engineering units, index per kind).
    pub fn signals(&self, device: usize) -> Option<&[f64]> {
        self.devices.get(device).map(|d| d.signals.as_slice())
    }

    /// Advance one tick; returns the faults that started or ended on this tick.
    pub fn step(&mut self) -> Vec<Transition> {
        self.tick += 1;
        let tick = self.tick;
        let dt = self.dt;
        let t = tick as f64 * dt;
        let faults = &self.faults;
        let realism = self.scenario.plant.realism;

        let mut transitions = Vec::new();
        self.moves.retain(|(end, device, spec)| {
            if *end != tick {
                return true;
            }
            transitions.push(Transition {
                phase: Phase::End,
                fault: spec.id,
                device: *device,
                tick,
                spec: spec.clone(),
            });
            false
        });
        for (fi, f) in faults.iter().enumerate() {
            let phase = if f.start_tick == tick {
                Phase::Start
            } else if f.end_tick == tick {
                Phase::End
            } else {
                continue;
            };
            for target in &f.targets {
                transitions.push(Transition {
                    phase,
                    fault: fi,
                    device: target.device,
                    tick,
                    spec: f.clone(),
                });
                if phase == Phase::End {
                    self.frozen.remove(&(fi, target.device));
                }
            }
        }

        // The shared line current of each potline: ±1 % ripple [U] around the setpoint.
        for (gi, line) in self.lines.iter_mut().enumerate() {
            let Some(line) = line else { continue };
            line.phase += std::f64::consts::TAU / 37.0 * dt;
            let mut factor = 1.0 + 0.006 * line.phase.sin() + 0.0015 * line.rng.normal();
            for f in faults
                .iter()
                .filter(|f| f.active(tick) && f.groups.contains(&gi))
            {
                match f.kind {
                    FaultKind::LineCurrentDrop { fraction, ramp } => {
                        let r = f.ramp(tick, ticks(ramp, self.scenario.tick));
                        factor *= 1.0 - (1.0 - fraction) * r;
                    }
                    FaultKind::PotlineOutage => {
                        let r = f.ramp(tick, ticks(Duration::from_secs(1), self.scenario.tick));
                        factor *= 1.0 - r;
                    }
                    _ => {}
                }
            }
            line.current = (line.setpoint * factor).max(0.0);
        }

        let tick_len = self.scenario.tick;
        for (di, dev) in self.devices.iter_mut().enumerate() {
            let mut cell_fx = CellEffects::default();
            let mut thermal_fx = ThermalEffects::default();
            let mut comm = CommState::default();
            for &(fi, _) in &dev.faults {
                let f = &faults[fi];
                if !f.active(tick) {
                    continue;
                }
                match f.kind {
                    FaultKind::AnodeEffect {
                        v_min,
                        v_max,
                        shape,
                        precursor_kind,
                        slope_from,
                        slope_to,
                        ..
                    } => {
                        let onset = f.onset_tick.unwrap_or(f.start_tick);
                        if tick < onset && realism && precursor_kind != PrecursorKind::None {
                            let total = (onset - f.start_tick) as f64 * dt;
                            let elapsed = (tick - f.start_tick) as f64 * dt;
                            cell_fx.ae = Some(AeDrive::Depletion {
                                elapsed_s: elapsed,
                                total_s: total,
                                slope_from,
                                slope_to,
                            });
                            // Bubble noise grows as the bath starves [U].
                            let p = elapsed / total.max(dt);
                            cell_fx.noise_gain *= 1.0 + p * p;
                        } else if tick < onset {
                            let progress =
                                (tick - f.start_tick) as f64 / (onset - f.start_tick).max(1) as f64;
                            cell_fx.ae = Some(AeDrive::Precursor { progress, shape });
                            // Noise grows as the cell heads for the AE.
                            cell_fx.noise_gain *= 1.0 + 3.0 * progress * progress;
                        } else {
                            cell_fx.ae = Some(AeDrive::Active { v_min, v_max });
                        }
                    }
                    FaultKind::NoiseBurst { noise_gain, pad_mv } => {
                        cell_fx.noise_gain *= noise_gain;
                        cell_fx.pad_mv = Some(pad_mv);
                    }
                    FaultKind::HotCell {
                        temp_rise_c,
                        voltage_rise_mv,
                    } => {
                        let r = f.ramp(tick, f.end_tick - f.start_tick);
                        cell_fx.hot_temp_c += temp_rise_c * r;
                        cell_fx.hot_volt_v += voltage_rise_mv / 1000.0 * r;
                    }
                    FaultKind::Tapping { rise_uohm, ramp } => {
                        let p = f.ramp(tick, ticks(ramp, tick_len));
                        cell_fx.tapping = Some((rise_uohm, p));
                    }
                    FaultKind::AnodeChange {
                        flag,
                        r_step_uohm,
                        noise_gain,
                    } => {
                        // The new cold anode takes its share of current over the disturbance:
                        // R and noise decay from their step with a third of it as time constant.
                        let elapsed = (tick - f.start_tick) as f64 * dt;
                        let tau = (f.end_tick - f.start_tick) as f64 * dt / 3.0;
                        let decay = (-elapsed / tau.max(dt)).exp();
                        cell_fx.anode_change =
                            Some((elapsed < flag.as_secs_f64(), r_step_uohm * decay));
                        cell_fx.noise_gain *= 1.0 + (noise_gain - 1.0).max(0.0) * decay;
                    }
                    FaultKind::BeamMove { mm } if tick == f.start_tick => {
                        cell_fx.beam_request = Some(mm);
                    }
                    FaultKind::CurveLag { lag_c } => {
                        thermal_fx.lag_c += lag_c * f.ramp(tick, f.end_tick - f.start_tick);
                    }
                    FaultKind::DraftLoss { to_pa, ramp } => {
                        thermal_fx.draft = Some((to_pa, f.ramp(tick, ticks(ramp, tick_len))));
                    }
                    FaultKind::IncompleteCombustion {
                        co_ppm,
                        o2_pct,
                        ramp,
                    } => {
                        thermal_fx.combustion =
                            Some((co_ppm, o2_pct, f.ramp(tick, ticks(ramp, tick_len))));
                    }
                    FaultKind::UnitSilent => comm.silent = true,
                    FaultKind::SlowUnit { delay } => {
                        comm.delay = Some(comm.delay.map_or(delay, |d| d.max(delay)))
                    }
                    FaultKind::Exception { code, block } => comm.exceptions.push((code, block)),
                    FaultKind::ConnDrop { after_bytes } => comm.drop_after = Some(after_bytes),
                    FaultKind::HostileReply { mode } => comm.hostile = Some(mode),
                    _ => {}
                }
            }
            let line_ka = self
                .lines
                .get(self.scenario.devices[di].group)
                .and_then(|l| l.as_ref().map(|l| l.current))
                .unwrap_or(0.0);
            if dev.kind == DeviceKind::Cell {
                dev.requests.react(&mut cell_fx.ae, dt);
            }
            let signals: &[f64] = match &mut dev.model {
                Model::Cell(c) => {
                    c.step(dt, t, tick, line_ka, &cell_fx);
                    if let Some((mm, secs)) = c.take_beam_move() {
                        let spec = Arc::new(FaultSpec {
                            id: self.next_fault_id,
                            kind: FaultKind::BeamMove { mm },
                            targets: vec![Target {
                                device: di,
                                signal: None,
                            }],
                            groups: Vec::new(),
                            start_tick: tick,
                            end_tick: tick + ticks(Duration::from_secs_f64(secs), tick_len).max(1),
                            onset_tick: None,
                            params: serde_json::json!({ "mm": mm, "by": "controller" }),
                        });
                        self.next_fault_id += 1;
                        transitions.push(Transition {
                            phase: Phase::Start,
                            fault: spec.id,
                            device: di,
                            tick,
                            spec: spec.clone(),
                        });
                        self.moves.push((spec.end_tick, di, spec));
                    }
                    c.signals()
                }
                Model::Kiln(k) => {
                    k.step(dt, t, tick, &thermal_fx);
                    k.signals()
                }
                Model::Calciner(c) => {
                    c.step(dt, t, tick, &thermal_fx);
                    c.signals()
                }
            };
            dev.signals.clear();
            dev.signals.extend_from_slice(signals);
            if dev.kind == DeviceKind::Cell {
                dev.signals.extend(dev.requests.signals());
            }
            // Sensor faults replace the measured value; every encoding of it follows.
            for &(fi, sig) in &dev.faults {
                let f = &faults[fi];
                let Some(s) = sig else { continue };
                if !f.active(tick) || s >= dev.signals.len() {
                    continue;
                }
                let v = match f.kind {
                    FaultKind::Frozen => *self.frozen.entry((fi, di)).or_insert(dev.signals[s]),
                    FaultKind::Dropout { nan } => {
                        if nan {
                            f64::NAN
                        } else {
                            0.0
                        }
                    }
                    FaultKind::OutOfRange { value } => {
                        value.unwrap_or_else(|| out_of_range_default(dev.kind, s))
                    }
                    FaultKind::SensorNoise { sigma } => {
                        let sigma = sigma.unwrap_or_else(|| sensor_noise_default(dev.kind, s));
                        dev.signals[s] + sigma * self.sensor_rng.normal()
                    }
                    _ => continue,
                };
                dev.signals[s] = v;
                // A realistic cell's controller computes R from the voltage it measures.
                if realism && dev.kind == DeviceKind::Cell && s == cell_sig::VOLTAGE {
                    let i = dev.signals[cell_sig::CURRENT];
                    if i >= 1.0 {
                        dev.signals[cell_sig::RESISTANCE] = (v - BACK_EMF_V) / i * 1000.0;
                    }
                }
            }
            if dev.kind == DeviceKind::Calciner {
                debug_assert_eq!(dev.signals.len(), calciner::sig::COUNT);
            }
            if let Some(layout) = self.layouts.get(&dev.kind) {
                encode(dev.kind, layout, &dev.signals, &mut dev.image);
            }
            dev.comm = comm;
        }
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCN: &str = r#"
        [[groups]]
        id = "line"
        kind = "cell"
        name = "pot-{unit:03}"
        listen = "127.0.0.1:0"
        units = "1-3"
        [[groups]]
        id = "kilns"
        kind = "kiln"
        name = "kiln-{unit:02}"
        listen = "127.0.0.1:5021"
        units = "1-2"
        [[faults]]
        kind = "potline_outage"
        at = "2s"
        duration = "2s"
    "#;

    #[test]
    fn same_seed_same_images_different_seed_differs() {
        let s = Scenario::from_str(SCN).unwrap();
        let mut a = Plant::new(s.clone(), 5);
        let mut b = Plant::new(s.clone(), 5);
        let mut c = Plant::new(s, 6);
        for _ in 0..100 {
            a.step();
            b.step();
            c.step();
        }
        for d in 0..5 {
            assert_eq!(a.image(d), b.image(d));
        }
        assert_ne!(a.image(0), c.image(0));
    }

    #[test]
    fn outage_hits_every_cell_and_reports_transitions() {
        let s = Scenario::from_str(SCN).unwrap();
        let mut p = Plant::new(s, 1);
        let mut starts = 0;
        let mut ends = 0;
        for _ in 0..35 {
            for tr in p.step() {
                match tr.phase {
                    Phase::Start => starts += 1,
                    Phase::End => ends += 1,
                }
            }
        }
        for d in 0..3 {
            assert!(p.signals(d).unwrap()[super::super::cell::sig::CURRENT] < 1.0);
        }
        assert_eq!(starts, 3);
        for _ in 0..10 {
            for tr in p.step() {
                if tr.phase == Phase::End {
                    ends += 1;
                }
            }
        }
        assert_eq!(ends, 3);
        assert!(p.signals(0).unwrap()[super::super::cell::sig::CURRENT] > 450.0);
    }

    const DAY: &str = r#"
        [plant]
        tick = "1s"
        realism = true
        [[groups]]
        id = "line"
        kind = "cell"
        name = "pot-{unit:03}"
        listen = "127.0.0.1:0"
        units = "1-16"
        [schedule]
        horizon = "3h"
        tapping_every = "8h"
        anode_change_every = "8h"
        slow_aes = 2
        fast_aes = 1
        sudden_aes = 1
        line_dips = 1
        sensor_faults = 3
        [[faults]]
        kind = "sensor_noise"
        devices = ["pot-001"]
        at = "1m"
        duration = "1m"
    "#;

    /// (kind, class, device, phase, precursor, params) of one truth transition.
    type Seen = (
        String,
        String,
        usize,
        Phase,
        Option<&'static str>,
        serde_json::Value,
    );

    /// Every start/end of a run.
    fn run_truth(seed: u64, ticks: u64) -> Vec<Seen> {
        let s = Scenario::from_str(DAY).unwrap();
        let mut p = Plant::new(s, seed);
        let mut out = Vec::new();
        for _ in 0..ticks {
            for tr in p.step() {
                out.push((
                    tr.spec.kind.name().to_string(),
                    tr.spec.kind.class().to_string(),
                    tr.device,
                    tr.phase,
                    tr.spec.kind.precursor(),
                    tr.spec.params.clone(),
                ));
            }
        }
        out
    }

    #[test]
    fn schedule_places_every_disturbance_and_truth_names_each() {
        let tr = run_truth(3, 3 * 3600);
        let kinds: std::collections::BTreeSet<&str> = tr.iter().map(|t| t.0.as_str()).collect();
        for k in [
            "anode_effect",
            "tapping",
            "anode_change",
            "beam_move",
            "line_current_drop",
            "sensor_noise",
        ] {
            assert!(kinds.contains(k), "{k} in {kinds:?}");
        }
        let starts = |k: &str| {
            tr.iter()
                .filter(|t| t.0 == k && t.3 == Phase::Start)
                .count()
        };
        assert_eq!(starts("anode_effect"), 4);
        assert_eq!(
            starts("line_current_drop"),
            16,
            "a dip hits every cell of the line"
        );
        let mut pre: Vec<&str> = tr
            .iter()
            .filter(|t| t.0 == "anode_effect" && t.3 == Phase::Start)
            .filter_map(|t| t.4)
            .collect();
        pre.sort_unstable();
        assert_eq!(pre, ["fast", "none", "slow", "slow"]);
        // The controller's own moves are in the truth, marked as such, with a start and an end.
        let moves: Vec<_> = tr.iter().filter(|t| t.0 == "beam_move").collect();
        assert!(moves
            .iter()
            .all(|t| t.1 == "operation" && t.5["by"] == "controller"));
        assert_eq!(
            moves.iter().filter(|t| t.3 == Phase::Start).count(),
            moves.iter().filter(|t| t.3 == Phase::End).count()
        );
        for t in &tr {
            let want = match t.0.as_str() {
                "tapping" | "anode_change" | "beam_move" => "operation",
                "frozen" | "out_of_range" | "sensor_noise" | "dropout" => "sensor",
                _ => "process",
            };
            assert_eq!(t.1, want, "{}", t.0);
        }
        // Another seed is another day; the same seed is the same day.
        assert_eq!(format!("{tr:?}"), format!("{:?}", run_truth(3, 3 * 3600)));
        assert_ne!(format!("{tr:?}"), format!("{:?}", run_truth(4, 3 * 3600)));
    }

    #[test]
    fn flags_and_beam_reach_the_register_image() {
        use super::super::cell::sig;
        let s = Scenario::from_str(
            r#"
            [plant]
            realism = true
            [[groups]]
            id = "line"
            kind = "cell"
            name = "pot-{unit}"
            listen = "127.0.0.1:0"
            units = "1-2"
            [[faults]]
            kind = "tapping"
            devices = ["pot-1"]
            at = "1s"
            duration = "2s"
            [[faults]]
            kind = "anode_change"
            devices = ["pot-2"]
            at = "1s"
            duration = "10s"
            params = { flag = "2s" }
            [[faults]]
            kind = "beam_move"
            devices = ["pot-2"]
            at = "1s"
            duration = "5s"
            params = { mm = -1.0 }
            "#,
        )
        .unwrap();
        let mut p = Plant::new(s, 1);
        p.step();
        let beam0 = p.signals(1).unwrap()[sig::BEAM_POSITION];
        for _ in 0..15 {
            p.step();
        }
        let status = |d: usize, p: &Plant| p.image(d).unwrap().input[7];
        assert_eq!(status(0, &p) & (1 << 5), 1 << 5, "tapping bit");
        assert_eq!(status(1, &p) & (1 << 6), 1 << 6, "anode change bit");
        assert!(p.image(0).unwrap().discrete[5]);
        for _ in 0..60 {
            p.step();
        }
        assert_eq!(status(0, &p) & (3 << 5), 0);
        assert_eq!(status(1, &p) & (3 << 5), 0, "flag for 2 s of the 10 s");
        let beam1 = p.signals(1).unwrap()[sig::BEAM_POSITION];
        assert!((beam0 - beam1 - 1.0).abs() < 1e-6, "{beam0} -> {beam1}");
        let img = p.image(1).unwrap();
        let f = f32::from_bits(u32::from(img.input[17]) << 16 | u32::from(img.input[16]));
        assert!((f64::from(f) - beam1).abs() < 1e-3, "CDAB float {f}");
    }

    #[test]
    fn sensor_noise_changes_the_reading_not_the_process() {
        use super::super::cell::sig;
        let scn = |noise: bool| {
            let mut t = String::from(
                "[plant]\nrealism = true\n[[groups]]\nid = \"l\"\nkind = \"cell\"\nname = \"pot-{unit}\"\nlisten = \"127.0.0.1:0\"\nunits = \"1\"\n",
            );
            if noise {
                t.push_str("[[faults]]\nkind = \"sensor_noise\"\ndevices = [\"pot-1\"]\nat = \"1s\"\nduration = \"1m\"\nparams = { signal = \"voltage\", sigma = 0.05 }\n");
            }
            Plant::new(Scenario::from_str(&t).unwrap(), 2)
        };
        let (mut a, mut b) = (scn(false), scn(true));
        let mut diff = Vec::new();
        for _ in 0..300 {
            a.step();
            b.step();
            let (sa, sb) = (a.signals(0).unwrap(), b.signals(0).unwrap());
            diff.push(sb[sig::VOLTAGE] - sa[sig::VOLTAGE]);
            assert_eq!(sa[sig::ALUMINA], sb[sig::ALUMINA]);
            assert_eq!(sa[sig::BEAM_POSITION], sb[sig::BEAM_POSITION]);
        }
        let sd = (diff.iter().map(|d| d * d).sum::<f64>() / diff.len() as f64).sqrt();
        assert!((0.035..0.065).contains(&sd), "{sd}");
    }
}
