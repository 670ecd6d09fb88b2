//! Alumina calciner (gas suspension / CFB). Pure: time and effects passed in.

use super::kiln::ThermalEffects;
use super::rng::Rng;

pub mod sig {
    pub const FURNACE_TEMP: usize = 0;
    pub const O2: usize = 1;
    pub const CO: usize = 2;
    pub const DRAFT: usize = 3;
    pub const CYCLONE_DP: usize = 4;
    pub const STATUS: usize = 5;
    pub const HEARTBEAT: usize = 6;
    pub const PRODUCTION: usize = 7;
    pub const SETPOINT: usize = 8;
    pub const COUNT: usize = 9;
    pub const NAMES: [&str; COUNT] = [
        "furnace_temp",
        "o2",
        "co",
        "draft",
        "cyclone_dp",
        "status",
        "heartbeat",
        "production",
        "setpoint",
    ];
}

pub mod status {
    pub const RUNNING: u16 = 1 << 0;
    pub const DRAFT_LOW: u16 = 1 << 1;
    pub const CO_HIGH: u16 = 1 << 2;
}

fn blend(normal: f64, target: f64, frac: f64) -> f64 {
    normal + (target - normal) * frac.clamp(0.0, 1.0)
}

#[derive(Debug, Clone)]
pub struct Calciner {
    rng: Rng,
    setpoint: f64,
    draft_base: f64,
    dp_base: f64,
    /// Throughput, kg/s (~2,000 t/d [U], within 300–3,800 t/d [S: sinokeda]).
    rate_kg_s: f64,
    produced_kg: f64,
    wander: f64,
    signals: [f64; sig::COUNT],
}

impl Calciner {
    pub fn new(mut rng: Rng) -> Calciner {
        Calciner {
            setpoint: rng.range(980.0, 1050.0),
            draft_base: rng.range(-2200.0, -1600.0),
            dp_base: rng.range(1000.0, 1400.0),
            rate_kg_s: rng.range(18.0, 28.0),
            produced_kg: rng.range(0.0, 1.0e8).floor(),
            wander: 0.0,
            signals: [0.0; sig::COUNT],
            rng,
        }
    }

    pub fn step(&mut self, dt: f64, _t: f64, tick: u64, fx: &ThermalEffects) {
        // Slow first-order wander around the setpoint.
        self.wander += (-self.wander / 300.0 + 0.2 * self.rng.normal()) * dt;
        let temp = self.setpoint + self.wander - fx.lag_c + 1.5 * self.rng.normal();
        let mut o2 = 2.8 + 0.15 * self.rng.normal();
        let mut co = (80.0 + 20.0 * self.rng.normal()).max(0.0);
        if let Some((co_to, o2_to, frac)) = fx.combustion {
            co = blend(co, co_to, frac);
            o2 = blend(o2, o2_to, frac);
        }
        let mut draft = self.draft_base + 15.0 * self.rng.normal();
        let mut dp = self.dp_base + 10.0 * self.rng.normal();
        if let Some((to_pa, frac)) = fx.draft {
            draft = blend(draft, to_pa, frac);
            dp = blend(dp, 0.0, frac);
        }
        self.produced_kg += self.rate_kg_s * dt;
        let mut status = status::RUNNING;
        if draft > self.draft_base * 0.5 {
            status |= status::DRAFT_LOW;
        }
        if co > 1000.0 {
            status |= status::CO_HIGH;
        }
        let s = &mut self.signals;
        s[sig::FURNACE_TEMP] = temp;
        s[sig::O2] = o2;
        s[sig::CO] = co;
        s[sig::DRAFT] = draft;
        s[sig::CYCLONE_DP] = dp;
        s[sig::STATUS] = f64::from(status);
        s[sig::HEARTBEAT] = (tick % 65_536) as f64;
        s[sig::PRODUCTION] = self.produced_kg.floor();
        s[sig::SETPOINT] = self.setpoint;
    }

    pub fn signals(&self) -> &[f64] {
        &self.signals
    }
}
