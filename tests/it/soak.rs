//! Soak: 400 cells + 20 kiln sections polled once a second for a minute after a 30 s warm-up
//! (ALSENTRY_SOAK_WARMUP_S, ALSENTRY_SOAK_S), with the rules a potline gateway runs: every
//! device answers, no poll fails after the warm-up, the engine keeps up, resident memory stays
//! flat. The
//! 10-minute soak of the release build is bench/soak.sh (.ci/run runs it).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alsentry::app::Running;
use alsentry::clock::SystemClock;

use crate::support::agent::Dev;
use crate::support::broker::embedded_blocking;
use crate::support::harness::{
    alone, fault_agent, polls_failed, polls_ok, run_alone, run_watched, start_sim, stop_checked,
};
use crate::support::mqtt::Subscriber;

const POTLINE_400: &str = r#"
[plant]
name = "rel-potline-400"
seed = 400
tick = "100ms"
line_current_ka = 500.0
[[groups]]
id = "potline"
kind = "cell"
name = "pot-{index:03}"
host = "127.0.0.1"
ports = "15100-15499"
unit = 1
[[groups]]
id = "furnace"
kind = "kiln"
name = "kiln-{unit:02}"
listen = "127.0.0.1:5021"
units = "1-20"
"#;

/// The rules a potline gateway would run: every kind that keeps a window or running state.
const SOAK_RULES: &str = r#"
[summary]
interval = "10s"
[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "2s"
priority = "critical"
[[rules]]
name = "voltage_noise"
template = "cell"
tag = "voltage"
type = "noise"
window = "20s"
limit = 0.2
[[rules]]
name = "resistance_rise"
template = "cell"
tag = "resistance"
type = "slope"
window = "20s"
limit = 0.5
per = "min"
[[rules]]
name = "heartbeat_stale"
template = "cell"
tag = "heartbeat"
type = "stale"
max_age = "10s"
[[rules]]
name = "bath_hot"
template = "cell"
tag = "bath_temp"
type = "high"
limit = 990
[[rules]]
name = "draft_loss"
template = "kiln"
tag = "draft"
type = "high"
limit = -5
on_delay = "5s"
"#;

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The port of the broker the parent process runs for the soak.
const BROKER_PORT: &str = "ALSENTRY_SOAK_BROKER_PORT";

#[test]
fn soak_400_cells_memory_stays_flat() {
    let me = concat!(module_path!(), "::soak_400_cells_memory_stays_flat");
    if !alone(me) {
        // Resident memory is per process: the soak runs alone in a fresh process of this test
        // binary, so no other test's memory is counted, and the broker runs here, so neither is
        // the broker's (rumqttd keeps up to 10 x 1 MiB of log per filter).
        let broker = embedded_blocking();
        run_alone(me, &[(BROKER_PORT, broker.addr.port().to_string())]);
        return;
    }
    let port: u16 = std::env::var(BROKER_PORT)
        .expect("the parent passes its broker's port")
        .parse()
        .unwrap();
    run_watched(soak(port));
}

async fn soak(port: u16) {
    let t_case = Instant::now();
    let warmup = Duration::from_secs(
        std::env::var("ALSENTRY_SOAK_WARMUP_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let measure = Duration::from_secs(
        std::env::var("ALSENTRY_SOAK_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let sim = start_sim(POTLINE_400).await;
    let state = tempfile::tempdir().unwrap();
    let mut sub = Subscriber::connect("127.0.0.1", port, "rel-soak-sub", "alsentry/#").await;
    let names = (1..=400)
        .map(|i| format!("pot-{i:03}"))
        .chain((1..=20).map(|u| format!("kiln-{u:02}")));
    let devs = names.map(|n| {
        Dev::sim(&sim, &n)
            .poll("1s")
            .timeout("500ms")
            .backoff_max("10s")
    });
    let url = format!("mqtt://127.0.0.1:{port}");
    let cfg = fault_agent(state.path(), &url)
        .devices(devs)
        .rule(SOAK_RULES)
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    // The subscriber keeps draining so the broker never holds messages for it.
    let drain = tokio::spawn(async move {
        let mut n = 0usize;
        while sub.rx.recv().await.is_some() {
            n += 1;
        }
        n
    });

    tokio::time::sleep(warmup).await;
    let ok_at = |r: &Running| -> u64 { (0..420).map(|i| polls_ok(r, i)).sum() };
    let ok0 = ok_at(&running);
    let failed_in_warmup: u64 = (0..420).map(|i| polls_failed(&running, i)).sum();
    let t0 = Instant::now();
    let mut samples = vec![(0u64, vm_rss_kib())];
    while t0.elapsed() < measure {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((t0.elapsed().as_secs(), vm_rss_kib()));
    }
    let secs = t0.elapsed().as_secs_f64();
    let polls = ok_at(&running) - ok0;
    // Failures are asserted after the warm-up, in the steady state: the warm-up runs beside the
    // start of every other test of the binary, which can hold a 500 ms reply back on a small
    // machine. Those are printed.
    let failed: u64 = (0..420).map(|i| polls_failed(&running, i)).sum::<u64>() - failed_in_warmup;
    let up = (0..420)
        .filter(|&i| running.metrics.devices[i].up.load(Ordering::Relaxed))
        .count();
    let dropped_batches = running.metrics.batches_dropped.load(Ordering::Relaxed);
    let first = samples[0].1;
    let last = samples.last().unwrap().1;
    let max = samples.iter().map(|s| s.1).max().unwrap();
    println!("soak: warm-up {warmup:?}, measured {secs:.1} s, 420 devices, {polls} polls ({:.0}/s), {failed} failed (and {failed_in_warmup} in the warm-up), {up} up, {dropped_batches} batches dropped", polls as f64 / secs);
    println!("soak VmRSS samples (s, KiB): {samples:?}");
    println!(
        "soak VmRSS first {first} KiB, last {last} KiB, max {max} KiB, growth {:+.1} %",
        (last as f64 - first as f64) * 100.0 / first as f64
    );
    assert_eq!(up, 420, "every device answers");
    assert_eq!(failed, 0, "no failed poll under load after the warm-up");
    assert_eq!(dropped_batches, 0, "the engine kept up");
    assert!(
        polls as f64 >= 0.9 * 420.0 * secs,
        "poll rate {:.0}/s below 90 % of 420/s",
        polls as f64 / secs
    );
    // Flat: growth after warm-up below 10 % or 4 MiB, whichever is larger.
    let bound = (first / 10).max(4 * 1024);
    assert!(
        max.saturating_sub(first) < bound,
        "resident memory grew by {} KiB (bound {bound} KiB): {samples:?}",
        max - first
    );
    stop_checked(running).await;
    drain.abort();
    sim.stop().await;
    println!("case took {:?}", t_case.elapsed());
}
