//! Harness for tests that run the whole agent in this process. The tests of a binary share
//! one process, so a task panic is attributed to its test by the name of the runtime's threads,
//! and a test that measures the process itself (resident memory) runs alone in a fresh one.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, Once};
use std::time::Duration;

use alsentry::app::Running;

/// Panics seen on each watched runtime's threads, by thread name.
static PANICS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            alsentry::telemetry::init(None);
        }
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                if name.starts_with("watched:") {
                    *PANICS.lock().unwrap().entry(name.to_string()).or_default() += 1;
                }
            }
            default(info);
        }));
    });
}

/// Runs `body` on a two-worker runtime of its own (what `#[tokio::test(flavor =
/// "multi_thread", worker_threads = 2)]` gives) and fails the test if any task on that runtime
/// panicked, even one whose handle nobody joins. The body's own assertions fail the test as
/// usual (it runs on the test's thread, which libtest names after the test).
pub fn run_watched<F: Future<Output = ()>>(body: F) {
    watch_panics();
    let test = std::thread::current().name().unwrap_or("main").to_string();
    let name = format!("watched:{test}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(&name)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body);
    rt.shutdown_timeout(Duration::from_secs(10));
    let panics = PANICS.lock().unwrap().get(&name).copied().unwrap_or(0);
    assert_eq!(
        panics, 0,
        "{panics} task(s) of this test panicked (messages above)"
    );
}

/// Stops the agent and checks that no top-level task had panicked.
pub async fn stop_checked(mut running: Running) {
    running.cancel.cancel();
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        let mut panics = Vec::new();
        while let Some(r) = running.tasks.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    panics.push(format!("{e:?}"));
                }
            }
        }
        panics
    })
    .await
    .expect("the agent stops within 15 s");
    assert!(joined.is_empty(), "agent tasks panicked: {joined:?}");
}

const ALONE: &str = "ALSENTRY_TEST_ALONE";

/// libtest names tests without the crate: `module_path!()` "it::soak" + "::x" is "soak::x".
fn test_name(path: &str) -> &str {
    path.split_once("::").map_or(path, |(_, rest)| rest)
}

/// True in the process `run_alone` started for the test `path` (`module_path!()::name`).
pub fn alone(path: &str) -> bool {
    std::env::var(ALONE).as_deref() == Ok(test_name(path))
}

/// For a test that measures its own process (resident memory): runs the test `path` again in
/// a fresh process of this test binary, alone, with `env` set, where `alone(path)` is true. Fails
/// if it failed there or if that process did not run exactly that one test.
pub fn run_alone(path: &str, env: &[(&str, String)]) {
    let test = test_name(path);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {test} in its own process ---\n{stdout}{stderr}");
    assert!(out.status.success(), "{test} failed in its own process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the process started for {test} did not run it"
    );
}

// ---------------------------------------------------------------------------------------------
// Watching a running agent from outside: its broker traffic and its metrics
// ---------------------------------------------------------------------------------------------

/// The agent of the fault cases: the shipped templates, a comm-loss alarm at once (no delay)
/// and no flood handling, so every fault shows as it happens. Add devices and sections.
pub fn fault_agent(state: &std::path::Path, broker_url: &str) -> super::agent::Agent {
    super::agent::Agent::new("rel")
        .state_dir(state)
        .mqtt(broker_url)
        .shipped_templates()
        .section("[alarms]\ncomm_loss_delay = \"0s\"\nflood_threshold = 100000")
}

/// A simulator on ephemeral ports playing `scenario` (TOML text).
pub async fn start_sim(scenario: &str) -> alsentry::sim::SimHandle {
    let scn = alsentry::sim::Scenario::from_str(scenario).unwrap_or_else(|e| panic!("{e}"));
    alsentry::sim::start(
        scn,
        alsentry::sim::StartOptions {
            ephemeral_ports: true,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// Every message received within `d`, with the time it arrived.
pub async fn collect_timed(
    sub: &mut super::mqtt::Subscriber,
    d: Duration,
) -> Vec<(std::time::Instant, super::mqtt::Msg)> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await {
        out.push((std::time::Instant::now(), m));
    }
    out
}

/// (source ts, quality label) of one tag from the `{device}/data` messages of site s, area a.
pub fn qualities(
    msgs: &[(std::time::Instant, super::mqtt::Msg)],
    device: &str,
    tag: &str,
) -> Vec<(i64, String)> {
    let topic = format!("alsentry/s/a/{device}/data");
    msgs.iter()
        .filter(|(_, m)| m.topic == topic)
        .filter_map(|(_, m)| {
            let j = m.json();
            let ts = alsentry::clock::parse_ts(j["ts"].as_str()?)?;
            let q = j["values"][tag]["q"].as_str()?.to_string();
            Some((ts, q))
        })
        .collect()
}

/// Alarm states published for (device, rule) of site s, area a, in order.
pub fn alarm_states(
    msgs: &[(std::time::Instant, super::mqtt::Msg)],
    device: &str,
    rule: &str,
) -> Vec<String> {
    let topic = format!("alsentry/s/a/{device}/alarm/{rule}");
    msgs.iter()
        .filter(|(_, m)| m.topic == topic)
        .filter_map(|(_, m)| m.json()["state"].as_str().map(str::to_string))
        .collect()
}

pub fn polls_ok(r: &Running, i: usize) -> u64 {
    r.metrics.devices[i]
        .polls_ok
        .load(std::sync::atomic::Ordering::Relaxed)
}

pub fn polls_failed(r: &Running, i: usize) -> u64 {
    r.metrics.devices[i]
        .polls_failed
        .load(std::sync::atomic::Ordering::Relaxed)
}

pub fn device_index(r: &Running, name: &str) -> usize {
    r.metrics
        .devices
        .iter()
        .position(|d| d.name == name)
        .unwrap_or_else(|| panic!("no device {name}"))
}

/// Waits until `cond` holds, checking every 20 ms; fails naming `what` after `within`.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
