//! Wall-clock steps.
//!
//! The live path (`alsentry run`, app.rs) gives every task a `SystemClock`: wall time anchored
//! at start and advanced by the monotonic clock. NTP slewing never reaches the engine; a step
//! of more than 2 s (a gateway without a battery-backed clock that gets its time after boot) is
//! followed every 10 s by `Clock::resync`, so timestamps stay right, and the engine sees one
//! jump of `now`. Stepping the host clock needs CAP_SYS_TIME on a shared machine, so the live
//! path is checked by construction below, and what a step does is checked where it lands: the
//! engine, fed a `now` that jumps.

use std::time::{Duration, Instant};

use alsentry::clock::{Clock, SystemClock};

use crate::support::agent::{Agent, Dev};

const T0: i64 = 1_795_881_600_000;

fn step_engine() -> alsentry::core::engine::Engine {
    let cfg = Agent::new("rel")
        .mqtt("mqtt://127.0.0.1:1883")
        .device(
            Dev::tcp("plc", ([127, 0, 0, 1], 1502).into())
                .tags(r#"[{ name = "x", table = "holding", address = 0 }]"#),
        )
        .rule(
            r#"[[rules]]
name = "hi"
devices = ["plc"]
tag = "x"
type = "high"
limit = 500
on_delay = "3s""#,
        )
        .build();
    alsentry::core::engine::Engine::new(&cfg.spec)
}

fn sample(e: &mut alsentry::core::engine::Engine, ts: i64, v: f64) -> Vec<String> {
    let mut out = Vec::new();
    e.on_batch(
        &alsentry::core::engine::SampleBatch {
            device: 0,
            ts,
            values: vec![(0, v, alsentry::core::model::Quality::Good)],
        },
        ts,
        &mut out,
    );
    e.tick(ts, &mut out);
    out.iter()
        .filter(|ev| &*ev.rule == "hi")
        .map(|ev| ev.transition.to.to_string())
        .collect()
}

#[test]
fn the_live_clock_follows_the_monotonic_clock() {
    // SystemClock::now() = anchor + monotonic elapsed: over any interval it advances exactly
    // as much as Instant does, whatever the wall clock does meanwhile.
    let c = SystemClock::new();
    let (t0, i0) = (c.now(), Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    let (t1, i1) = (c.now(), Instant::now());
    let wall = t1 - t0;
    let mono = (i1 - i0).as_millis() as i64;
    assert!(
        (wall - mono).abs() <= 2,
        "clock {wall} ms vs monotonic {mono} ms"
    );
}

#[test]
fn clock_steps_in_the_engine_never_panic_and_never_duplicate_an_alarm() {
    // Forward: a one-hour step while the 3 s on-delay is pending.
    let mut e = step_engine();
    assert!(sample(&mut e, T0, 900.0).is_empty());
    assert!(sample(&mut e, T0 + 1_000, 900.0).is_empty());
    let at_step = sample(&mut e, T0 + 1_000 + 3_600_000, 900.0);
    // The engine trusts `now`: one hour has "passed", so the delay is over. This is why the
    // live clock must never step (see above); documented in RELIABILITY.md.
    assert_eq!(at_step, vec!["active_unacked"]);
    for k in 1..5 {
        assert!(sample(&mut e, T0 + 1_000 + 3_600_000 + k * 1_000, 900.0).is_empty());
    }
    let cleared = sample(&mut e, T0 + 3_606_000, 100.0);
    assert_eq!(cleared, vec!["returned_unacked"]);

    // Backward: a one-hour step back while the on-delay is pending. Nothing fires early, nothing
    // panics; the pending delay is measured from the (now future) time it started.
    let mut e = step_engine();
    assert!(sample(&mut e, T0, 900.0).is_empty());
    assert!(sample(&mut e, T0 + 1_000, 900.0).is_empty());
    let back = T0 + 1_000 - 3_600_000;
    let mut fired_at = None;
    for k in 1..=20 {
        let ev = sample(&mut e, back + k * 1_000, 900.0);
        if !ev.is_empty() {
            assert_eq!(ev, vec!["active_unacked"]);
            fired_at = Some(k);
            break;
        }
    }
    println!("after a 1 h backward step the 3 s on-delay fired after {fired_at:?} s of samples");
    // Once the clock has caught up with the step the alarm fires exactly once.
    let caught_up = sample(&mut e, T0 + 3_000, 900.0);
    let total = usize::from(fired_at.is_some()) + caught_up.len();
    assert_eq!(total, 1, "fires exactly once: {caught_up:?}");
}

/// Regression: after a backward step of `now` a pending on-delay restarts at the new `now`
/// (src/core/alarm.rs `fire_pending_if_due`) instead of waiting an hour for the clock to catch
/// up with the step, which would annunciate an anode effect an hour late.
#[test]
fn a_pending_on_delay_survives_a_backward_step() {
    let mut e = step_engine();
    assert!(sample(&mut e, T0, 900.0).is_empty());
    assert!(sample(&mut e, T0 + 1_000, 900.0).is_empty());
    let back = T0 + 1_000 - 3_600_000;
    let fired: Vec<String> = (1..=5)
        .flat_map(|k| sample(&mut e, back + k * 1_000, 900.0))
        .collect();
    assert_eq!(
        fired,
        vec!["active_unacked"],
        "fires within the on-delay of real time"
    );
}

// Issue 15: the "clock step" cases never stepped a clock (case 6 only compares SystemClock with
// Instant). Here the wall clock the live clock anchors to really steps: one hour forward, then
// back. The live clock never jumps on its own; the engine's periodic resync follows the
// forward step (reported, so the engine task jumps its driver) and ignores the backward one.
#[test]
fn a_stepped_wall_clock_reaches_the_live_clock_only_through_resync() {
    use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
    use std::sync::Arc;
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let c = SystemClock::with_wall(Arc::new(move || {
        alsentry::clock::wall_ms() + o.load(SeqCst)
    }));
    let t0 = c.now();
    offset.store(3_600_000, SeqCst);
    assert!(c.now() - t0 < 1_000, "a step never reaches `now` by itself");
    let step = c.resync(2_000).expect("the forward step is seen");
    assert!((step - 3_600_000).abs() < 1_000, "step {step}");
    assert!((c.now() - t0 - 3_600_000).abs() < 1_000, "now follows it");
    assert_eq!(c.resync(2_000), None, "once");
    // Back by the hour: not followed, the timeline keeps running forward.
    offset.store(0, SeqCst);
    let t1 = c.now();
    assert_eq!(c.resync(2_000), None);
    std::thread::sleep(Duration::from_millis(20));
    assert!(c.now() >= t1 + 20, "monotonic after a backward step");
}
