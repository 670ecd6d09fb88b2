//! The one way the engine is driven, live and offline. `alsentry run` feeds the [`Driver`] from
//! the pollers and the wall clock, `replay` from sample files, `evaluate` from the simulator;
//! all three get the same batching, the same tick cadence and the same decoding
//! ([`super::decode::decode_at`], [`sample_of`]), so a recording replays to the alarms it
//! raised live.
//!
//! Time is passed in and never goes back. Ticks fall on a fixed grid of that time (multiples of
//! the tick period), so when timers fire does not depend on when the caller happens to wake: a
//! delay that falls due exactly on a sample's timestamp fires on the tick before that sample is
//! applied, live and offline alike.

use super::decode::DecodeError;
use super::engine::{AlarmEvent, Command, Engine, EngineError, SampleBatch};
use super::model::{BadReason, Quality, Ts};

/// The engine's tick period: on/off delays, shelve expiry and stale rules fire on this grid.
pub const TICK_MS: i64 = 250;
/// Longest gap between two times that is ticked through on the grid; past it the driver jumps
/// to the later time. Bounds the work one bogus timestamp (say epoch 0) can cause, at the price
/// of delays longer than this not firing inside such a gap.
pub const MAX_TICKED_GAP_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Tick period in ms; 0 turns grid ticks off (the engine is then only ticked by batches'
    /// own evaluation and by [`Driver::finish`]).
    pub tick_ms: i64,
    pub max_ticked_gap_ms: i64,
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            tick_ms: TICK_MS,
            max_ticked_gap_ms: MAX_TICKED_GAP_MS,
        }
    }
}

impl Cadence {
    /// Milliseconds from `now` to the next grid tick (1..=tick), or None without ticks.
    pub fn until_next_tick(&self, now: Ts) -> Option<i64> {
        (self.tick_ms > 0).then(|| self.tick_ms - now.rem_euclid(self.tick_ms))
    }
}

/// The sample a decode gives: the value, or NaN with quality `bad:decode_error`.
pub fn sample_of(decoded: Result<f64, DecodeError>) -> (f64, Quality) {
    match decoded {
        Ok(v) => (v, Quality::Good),
        Err(_) => (f64::NAN, Quality::Bad(BadReason::Decode)),
    }
}

/// Owns the engine and its time; collects what the engine raises until the caller takes it.
#[derive(Debug)]
pub struct Driver {
    engine: Engine,
    cadence: Cadence,
    /// The latest time applied to the engine.
    now: Option<Ts>,
    events: Vec<AlarmEvent>,
    /// Rows gathered into the batch they belong to; `rows_pending` says whether it holds any.
    rows: SampleBatch,
    rows_pending: bool,
    batches: u64,
}

impl Driver {
    pub fn new(engine: Engine, cadence: Cadence) -> Driver {
        Driver {
            engine,
            cadence,
            now: None,
            events: Vec::new(),
            rows: SampleBatch {
                device: 0,
                ts: 0,
                values: Vec::with_capacity(64),
            },
            rows_pending: false,
            batches: 0,
        }
    }

    /// The latest time applied, if any.
    pub fn now(&self) -> Option<Ts> {
        self.now
    }

    pub fn cadence(&self) -> Cadence {
        self.cadence
    }

    /// Batches applied so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// For what the engine answers outside alarm events (summaries, KPIs).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Swaps in an engine built from a new configuration, carrying alarm states and windows of
    /// unchanged tags over.
    pub fn replace_engine(&mut self, next: Engine) {
        let old = std::mem::replace(&mut self.engine, next);
        self.engine.adopt(old);
    }

    /// Runs every grid tick due up to `now`. An earlier `now` than the driver's does nothing.
    pub fn advance(&mut self, now: Ts) {
        if let Some(prev) = self.now {
            if now <= prev {
                return;
            }
            let step = self.cadence.tick_ms;
            if step > 0 {
                let stop = now.min(prev.saturating_add(self.cadence.max_ticked_gap_ms));
                let mut g = (prev.div_euclid(step) + 1) * step;
                while g <= stop {
                    self.engine.tick(g, &mut self.events);
                    g += step;
                }
            }
        }
        self.now = Some(now);
    }

    /// Moves the driver's time to `now` without ticking through the gap: the clock stepped,
    /// no time passed. Pending delays see the step at the next tick.
    pub fn jump(&mut self, now: Ts) {
        self.now = Some(self.now.map_or(now, |n| n.max(now)));
    }

    /// Applies one batch at `at`, after the ticks due by then. A batch older than the driver's
    /// time is applied at the driver's time, as a late batch is live: evaluated on arrival.
    pub fn apply(&mut self, batch: &SampleBatch, at: Ts) {
        let t = self.now.map_or(at, |n| n.max(at));
        self.advance(t);
        self.engine.on_batch(batch, t, &mut self.events);
        self.batches += 1;
    }

    /// Gathers rows into batches: consecutive rows of the same device and timestamp form one
    /// batch, as one poll of one device does live. A row of another batch applies the one
    /// gathered so far, at its own timestamp.
    pub fn push_row(&mut self, device: u32, ts: Ts, tag: u16, value: f64, quality: Quality) {
        if self.rows_pending && (ts != self.rows.ts || device != self.rows.device) {
            self.flush_rows();
        }
        if !self.rows_pending {
            self.rows.device = device;
            self.rows.ts = ts;
            self.rows_pending = true;
        }
        self.rows.values.push((tag, value, quality));
    }

    /// Applies the rows gathered so far.
    pub fn flush_rows(&mut self) {
        if !self.rows_pending {
            return;
        }
        self.rows_pending = false;
        let rows = std::mem::replace(
            &mut self.rows,
            SampleBatch {
                device: 0,
                ts: 0,
                values: Vec::new(),
            },
        );
        self.apply(&rows, rows.ts);
        self.rows = rows;
        self.rows.values.clear();
    }

    /// Ends a run: gathered rows are applied and the engine is ticked once more at the
    /// driver's time, so that delays due by then fire. Nothing is invented past it.
    pub fn finish(&mut self) {
        self.flush_rows();
        if let Some(now) = self.now {
            self.engine.tick(now, &mut self.events);
        }
    }

    /// Applies an operator command to the state as of `now` (timers due by then run first).
    /// Returns the state the alarm went to, if the command changed it.
    pub fn command(
        &mut self,
        device: &str,
        rule: &str,
        by: &str,
        cmd: &Command,
        now: Ts,
    ) -> Result<Option<&'static str>, EngineError> {
        self.advance(now);
        let now = self.now.unwrap_or(now);
        self.engine.tick(now, &mut self.events);
        let ev = self.engine.command(device, rule, by, cmd, now)?;
        let state = ev.as_ref().map(|e| e.transition.to);
        self.events.extend(ev);
        Ok(state)
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The alarm transitions raised since the last call, in order.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, AlarmEvent> {
        self.events.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decode::{decode_at, Image};
    use crate::core::rule::RuleKind;
    use crate::core::spec::{Draft, RuleDraft};

    fn engine() -> Engine {
        let mut d = Draft::new("a");
        let table = d.table(&[("voltage", "V")], &[]);
        d.device("pot-001", table, 1_000);
        d.rule_on_all(
            RuleDraft::new(
                "ae",
                "voltage",
                RuleKind::High {
                    limit: 8.0,
                    deadband: 0.0,
                },
            )
            .on_delay_ms(1_000),
        );
        Engine::new(&d.compile().unwrap_or_else(|e| panic!("{e:?}")))
    }

    fn batch(ts: Ts, v: f64) -> SampleBatch {
        SampleBatch {
            device: 0,
            ts,
            values: vec![(0, v, Quality::Good)],
        }
    }

    fn transitions(d: &mut Driver) -> Vec<(&'static str, Ts)> {
        d.drain_events()
            .map(|e| (e.transition.to, e.transition.at))
            .collect()
    }

    #[test]
    fn an_on_delay_fires_on_the_grid_between_samples() {
        let mut d = Driver::new(engine(), Cadence::default());
        d.apply(&batch(10_100, 9.0), 10_100);
        // No sample for 5 s: the delay still fires 1 s after the first abnormal sample, on the
        // first grid tick at or after it.
        d.apply(&batch(15_100, 9.0), 15_100);
        assert_eq!(transitions(&mut d), vec![("active_unacked", 11_250)]);
    }

    #[test]
    fn wakeups_do_not_change_what_fires_when() {
        // The same samples, with the caller waking at different times in between.
        let run = |wakes: &[Ts]| {
            let mut d = Driver::new(engine(), Cadence::default());
            let mut out = Vec::new();
            let mut wakes = wakes.iter().peekable();
            for (ts, v) in [
                (0, 4.0),
                (1_000, 9.0),
                (2_000, 9.0),
                (3_000, 4.0),
                (9_000, 4.0),
            ] {
                while let Some(w) = wakes.next_if(|w| **w < ts) {
                    d.advance(*w);
                }
                d.apply(&batch(ts, v), ts);
                out.extend(transitions(&mut d));
            }
            d.finish();
            out.extend(transitions(&mut d));
            out
        };
        let quiet = run(&[]);
        assert_eq!(
            quiet,
            vec![("active_unacked", 2_000), ("returned_unacked", 3_000)]
        );
        assert_eq!(run(&[1, 250, 1_999, 2_001, 2_600, 8_999]), quiet);
        assert_eq!(run(&(0..9_000).step_by(7).collect::<Vec<_>>()), quiet);
    }

    #[test]
    fn time_never_goes_back_and_a_late_batch_is_applied_on_arrival() {
        let mut d = Driver::new(engine(), Cadence::default());
        d.apply(&batch(5_000, 9.0), 5_000);
        d.advance(4_000);
        assert_eq!(d.now(), Some(5_000));
        // Source time 4,500, arrival at the driver's 5,000.
        d.apply(&batch(4_500, 9.0), 4_500);
        d.advance(6_000);
        assert_eq!(transitions(&mut d), vec![("active_unacked", 6_000)]);
    }

    #[test]
    fn rows_of_one_device_and_time_form_one_batch() {
        let mut d = Driver::new(engine(), Cadence::default());
        d.push_row(0, 1_000, 0, 9.0, Quality::Good);
        d.push_row(0, 1_000, 0, 9.0, Quality::Good);
        assert_eq!(d.batches(), 0, "still gathering");
        d.push_row(0, 1_100, 0, 9.0, Quality::Good);
        assert_eq!(d.batches(), 1);
        d.push_row(0, 2_100, 0, 9.0, Quality::Good);
        d.finish();
        assert_eq!(d.batches(), 3);
        assert_eq!(transitions(&mut d), vec![("active_unacked", 2_000)]);
    }

    #[test]
    fn a_gap_is_ticked_through_only_up_to_the_bound_and_a_jump_not_at_all() {
        let bounded = Cadence {
            tick_ms: 250,
            max_ticked_gap_ms: 500,
        };
        let mut d = Driver::new(engine(), bounded);
        d.apply(&batch(0, 9.0), 0);
        // The 1 s delay would fall due at 1,000, past the ticked 500 ms: it fires at the next
        // tick after the gap instead.
        d.advance(10_000);
        assert!(transitions(&mut d).is_empty());
        d.advance(10_250);
        assert_eq!(transitions(&mut d), vec![("active_unacked", 10_250)]);

        let mut d = Driver::new(engine(), Cadence::default());
        d.apply(&batch(0, 9.0), 0);
        d.jump(7_200_000);
        assert!(transitions(&mut d).is_empty());
        d.advance(7_200_250);
        assert_eq!(transitions(&mut d), vec![("active_unacked", 7_200_250)]);
    }

    #[test]
    fn commands_apply_to_the_state_as_of_now() {
        let mut d = Driver::new(engine(), Cadence::default());
        d.apply(&batch(0, 9.0), 0);
        // The delay fell due at 1,000; the ack at 1,100 finds the alarm active.
        let state = d
            .command("pot-001", "ae", "op", &Command::Ack { note: None }, 1_100)
            .unwrap();
        assert_eq!(state, Some("active_acked"));
        assert_eq!(
            transitions(&mut d),
            vec![("active_unacked", 1_000), ("active_acked", 1_100)]
        );
        assert!(d
            .command("pot-001", "nope", "op", &Command::Reset, 1_200)
            .is_err());
    }

    #[test]
    fn the_grid_and_decoding_helpers() {
        let c = Cadence::default();
        assert_eq!(c.until_next_tick(1_000), Some(250));
        assert_eq!(c.until_next_tick(1_001), Some(249));
        assert_eq!(c.until_next_tick(-1), Some(1));
        let off = Cadence {
            tick_ms: 0,
            ..Cadence::default()
        };
        assert_eq!(off.until_next_tick(5), None);

        let enc = crate::core::decode::Encoding {
            table: crate::core::decode::Table::Input,
            dtype: crate::core::decode::DataType::U16,
            order: crate::core::decode::WordOrder::Abcd,
            bit: None,
            scale: 0.5,
            offset: 0.0,
        };
        let words = [10, 20, 30];
        let image = Image::Registers {
            start: 100,
            words: &words,
        };
        assert_eq!(
            sample_of(decode_at(&enc, 101, image)),
            (10.0, Quality::Good)
        );
        let (v, q) = sample_of(decode_at(&enc, 99, image));
        assert!(v.is_nan());
        assert_eq!(q, Quality::Bad(BadReason::Decode));
        assert!(decode_at(&enc, 103, image).is_err());
        let bits = [false, true];
        let image = Image::Bits {
            start: 0,
            bits: &bits,
        };
        assert_eq!(decode_at(&enc, 1, image), Ok(0.5));
        assert!(decode_at(&enc, 2, image).is_err());
    }
}
