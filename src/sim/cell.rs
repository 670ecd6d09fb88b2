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
    /// Realistic cells: a feeder problem starves the cell; the R slope grows exponentially from
    /// `slope_from` to `slope_to` nΩ/min over `total_s` seconds (docs/DOMAIN.md A5b).
    Depletion {
        elapsed_s: f64,
        total_s: f64,
        slope_from: f64,
        slope_to: f64,
    },
}

/// R added by an exponentially growing slope after `elapsed_s` of `total_s`, µΩ.
pub fn depletion_rise(elapsed_s: f64, total_s: f64, slope_from: f64, slope_to: f64) -> f64 {
    let minutes = total_s / 60.0;
    let x = (elapsed_s / total_s.max(1e-9)).clamp(0.0, 1.0);
    let g = (slope_to / slope_from).max(1.0);
    let nohm = if (g - 1.0).abs() < 1e-9 {
        slope_from * minutes * x
    } else {
        slope_from * minutes / g.ln() * (g.powf(x) - 1.0)
    };
    nohm / 1000.0
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
    /// Metal tapping: (R rise at the end of the ramp, µΩ; fraction of the ramp done).
    pub tapping: Option<(f64, f64)>,
    /// Anode change: (controller flag on, R added now in µΩ).
    pub anode_change: Option<(bool, f64)>,
    /// A beam move ordered this tick, mm (by hand; the controller orders its own).
    pub beam_request: Option<f64>,
}

impl Default for CellEffects {
    fn default() -> Self {
        CellEffects {
            ae: None,
            noise_gain: 1.0,
            pad_mv: None,
            hot_temp_c: 0.0,
            hot_volt_v: 0.0,
            tapping: None,
            anode_change: None,
            beam_request: None,
        }
    }
}

// Realistic cells [U], docs/SIMULATOR.md "Realistic cells".
/// Alumina term of R: 0.02·(4 − c)² µΩ keeps the normal feeding slope within 0-3 nΩ/min.
const REAL_ALUMINA_COEF: f64 = 0.02;
const REAL_UNDERFEED: f64 = 0.7;
const REAL_OVERFEED: f64 = 1.5;
/// Controller: R deadband (docs/DOMAIN.md A2), check period, minimum time between moves,
/// largest move, beam speed, hold-off after a tapping / anode-change flag drops.
const BAND_UOHM: f64 = 0.05;
const CHECK_S: f64 = 60.0;
const MIN_BETWEEN_MOVES_S: f64 = 300.0;
const MAX_MOVE_MM: f64 = 2.0;
const BEAM_MM_PER_S: f64 = 0.2;
const HOLD_AFTER_FLAG_S: f64 = 120.0;
/// Time constant of the controller's R filter.
const FILTER_S: f64 = 120.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    Tracking,
    Under,
    Over,
}

/// State of a realistic cell: its controller and the disturbances it carries.
#[derive(Debug, Clone)]
struct Real {
    rng: Rng,
    /// µΩ per mm of beam travel (cell-to-cell variation).
    k_beam: f64,
    beam0: f64,
    beam_target: f64,
    /// ACD change not made by the beam (anode burn-off, metal growth, tapping), µΩ.
    r_disturb: f64,
    drift_per_s: f64,
    tap_applied: f64,
    r_target: f64,
    r_filt: Option<f64>,
    check_in_s: f64,
    since_move_s: f64,
    hold_s: f64,
    ctl: Ctl,
    ctl_s: f64,
    ctl_limit_s: f64,
    c_low: f64,
    c_high: f64,
    consumption_factor: f64,
    noise_level: f64,
    bubble_ar: f64,
    pad_mv: f64,
    pad_hz: f64,
    pad_mod: f64,
    /// A move started this tick, for the ground truth: (mm, seconds it takes).
    moved: Option<(f64, f64)>,
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
    beam: f64,
    real: Option<Box<Real>>,
    signals: [f64; sig::COUNT],
}

impl Cell {
    /// `aux` is a separate stream, so a realistic cell leaves the ideal cell's draws untouched
    /// (existing scenarios keep their values for a seed).
    pub fn new(mut rng: Rng, line_setpoint_ka: f64, mut aux: Rng, realism: bool) -> Cell {
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
        let beam = aux.range(180.0, 260.0);
        signals[sig::BEAM_POSITION] = beam;
        let real = realism.then(|| {
            let mut a = aux;
            let c_low = a.range(2.45, 2.75);
            let c_high = a.range(3.3, 3.7);
            let drift_sign = if a.uniform() < 0.7 { 1.0 } else { -1.0 };
            Box::new(Real {
                k_beam: a.range(0.04, 0.06),
                beam0: beam,
                beam_target: beam,
                r_disturb: 0.0,
                drift_per_s: drift_sign * a.range(0.005, 0.02) / 3600.0,
                tap_applied: 0.0,
                r_target: 0.0,
                r_filt: None,
                check_in_s: a.range(0.0, CHECK_S),
                since_move_s: MIN_BETWEEN_MOVES_S,
                hold_s: 0.0,
                ctl: Ctl::Tracking,
                ctl_s: 0.0,
                ctl_limit_s: a.range(5.0, 30.0) * 60.0,
                c_low,
                c_high,
                consumption_factor: a.range(0.95, 1.05),
                noise_level: a.range(0.6, 1.4),
                bubble_ar: 0.0,
                pad_mv: a.range(1.5, 4.0),
                pad_hz: a.range(0.006, 0.01),
                pad_mod: 0.0,
                moved: None,
                rng: a,
            })
        });
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
            beam,
            real,
            signals,
            rng,
        }
        .with_target()
    }

    /// A realistic cell's controller regulates R to where the cell starts, mid feeding cycle.
    fn with_target(mut self) -> Cell {
        if let Some(r) = &mut self.real {
            r.r_target =
                self.r_base + REAL_ALUMINA_COEF * (4.0 - 0.5 * (r.c_low + r.c_high)).powi(2);
            self.alumina = self.alumina.clamp(r.c_low, r.c_high);
        }
        self
    }

    /// A beam move the controller started on the last step: (mm, seconds it takes).
    pub fn take_beam_move(&mut self) -> Option<(f64, f64)> {
        self.real.as_mut().and_then(|r| r.moved.take())
    }

    /// Pseudo-resistance in μΩ for alumina `c` wt %: minimum near 4 %, rising on the lean side.
    fn resistance(&self, c: f64) -> f64 {
        let lean = (2.0 - c).max(0.0);
        self.r_base + 0.05 * (4.0 - c).powi(2) + 0.6 * lean * lean
    }

    /// Advance by `dt` seconds to simulated time `t` seconds with line current `line_ka`.
    pub fn step(&mut self, dt: f64, t: f64, tick: u64, line_ka: f64, fx: &CellEffects) {
        if self.real.is_some() {
            self.step_real(dt, t, tick, line_ka, fx);
            return;
        }
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
        // The ideal cell knows one precursor shape.
        let ae = match fx.ae {
            Some(AeDrive::Depletion {
                elapsed_s, total_s, ..
            }) => Some(AeDrive::Precursor {
                progress: elapsed_s / total_s.max(1e-9),
                shape: 2.0,
            }),
            other => other,
        };
        match ae {
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
            None | Some(AeDrive::Depletion { .. }) => {
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

        let noise = self.rng.normal();
        let temp = self.temperature(dt, t, load, fx.hot_temp_c, noise);

        // Scripted disturbances also act on an ideal cell (its controller does not react).
        let mut voltage = voltage;
        if fx.tapping.is_some() {
            status |= status::TAPPING;
        }
        if let Some((flag, _)) = fx.anode_change {
            if flag {
                status |= status::ANODE_CHANGE;
            }
        }
        let extra =
            fx.tapping.map_or(0.0, |(rise, p)| rise * p) + fx.anode_change.map_or(0.0, |(_, r)| r);
        if extra != 0.0 && self.ae_voltage.is_none() && line_ka >= 1.0 {
            voltage += line_ka * extra / 1000.0;
        }
        let resistance = if line_ka < 1.0 {
            resistance
        } else {
            (voltage - BACK_EMF_V) / line_ka * 1000.0
        };
        self.publish(t, tick, voltage, line_ka, temp, resistance, status);
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        t: f64,
        tick: u64,
        voltage: f64,
        line_ka: f64,
        temp: f64,
        resistance: f64,
        status: u16,
    ) {
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
        s[sig::BEAM_POSITION] = self.beam;
    }

    /// Bath temperature: per-cell base, 6 h wander, cooling without current.
    fn temperature(&mut self, dt: f64, t: f64, load: f64, hot_c: f64, noise: f64) -> f64 {
        if load < 0.5 {
            // Without current the cell loses heat; a long outage freezes it.
            self.cooling_c += 0.5 / 60.0 * dt;
        } else {
            self.cooling_c = (self.cooling_c - 0.1 / 60.0 * dt).max(0.0);
        }
        self.temp_base
            + 1.5 * (std::f64::consts::TAU * t / 21_600.0 + self.temp_phase).sin()
            + hot_c
            - self.cooling_c
            + 0.3 * noise
    }

    /// A cell that behaves like a plant's: its controller runs the feeding cycle and moves the
    /// beam to keep R in its band, and tapping, anode changes and feeder faults disturb R.
    fn step_real(&mut self, dt: f64, t: f64, tick: u64, line_ka: f64, fx: &CellEffects) {
        let Some(mut r) = self.real.take() else {
            return;
        };
        let setpoint = self.signals[sig::LINE_SETPOINT];
        let load = (line_ka / setpoint).clamp(0.0, 2.0);
        let nominal = CONSUMPTION_KG_PER_S_AT_SETPOINT * load;
        let consumption = nominal * r.consumption_factor;
        let active = matches!(fx.ae, Some(AeDrive::Active { .. }));

        // The AE kill: alumina dumped, overfeed; the precursor's R rise is gone with it.
        if self.ae_voltage.is_some() && !active {
            self.ae_voltage = None;
            self.alumina = C_LOW - 0.2;
            r.ctl = Ctl::Over;
            r.ctl_s = 0.0;
            r.ctl_limit_s = r.rng.range(20.0, 40.0) * 60.0;
        }
        let depletion = match fx.ae {
            Some(AeDrive::Depletion {
                elapsed_s,
                total_s,
                slope_from,
                slope_to,
            }) => depletion_rise(elapsed_s, total_s, slope_from, slope_to),
            // During the AE the voltage is the AE's; after the kill the rise is gone.
            _ => 0.0,
        };

        let mut status = 0u16;
        if active {
            if self.ae_voltage.is_none() {
                if let Some(AeDrive::Active { v_min, v_max }) = fx.ae {
                    self.ae_count += 1;
                    self.ae_voltage = Some(r.rng.range(v_min, v_max));
                }
            }
            self.alumina = (self.alumina - consumption * dt / BATH_KG * 100.0).max(0.5);
            status |= status::AE_ACTIVE | status::UNDERFEED;
        } else {
            // The controller's feeding cycle. `alumina` is its estimate: a blocked feeder is
            // invisible to it, as in a plant (the shots are still counted).
            self.alumina -= consumption * dt / BATH_KG * 100.0;
            r.ctl_s += dt;
            let next = match r.ctl {
                Ctl::Tracking if r.ctl_s >= r.ctl_limit_s => Some((Ctl::Under, 90.0)),
                Ctl::Under if self.alumina < r.c_low || r.ctl_s >= r.ctl_limit_s => {
                    Some((Ctl::Over, r.rng.range(15.0, 30.0)))
                }
                Ctl::Over if self.alumina > r.c_high || r.ctl_s >= r.ctl_limit_s => {
                    Some((Ctl::Tracking, r.rng.range(10.0, 40.0)))
                }
                _ => None,
            };
            if let Some((ctl, minutes)) = next {
                r.ctl = ctl;
                r.ctl_s = 0.0;
                r.ctl_limit_s = minutes * 60.0;
            }
            let ratio = match r.ctl {
                Ctl::Tracking => 1.0,
                Ctl::Under => REAL_UNDERFEED,
                Ctl::Over => REAL_OVERFEED,
            };
            if nominal > 0.0 {
                let interval = SHOT_KG / (nominal * ratio);
                self.shot_timer_s += dt;
                if self.shot_timer_s >= interval {
                    self.shot_timer_s -= interval;
                    self.feed_count += 1;
                    self.feeding_left_s = FEEDING_FLAG_S;
                    self.alumina += SHOT_KG / BATH_KG * 100.0;
                }
            }
            status |= match r.ctl {
                Ctl::Tracking => 0,
                Ctl::Under => status::UNDERFEED,
                Ctl::Over => status::OVERFEED,
            };
        }
        if self.feeding_left_s > 0.0 {
            status |= status::FEEDING;
            self.feeding_left_s -= dt;
        }
        if load < 0.97 {
            status |= status::LINE_LOW;
        }

        // Disturbances of the ACD: slow drift, tapping (stays until the beam corrects it).
        r.r_disturb += r.drift_per_s * dt;
        match fx.tapping {
            Some((rise, p)) => {
                let d = rise * p - r.tap_applied;
                r.r_disturb += d;
                r.tap_applied += d;
                status |= status::TAPPING;
            }
            None => r.tap_applied = 0.0,
        }
        let (ac_flag, r_ac) = fx.anode_change.unwrap_or((false, 0.0));
        if ac_flag {
            status |= status::ANODE_CHANGE;
        }

        // The beam: ordered moves run at a fixed speed.
        if let Some(mm) = fx.beam_request {
            r.beam_target = self.beam + mm;
        }
        let gap = r.beam_target - self.beam;
        self.beam += gap.clamp(-BEAM_MM_PER_S * dt, BEAM_MM_PER_S * dt);

        // Noise: bubbles (broadband around 1 Hz: AR(1) with 0.3 s memory; a coherent 1 Hz sine
        // would alias into a slow wander when polled at 1 Hz) and a metal-pad swing whose
        // amplitude wanders (AR(1), 15 min), both scaled per cell.
        let phi = (-dt / 0.3).exp();
        r.bubble_ar = phi * r.bubble_ar + (1.0 - phi * phi).sqrt() * r.rng.normal();
        let bubble = r.noise_level * 0.007 * r.bubble_ar * fx.noise_gain;
        let phi = (-dt / 900.0).exp();
        r.pad_mod = phi * r.pad_mod + (1.0 - phi * phi).sqrt() * r.rng.normal();
        self.pad_phase += std::f64::consts::TAU * r.pad_hz * dt;
        let pad_mv = fx
            .pad_mv
            .unwrap_or(r.pad_mv * (1.0 + 0.4 * r.pad_mod).max(0.2));
        let pad = pad_mv / 1000.0 * self.pad_phase.sin();

        let r_cell = self.r_base
            + REAL_ALUMINA_COEF * (4.0 - self.alumina).powi(2)
            + r.k_beam * (self.beam - r.beam0)
            + r.r_disturb
            + r_ac
            + depletion;
        let voltage = if let Some(v_ae) = self.ae_voltage {
            (v_ae + 2.0 * r.rng.normal()).max(8.5)
        } else if line_ka < 1.0 {
            1.2 + 0.005 * r.rng.normal()
        } else {
            BACK_EMF_V + line_ka * r_cell / 1000.0 + (bubble + pad) * load + fx.hot_volt_v
        };
        let resistance = if line_ka < 1.0 {
            0.0
        } else {
            (voltage - BACK_EMF_V) / line_ka * 1000.0
        };

        // Regulation: every minute, move the beam if the filtered R is out of its band.
        let flagged = fx.tapping.is_some() || ac_flag;
        if flagged {
            r.hold_s = HOLD_AFTER_FLAG_S;
        } else {
            r.hold_s = (r.hold_s - dt).max(0.0);
        }
        let blind = self.ae_voltage.is_some() || load < 0.97;
        if !blind {
            let a = (-dt / FILTER_S).exp();
            r.r_filt = Some(
                r.r_filt
                    .map_or(resistance, |f| a * f + (1.0 - a) * resistance),
            );
        }
        r.since_move_s += dt;
        r.check_in_s -= dt;
        if r.check_in_s <= 0.0 {
            r.check_in_s += CHECK_S;
            let idle = (r.beam_target - self.beam).abs() < 1e-9;
            if let (Some(f), false, false, true, true) = (
                r.r_filt,
                blind,
                flagged || r.hold_s > 0.0,
                idle,
                r.since_move_s >= MIN_BETWEEN_MOVES_S,
            ) {
                let dev = f - r.r_target;
                if dev.abs() > BAND_UOHM {
                    let mm = (-dev / r.k_beam).clamp(-MAX_MOVE_MM, MAX_MOVE_MM);
                    let mm = (mm * 10.0).round() / 10.0;
                    if mm != 0.0 {
                        r.beam_target = self.beam + mm;
                        r.since_move_s = 0.0;
                        // The filter restarts from the expected R after the step.
                        r.r_filt = Some(f + mm * r.k_beam);
                        r.moved = Some((mm, mm.abs() / BEAM_MM_PER_S));
                    }
                }
            }
        }
        let noise = r.rng.normal();
        self.real = Some(r);
        let temp = self.temperature(dt, t, load, fx.hot_temp_c, noise);
        self.publish(t, tick, voltage, line_ka, temp, resistance, status);
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
        let mut c = Cell::new(Rng::new(3, 1), 500.0, Rng::new(3, 2), false);
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
        let mut c = Cell::new(Rng::new(3, 1), 500.0, Rng::new(3, 2), false);
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

#[cfg(test)]
mod realism_tests {
    use super::*;

    const DT: f64 = 0.1;

    pub(super) fn real_cell(seed: u64) -> Cell {
        Cell::new(Rng::new(seed, 1), 500.0, Rng::new(seed, 2), true)
    }

    /// Steps `secs` with `fx`, returning R and status sampled once a second.
    fn run(
        c: &mut Cell,
        t: &mut f64,
        secs: f64,
        fx: impl Fn(f64) -> CellEffects,
    ) -> Vec<(f64, u16, f64)> {
        let mut out = Vec::new();
        let n = (secs / DT).round() as u64;
        let t0 = *t;
        for i in 0..n {
            *t += DT;
            c.step(DT, *t, i, 500.0, &fx(*t - t0));
            if (i + 1) % 10 == 0 {
                let s = c.signals();
                out.push((
                    s[sig::RESISTANCE],
                    s[sig::STATUS] as u16,
                    s[sig::BEAM_POSITION],
                ));
            }
        }
        out
    }

    /// Least-squares slope over 300 one-second samples ending at each sample, nΩ/min.
    fn slopes(r: &[f64]) -> Vec<f64> {
        let w = 300;
        (w..=r.len())
            .step_by(30)
            .map(|end| {
                let y = &r[end - w..end];
                let n = w as f64;
                let xm = (n - 1.0) / 2.0;
                let ym = y.iter().sum::<f64>() / n;
                let (mut sxy, mut sxx) = (0.0, 0.0);
                for (i, v) in y.iter().enumerate() {
                    sxy += (i as f64 - xm) * (v - ym);
                    sxx += (i as f64 - xm).powi(2);
                }
                sxy / sxx * 60.0 * 1000.0
            })
            .collect()
    }

    fn pct(mut v: Vec<f64>, p: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    }

    fn r_of(s: &[(f64, u16, f64)]) -> Vec<f64> {
        s.iter().map(|x| x.0).collect()
    }

    #[test]
    fn normal_cell_slopes_stay_within_a_few_nohm_r_of() {
        for seed in 1..=4 {
            let mut c = real_cell(seed);
            let mut t = 0.0;
            let s = run(&mut c, &mut t, 3.0 * 3600.0, |_| CellEffects::default());
            let abs: Vec<f64> = slopes(&r_of(&s)).iter().map(|x| x.abs()).collect();
            // Printed for docs/SIMULATOR.md (`cargo test --lib normal_cell_slopes -- --nocapture`).
            eprintln!(
                "seed {seed}: |slope| median {:.2}, p90 {:.2}, p95 {:.2}, max {:.1} nΩ/min",
                pct(abs.clone(), 0.5),
                pct(abs.clone(), 0.9),
                pct(abs.clone(), 0.95),
                pct(abs.clone(), 1.0)
            );
            // docs/DOMAIN.md A5b: 0-3 nΩ/min; beam moves make short ~10 nΩ/min transients.
            assert!(
                pct(abs.clone(), 0.5) < 1.5,
                "seed {seed} median {}",
                pct(abs.clone(), 0.5)
            );
            assert!(
                pct(abs.clone(), 0.9) < 3.0,
                "seed {seed} p90 {}",
                pct(abs, 0.9)
            );
            let modes: std::collections::HashSet<u16> = s
                .iter()
                .map(|x| x.1 & (status::UNDERFEED | status::OVERFEED))
                .collect();
            assert_eq!(modes.len(), 3, "tracking, underfeed and overfeed all seen");
            assert!(s
                .iter()
                .all(|x| x.1 & (status::TAPPING | status::ANODE_CHANGE) == 0));
        }
    }

    #[test]
    fn noise_is_within_the_normal_band_and_varies_by_cell() {
        // docs/DOMAIN.md A4: normal band RMS below 15 mV (0.03 µΩ at 500 kA).
        let mut rms = Vec::new();
        for seed in 1..=6 {
            let mut c = real_cell(seed);
            let mut t = 0.0;
            let s = run(&mut c, &mut t, 1200.0, |_| CellEffects::default());
            let r: Vec<f64> = r_of(&s);
            let dev: Vec<f64> = (30..r.len() - 30)
                .map(|i| r[i] - r[i - 30..i + 30].iter().sum::<f64>() / 60.0)
                .collect();
            let mv = (dev.iter().map(|d| d * d).sum::<f64>() / dev.len() as f64).sqrt() * 500.0;
            assert!((1.5..15.0).contains(&mv), "seed {seed}: {mv} mV");
            rms.push(mv);
        }
        let (lo, hi) = (pct(rms.clone(), 0.0), pct(rms, 1.0));
        assert!(hi > 1.3 * lo, "cells differ: {lo}..{hi} mV");
    }

    #[test]
    fn slow_precursor_slope_grows_and_the_controller_moves_the_beam() {
        let mut c = real_cell(7);
        let mut t = 0.0;
        run(&mut c, &mut t, 1800.0, |_| CellEffects::default());
        let total = 20.0 * 60.0;
        let s = run(&mut c, &mut t, total, |e| CellEffects {
            ae: Some(AeDrive::Depletion {
                elapsed_s: e,
                total_s: total,
                slope_from: 4.0,
                slope_to: 30.0,
            }),
            ..CellEffects::default()
        });
        // Underlying rise: ∫ slope = 4·20/ln 7.5·6.5 nΩ ≈ 0.26 µΩ.
        assert!((depletion_rise(total, total, 4.0, 30.0) - 0.258).abs() < 0.01);
        let r = r_of(&s);
        let sl = slopes(&r);
        let beam: Vec<f64> = s.iter().map(|x| x.2).collect();
        let lowered = beam[0] - beam[beam.len() - 1];
        // The last 5 min before the AE: steep, even through the beam moves.
        let last = sl[sl.len() - 1];
        assert!(last > 10.0, "slope at the end {last} nΩ/min");
        assert!(
            lowered >= 1.0,
            "controller lowers the beam during the precursor: {lowered}"
        );
        // Seen through the moves, R still ends higher than it started.
        assert!(
            r[r.len() - 1] > r[0] + 0.05,
            "{} -> {}",
            r[0],
            r[r.len() - 1]
        );
    }

    #[test]
    fn tapping_raises_r_flags_it_and_the_beam_comes_down_after() {
        let mut c = real_cell(8);
        let mut t = 0.0;
        let before = run(&mut c, &mut t, 600.0, |_| CellEffects::default());
        let r0 = before[before.len() - 60..].iter().map(|x| x.0).sum::<f64>() / 60.0;
        let beam0 = before[before.len() - 1].2;
        let during = run(&mut c, &mut t, 360.0, |e| CellEffects {
            tapping: Some((0.10, (e / 180.0).min(1.0))),
            ..CellEffects::default()
        });
        assert!(during.iter().all(|x| x.1 & status::TAPPING != 0));
        assert!(
            during.iter().all(|x| (x.2 - beam0).abs() < 1e-9),
            "no regulation while tapping"
        );
        let r1 = during[during.len() - 60..].iter().map(|x| x.0).sum::<f64>() / 60.0;
        assert!((r1 - r0 - 0.10).abs() < 0.03, "R {r0:.3} -> {r1:.3}");
        let after = run(&mut c, &mut t, 900.0, |_| CellEffects::default());
        assert!(after.iter().all(|x| x.1 & status::TAPPING == 0));
        let beam1 = after[after.len() - 1].2;
        assert!(beam0 - beam1 > 1.0, "beam {beam0} -> {beam1}");
        let r2 = after[after.len() - 60..].iter().map(|x| x.0).sum::<f64>() / 60.0;
        assert!((r2 - r0).abs() < 0.06, "back in band: {r0:.3} -> {r2:.3}");
    }

    #[test]
    fn anode_change_flags_and_disturbs_r_and_noise() {
        let mut c = real_cell(9);
        let mut t = 0.0;
        let quiet = run(&mut c, &mut t, 600.0, |_| CellEffects::default());
        let sd = |v: &[(f64, u16, f64)]| {
            let d: Vec<f64> = v.windows(2).map(|w| w[1].0 - w[0].0).collect();
            (d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64).sqrt()
        };
        let r0 = quiet.iter().map(|x| x.0).sum::<f64>() / quiet.len() as f64;
        let changing = run(&mut c, &mut t, 300.0, |_| CellEffects {
            anode_change: Some((true, 0.06)),
            noise_gain: 2.5,
            ..CellEffects::default()
        });
        assert!(changing.iter().all(|x| x.1 & status::ANODE_CHANGE != 0));
        let r1 = changing.iter().map(|x| x.0).sum::<f64>() / changing.len() as f64;
        assert!((r1 - r0 - 0.06).abs() < 0.03, "R {r0:.3} -> {r1:.3}");
        assert!(
            sd(&changing) > 2.0 * sd(&quiet),
            "noise {} vs {}",
            sd(&changing),
            sd(&quiet)
        );
    }

    #[test]
    fn sudden_ae_has_no_r_precursor() {
        let mut c = real_cell(10);
        let mut t = 0.0;
        let s = run(&mut c, &mut t, 900.0, |_| CellEffects::default());
        let sl = slopes(&r_of(&s));
        assert!(sl[sl.len() - 1].abs() < 4.0);
        run(&mut c, &mut t, 2.0, |_| CellEffects {
            ae: Some(AeDrive::Active {
                v_min: 10.0,
                v_max: 40.0,
            }),
            ..CellEffects::default()
        });
        assert!(c.signals()[sig::VOLTAGE] > 8.0);
        assert!(c.signals()[sig::STATUS] as u16 & status::AE_ACTIVE != 0);
        run(&mut c, &mut t, 2.0, |_| CellEffects::default());
        assert!(c.signals()[sig::VOLTAGE] < 5.0, "killed");
    }
}
