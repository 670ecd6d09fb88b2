//! Anode baking furnace section following a heating curve. Pure: time and effects passed in.

use super::rng::Rng;

/// Signal indices of a kiln section (order of [`Kiln::signals`]).
pub mod sig {
    pub const FLUE_TEMP: usize = 0;
    pub const DRAFT: usize = 1;
    pub const CURVE_TEMP: usize = 2;
    pub const HEATING_RATE: usize = 3;
    pub const CO: usize = 4;
    pub const O2: usize = 5;
    pub const EXHAUST_DRAFT: usize = 6;
    pub const STATUS: usize = 7;
    pub const HEARTBEAT: usize = 8;
    pub const CYCLE_ELAPSED: usize = 9;
    pub const COUNT: usize = 10;
    pub const NAMES: [&str; COUNT] = [
        "flue_temp",
        "draft",
        "curve_temp",
        "heating_rate",
        "co",
        "o2",
        "exhaust_draft",
        "status",
        "heartbeat",
        "cycle_elapsed",
    ];
}

pub mod status {
    pub const FIRING: u16 = 1 << 0;
    pub const PREHEAT: u16 = 1 << 1;
    pub const DRAFT_LOW: u16 = 1 << 2;
}

/// Heating curve of one section, (hours into the cycle, °C) [U]: 12.5 °C/h through the
/// 200–600 °C preheat band (8–15 °C/h, docs/DOMAIN.md C1), peak 1,200 °C (1,150–1,250 [S: ALUMAR]),
/// soak, then cooling.
pub const CURVE: [(f64, f64); 7] = [
    (0.0, 120.0),
    (40.0, 620.0),
    (64.0, 1000.0),
    (76.0, 1200.0),
    (100.0, 1200.0),
    (130.0, 400.0),
    (140.0, 120.0),
];
pub const CYCLE_H: f64 = 140.0;

/// Curve temperature and slope (°C/h) at `h` hours into the cycle.
pub fn curve_at(h: f64) -> (f64, f64) {
    let h = h.rem_euclid(CYCLE_H);
    for w in CURVE.windows(2) {
        let ((h0, t0), (h1, t1)) = (w[0], w[1]);
        if h >= h0 && h <= h1 {
            let slope = (t1 - t0) / (h1 - h0);
            return (t0 + slope * (h - h0), slope);
        }
    }
    (CURVE[0].1, 0.0)
}

/// Fault effects on a thermal unit (kiln section or calciner) for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ThermalEffects {
    /// Temperature below the curve / setpoint, °C.
    pub lag_c: f64,
    /// Draft moving to `to_pa`; `frac` 0 → 1 blends from normal to the target.
    pub draft: Option<(f64, f64)>,
    /// Incomplete combustion: (CO ppm, O2 %, blend fraction).
    pub combustion: Option<(f64, f64, f64)>,
}

fn blend(normal: f64, target: f64, frac: f64) -> f64 {
    normal + (target - normal) * frac.clamp(0.0, 1.0)
}

#[derive(Debug, Clone)]
pub struct Kiln {
    rng: Rng,
    offset_h: f64,
    draft_base: f64,
    exhaust_base: f64,
    last_lag: f64,
    signals: [f64; sig::COUNT],
}

impl Kiln {
    pub fn new(mut rng: Rng) -> Kiln {
        Kiln {
            offset_h: rng.range(0.0, CYCLE_H),
            draft_base: rng.range(-40.0, -20.0),
            exhaust_base: rng.range(-260.0, -180.0),
            last_lag: 0.0,
            signals: [0.0; sig::COUNT],
            rng,
        }
    }

    pub fn step(&mut self, dt: f64, t: f64, tick: u64, fx: &ThermalEffects) {
        let hours = self.offset_h + t / 3600.0;
        let (curve, slope) = curve_at(hours);
        let lag_rate_per_h = (fx.lag_c - self.last_lag) / dt * 3600.0;
        self.last_lag = fx.lag_c;
        let flue = curve - fx.lag_c + 2.0 * self.rng.normal();
        let rate = slope - lag_rate_per_h + 0.3 * self.rng.normal();

        let mut draft = self.draft_base + 2.0 * self.rng.normal();
        let mut exhaust = self.exhaust_base + 6.0 * self.rng.normal();
        if let Some((to_pa, frac)) = fx.draft {
            draft = blend(draft, to_pa, frac);
            // The exhaust manifold loses suction in proportion.
            exhaust = blend(exhaust, to_pa * 4.0, frac);
        }
        let mut co = (150.0 + 30.0 * self.rng.normal()).max(0.0);
        let mut o2 = 6.0 + 0.3 * self.rng.normal();
        if let Some((co_to, o2_to, frac)) = fx.combustion {
            co = blend(co, co_to, frac);
            o2 = blend(o2, o2_to, frac);
        }

        let h = hours.rem_euclid(CYCLE_H);
        let mut status = 0u16;
        if (64.0..100.0).contains(&h) {
            status |= status::FIRING;
        } else if h < 64.0 {
            status |= status::PREHEAT;
        }
        if draft > -5.0 {
            status |= status::DRAFT_LOW;
        }
        let s = &mut self.signals;
        s[sig::FLUE_TEMP] = flue;
        s[sig::DRAFT] = draft;
        s[sig::CURVE_TEMP] = curve;
        s[sig::HEATING_RATE] = rate;
        s[sig::CO] = co;
        s[sig::O2] = o2;
        s[sig::EXHAUST_DRAFT] = exhaust;
        s[sig::STATUS] = f64::from(status);
        s[sig::HEARTBEAT] = (tick % 65_536) as f64;
        s[sig::CYCLE_ELAPSED] = (h * 3600.0).floor();
    }

    pub fn signals(&self) -> &[f64] {
        &self.signals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_is_continuous_and_preheat_rate_in_band() {
        let (t, slope) = curve_at(20.0);
        assert!((t - 370.0).abs() < 1e-9);
        assert!((8.0..=15.0).contains(&slope));
        assert!((curve_at(CYCLE_H).0 - curve_at(0.0).0).abs() < 1e-9);
    }

    #[test]
    fn lag_and_draft_loss_show() {
        let mut k = Kiln::new(Rng::new(1, 2));
        k.step(0.1, 0.1, 1, &ThermalEffects::default());
        let curve = k.signals()[sig::CURVE_TEMP];
        let fx = ThermalEffects {
            lag_c: 60.0,
            draft: Some((0.0, 1.0)),
            combustion: None,
        };
        k.step(0.1, 0.2, 2, &fx);
        assert!(k.signals()[sig::FLUE_TEMP] < curve - 45.0);
        assert!(k.signals()[sig::DRAFT].abs() < 1e-9);
    }
}
