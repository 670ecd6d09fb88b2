//! Electrolytic cell model (400–600 kA prebake). Pure: time and fault effects are passed in.
//!
//! Voltage is built the way a pot controller sees it: V = 1.65 V + I·R(c) + noise, where the
//! pseudo-resistance R depends on alumina concentration c (lean side rises, docs/DOMAIN.md A2/A5),
//! bubble noise sits near 1 Hz and the metal pad rolls at about 0.008 Hz (docs/DOMAIN.md A3).

use super::rng::Rng;

/// Back-EMF term of the pseudo-resistance [S: Banta 2003].
pub const BACK_EMF_V: f64 = 1.65;

/// Signal indices of a cell (order of [`Cell::signals`]).
pub mod sig {
    pub const VOLTAGE: usize = 0;
    pub const CURRENT: usize = 1;
    pub const BATH_TEMP: usize = 2;
    pub const ALUMINA: usize = 3;
    pub const RESISTANCE: usize = 4;
    pub const STATUS: usize = 5;
    pub const FEED_COUNT: usize = 6;
    pub const AE_COUNT: usize = 7;
    pub const HEARTBEAT: usize = 8;
    pub const UPTIME: usize = 9;
    pub const VOLTAGE_TARGET: usize = 10;
    pub const LINE_SETPOINT: usize = 11;
    pub const BEAM_POSITION: usize = 12;
    pub const COUNT: usize = 13;
    pub const NAMES: [&str; COUNT] = [
        "voltage",
        "current",
        "bath_temp",
        "alumina",
        "resistance",
        "status",
        "feed_count",
        "ae_count",
        "heartbeat",
        "uptime",
        "voltage_target",
        "line_setpoint",
        "beam_position",
    ];
}

/// Status word bits.
pub mod status {
    pub const FEEDING: u16 = 1 << 0;
    pub const AE_ACTIVE: u16 = 1 << 1;
    pub const OVERFEED: u16 = 1 << 2;
    pub const UNDERFEED: u16 = 1 << 3;
    pub const LINE_LOW: u16 = 1 << 4;
    pub const TAPPING: u16 = 1 << 5;
    pub const ANODE_CHANGE: u16 = 1 << 6;
}

// Feeding figures [U], sized for 500 kA: ~5 kg/min alumina consumed, 1.8 kg shots,
// 8 t of bath; gives a ~1 h underfeed/overfeed cycle between 2.6 and 3.4 wt %.
const CONSUMPTION_KG_PER_S_AT_SETPOINT: f64 = 5.0 / 60.0;
const SHOT_KG: f64 = 1.8;
const BATH_KG: f64 = 8000.0;
const UNDERFEED_RATIO: f64 = 0.6;
const OVERFEED_RATIO: f64 = 1.5;
const C_LOW: f64 = 2.6;
const C_HIGH: f64 = 3.4;
const C_AT_AE: f64 = 1.3;
const FEEDING_FLAG_S: f64 = 2.0;

/// How a running anode-effect fault drives the cell this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AeDrive {
    /// Underfeeding towards an AE; `progress` runs 0 → 1 over the precursor. Alumina falls
    /// as `progress^shape` (1 = linear, 2 = slow start, steep end).
    Precursor { progress: f64, shape: f64 },
    /// The AE is on: voltage between `v_min` and `v_max`.
    Active { v_min: f64, v_max: f64 },
}

/// Fault effects on one cell for one tick (all neutral by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellEffects {
    pub ae: Option<AeDrive>,
    /// Multiplier on bubble (~1 Hz) noise.
    pub noise_gain: f64,
    /// Metal-pad oscillation amplitude override, mV.
    pub pad_mv: Option<f64>,
    /// Added bath temperature, °C, and added voltage, V (hot cell).
    pub hot_temp_c: f64,
    pub hot_volt_v: f64,
}

impl Default for CellEffects {
    fn default() -> Self {
        CellEffects {
            ae: None,
            noise_gain: 1.0,
            pad_mv: None,
            hot_temp_c: 0.0,
            hot_volt_v: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedMode {
    Under,
    Over,
}

/// One cell's state.
#[derive(Debug, Clone)]
pub struct Cell {
    rng: Rng,
    r_base: f64,
    temp_base: f64,
    temp_phase: f64,
    bubble_phase: f64,
    pad_phase: f64,
    alumina: f64,
    mode: FeedMode,
    shot_timer_s: f64,
    feeding_left_s: f64,
    feed_count: u64,
    ae_count: u64,
    ae_voltage: Option<f64>,
    precursor_from: Option<f64>,
    cooling_c: f64,
    signals: [f64; sig::COUNT],
}

impl Cell {
    pub fn new(mut rng: Rng, line_setpoint_ka: f64) -> Cell {
        // Spread the cells over the 3.9–4.3 V band at setpoint [S: TRIMET, Qatalum].
        let v_target = rng.range(4.0, 4.25);
        let r_base = (v_target - BACK_EMF_V) / line_setpoint_ka * 1000.0 - 0.05 * 0.64;
        let alumina = rng.range(C_LOW, C_HIGH);
        let mode = if rng.uniform() < 0.5 {
            FeedMode::Under
        } else {
            FeedMode::Over
        };
        let mut signals = [0.0; sig::COUNT];
        signals[sig::VOLTAGE_TARGET] = v_target;
        signals[sig::LINE_SETPOINT] = line_setpoint_ka;
        // Anode beam position [U]: mid-travel of a ~400 mm screw jack.
        signals[sig::BEAM_POSITION] = rng.range(180.0, 260.0);
        Cell {
            r_base,
            temp_base: rng.range(948.0, 962.0),
            temp_phase: rng.range(0.0, std::f64::consts::TAU),
            bubble_phase: rng.range(0.0, std::f64::consts::TAU),
            pad_phase: rng.range(0.0, std::f64::consts::TAU),
            alumina,
            mode,
            shot_timer_s: rng.range(0.0, 20.0),
            feeding_left_s: 0.0,
            feed_count: (rng.uniform() * 100_000.0) as u64,
            ae_count: (rng.uniform() * 20.0) as u64,
            ae_voltage: None,
            precursor_from: None,
            cooling_c: 0.0,
            signals,
            rng,
        }
    }

    /// Pseudo-resistance in μΩ for alumina `c` wt %: minimum near 4 %, rising on the lean side.
    fn resistance(&self, c: f64) -> f64 {
        let lean = (2.0 - c).max(0.0);
        self.r_base + 0.05 * (4.0 - c).powi(2) + 0.6 * lean * lean
    }

    /// Advance by `dt` seconds to simulated time `t` seconds with line current `line_ka`.
    pub fn step(&mut self, dt: f64, t: f64, tick: u64, line_ka: f64, fx: &CellEffects) {
        let setpoint = self.signals[sig::LINE_SETPOINT];
        let load = (line_ka / setpoint).clamp(0.0, 2.0);
        let consumption = CONSUMPTION_KG_PER_S_AT_SETPOINT * load;

        // The AE kill: alumina is dumped into the bath and the controller overfeeds.
        if self.ae_voltage.is_some() && !matches!(fx.ae, Some(AeDrive::Active { .. })) {
            self.ae_voltage = None;
            self.alumina = C_LOW - 0.2;
            self.mode = FeedMode::Over;
        }
        if self.precursor_from.is_some() && fx.ae.is_none() {
            self.precursor_from = None;
            self.mode = FeedMode::Over;
        }

        let mut status = 0u16;
        match fx.ae {
            Some(AeDrive::Precursor { progress, shape }) => {
                // Feeding stops (feeder blocked / underfeed run-away): alumina falls to the AE
                // point, slowly at first, so the R slope starts small and accelerates.
                let from = *self.precursor_from.get_or_insert(self.alumina);
                let p = progress.clamp(0.0, 1.0).powf(shape);
                self.alumina = from - (from - C_AT_AE) * p;
                self.feeding_left_s = 0.0;
                status |= status::UNDERFEED;
            }
            Some(AeDrive::Active { v_min, v_max }) => {
                if self.ae_voltage.is_none() {
                    self.ae_count += 1;
                    self.ae_voltage = Some(self.rng.range(v_min, v_max));
                }
                self.alumina = (self.alumina - consumption * dt / BATH_KG * 100.0).max(0.5);
                status |= status::AE_ACTIVE | status::UNDERFEED;
            }
            None => {
                self.alumina -= consumption * dt / BATH_KG * 100.0;
                if self.alumina < C_LOW {
                    self.mode = FeedMode::Over;
                } else if self.alumina > C_HIGH {
                    self.mode = FeedMode::Under;
                }
                let ratio = match self.mode {
                    FeedMode::Under => UNDERFEED_RATIO,
                    FeedMode::Over => OVERFEED_RATIO,
                };
                if consumption > 0.0 {
                    let interval = SHOT_KG / (consumption * ratio);
                    self.shot_timer_s += dt;
                    if self.shot_timer_s >= interval {
                        self.shot_timer_s -= interval;
                        self.feed_count += 1;
                        self.feeding_left_s = FEEDING_FLAG_S;
                        self.alumina += SHOT_KG / BATH_KG * 100.0;
                    }
                }
                status |= match self.mode {
                    FeedMode::Under => status::UNDERFEED,
                    FeedMode::Over => status::OVERFEED,
                };
            }
        }
        if self.feeding_left_s > 0.0 {
            status |= status::FEEDING;
            self.feeding_left_s -= dt;
        }
        if load < 0.97 {
            status |= status::LINE_LOW;
        }

        // Bubble noise near 1 Hz with a wandering frequency, plus white noise.
        self.bubble_phase += std::f64::consts::TAU * (1.0 + 0.1 * self.rng.normal()) * dt;
        let gain = fx.noise_gain;
        let bubble = (0.008 * self.bubble_phase.sin() + 0.004 * self.rng.normal()) * gain;
        // Metal-pad roll at ~0.008 Hz.
        self.pad_phase += std::f64::consts::TAU * 0.008 * dt;
        let pad = fx.pad_mv.unwrap_or(4.0) / 1000.0 * self.pad_phase.sin();

        let r = self.resistance(self.alumina);
        let voltage = if let Some(v_ae) = self.ae_voltage {
            // An AE is erratic: tens of volts with large swings.
            (v_ae + 2.0 * self.rng.normal()).max(8.5)
        } else if line_ka < 1.0 {
            // No current: only the decaying back-EMF remains.
            1.2 + 0.005 * self.rng.normal()
        } else {
            BACK_EMF_V + line_ka * r / 1000.0 + (bubble + pad) * load + fx.hot_volt_v
        };
        let resistance = if line_ka < 1.0 {
            0.0
        } else {
            (voltage - BACK_EMF_V) / line_ka * 1000.0
        };

        if load < 0.5 {
            // Without current the cell loses heat; a long outage freezes it.
            self.cooling_c += 0.5 / 60.0 * dt;
        } else {
            self.cooling_c = (self.cooling_c - 0.1 / 60.0 * dt).max(0.0);
        }
        let temp = self.temp_base
            + 1.5 * (std::f64::consts::TAU * t / 21_600.0 + self.temp_phase).sin()
            + fx.hot_temp_c
            - self.cooling_c
            + 0.3 * self.rng.normal();

        let s = &mut self.signals;
        s[sig::VOLTAGE] = voltage;
        s[sig::CURRENT] = line_ka;
        s[sig::BATH_TEMP] = temp;
        s[sig::ALUMINA] = self.alumina;
        s[sig::RESISTANCE] = resistance;
        s[sig::STATUS] = f64::from(status);
        s[sig::FEED_COUNT] = self.feed_count as f64;
        s[sig::AE_COUNT] = self.ae_count as f64;
        s[sig::HEARTBEAT] = (tick % 65_536) as f64;
        s[sig::UPTIME] = t.floor();
    }

    pub fn signals(&self) -> &[f64] {
        &self.signals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cell: &mut Cell, secs: f64, fx: &CellEffects, t0: &mut f64) {
        let dt = 0.1;
        let n = (secs / dt) as u64;
        for i in 0..n {
            *t0 += dt;
            cell.step(dt, *t0, i, 500.0, fx);
        }
    }

    #[test]
    fn normal_cell_stays_in_band() {
        let mut c = Cell::new(Rng::new(3, 1), 500.0);
        let mut t = 0.0;
        for _ in 0..600 {
            run(&mut c, 10.0, &CellEffects::default(), &mut t);
            let v = c.signals()[sig::VOLTAGE];
            let a = c.signals()[sig::ALUMINA];
            assert!((3.85..4.45).contains(&v), "voltage {v}");
            assert!((2.2..3.8).contains(&a), "alumina {a}");
        }
    }

    #[test]
    fn precursor_raises_resistance_then_ae_jumps() {
        let mut c = Cell::new(Rng::new(3, 1), 500.0);
        let mut t = 0.0;
        run(&mut c, 5.0, &CellEffects::default(), &mut t);
        let r0 = c.signals()[sig::RESISTANCE];
        let mut last = r0;
        for k in 1..=10 {
            let fx = CellEffects {
                ae: Some(AeDrive::Precursor {
                    progress: k as f64 / 10.0,
                    shape: 2.0,
                }),
                ..CellEffects::default()
            };
            run(&mut c, 0.2, &fx, &mut t);
            last = c.signals()[sig::RESISTANCE];
        }
        assert!(last > r0 + 0.3, "R {r0} -> {last}");
        let fx = CellEffects {
            ae: Some(AeDrive::Active {
                v_min: 10.0,
                v_max: 40.0,
            }),
            ..CellEffects::default()
        };
        run(&mut c, 1.0, &fx, &mut t);
        assert!(c.signals()[sig::VOLTAGE] > 8.0);
        run(&mut c, 1.0, &CellEffects::default(), &mut t);
        assert!(c.signals()[sig::VOLTAGE] < 5.0);
    }
}
