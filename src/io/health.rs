//! The agent's health: which devices answer their polls, whether the agent itself is alive
//! (`/healthz`) and whether it is ready (`/readyz`).
//!
//! Which devices answer: the pollers own this state (each link writes only its own devices, on
//! a change); the status payload and `/readyz` read snapshots from the watch channel. A device
//! that answers only with exceptions is not up. The `alsentry_device_up` gauge is set by the
//! same up/down events but is only for watching: nothing decides anything from a metric.
//!
//! Whether the agent is alive: the engine task marks each turn of its loop and the supervisor
//! counts link pollers that died and wait for their restart ([`Pulse`], one writer each). The
//! decisions ([`liveness`], [`readiness`]) are pure and take `now`.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::clock::Mono;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceHealth {
    names: Arc<[String]>,
    up: Vec<bool>,
    /// Polled at least once (answered or not).
    polled: Vec<bool>,
    unpolled: usize,
}

impl DeviceHealth {
    /// All devices down (not yet polled).
    pub fn new(names: impl IntoIterator<Item = String>) -> DeviceHealth {
        let names: Arc<[String]> = names.into_iter().collect();
        DeviceHealth {
            up: vec![false; names.len()],
            polled: vec![false; names.len()],
            unpolled: names.len(),
            names,
        }
    }

    /// Every device was polled at least once: the counts mean something (before, every
    /// device counts as down).
    pub fn first_cycle_done(&self) -> bool {
        self.unpolled == 0
    }

    pub fn devices(&self) -> usize {
        self.up.len()
    }

    pub fn up(&self) -> usize {
        self.up.iter().filter(|u| **u).count()
    }

    pub fn down(&self) -> usize {
        self.devices() - self.up()
    }

    pub fn is_up(&self, device: u32) -> bool {
        self.up.get(device as usize).copied().unwrap_or(false)
    }

    /// Names of the devices not answering, in configuration order.
    pub fn down_names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .zip(&self.up)
            .filter(|(_, up)| !**up)
            .map(|(n, _)| n.as_str())
    }
}

/// The writing side, one clone per poller.
#[derive(Debug, Clone)]
pub struct HealthTx {
    tx: Arc<watch::Sender<DeviceHealth>>,
    /// What the watch holds for each device ([`UP`], [`POLLED`]), readable without its lock.
    /// Nearly every poll changes nothing, and the watch's lock is one for all links: with
    /// this mirror such a poll takes no lock. Written only under the lock, so it always
    /// matches the watch once a writer is done; each device has one writer at a time (its
    /// link, or the supervisor once that link has died).
    seen: Arc<[AtomicU8]>,
}

const UP: u8 = 1;
const POLLED: u8 = 2;

impl HealthTx {
    fn seen(&self, device: u32) -> u8 {
        self.seen
            .get(device as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    fn mirror(&self, device: u32, up: bool, polled: bool) {
        if let Some(s) = self.seen.get(device as usize) {
            s.store(
                u8::from(up) * UP + u8::from(polled) * POLLED,
                Ordering::Relaxed,
            );
        }
    }

    /// Records whether `device` answers; readers are woken only on a change.
    pub fn set(&self, device: u32, up: bool) {
        if (self.seen(device) & UP != 0) == up {
            return;
        }
        self.tx.send_if_modified(|h| {
            let i = device as usize;
            let changed = match h.up.get_mut(i) {
                Some(u) if *u != up => {
                    *u = up;
                    true
                }
                _ => false,
            };
            self.mirror(device, up, h.polled.get(i).copied().unwrap_or(false));
            changed
        });
    }

    /// `device` was polled (answered or not); readers are woken only the first time.
    pub fn polled(&self, device: u32) {
        if self.seen(device) & POLLED != 0 {
            return;
        }
        self.tx.send_if_modified(|h| {
            let i = device as usize;
            let changed = match h.polled.get_mut(i) {
                Some(p) if !*p => {
                    *p = true;
                    h.unpolled -= 1;
                    true
                }
                _ => false,
            };
            self.mirror(device, h.up.get(i).copied().unwrap_or(false), true);
            changed
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<DeviceHealth> {
        self.tx.subscribe()
    }
}

/// The health channel of `names` (all down, none polled yet).
pub fn channel(
    names: impl IntoIterator<Item = String>,
) -> (HealthTx, watch::Receiver<DeviceHealth>) {
    let health = DeviceHealth::new(names);
    let seen = (0..health.devices()).map(|_| AtomicU8::new(0)).collect();
    let (tx, rx) = watch::channel(health);
    (
        HealthTx {
            tx: Arc::new(tx),
            seen,
        },
        rx,
    )
}

/// Bounds of the health decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthLimits {
    /// `/healthz` fails when the engine loop has not turned for this long (it turns at least
    /// every 250 ms on its tick).
    pub engine_stall: Duration,
    /// `/readyz` needs at least this share of the devices answering (0 to 1; at least one
    /// device whenever there are devices).
    pub ready_share: f64,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            engine_stall: Duration::from_secs(10),
            ready_share: 0.5,
        }
    }
}

/// What the watched tasks say about themselves; one writer per field.
#[derive(Debug)]
pub struct Pulse {
    /// Monotonic µs of the engine loop's last turn (written by the engine task).
    engine_turn_us: AtomicU64,
    /// Link pollers that died and wait for their restart (written by the supervisor).
    links_down: AtomicUsize,
    pub limits: HealthLimits,
}

impl Pulse {
    /// The engine counts as having turned at `now` (start), so a fresh agent is alive.
    pub fn new(limits: HealthLimits, now: Mono) -> Arc<Pulse> {
        Arc::new(Pulse {
            engine_turn_us: AtomicU64::new(now.as_micros()),
            links_down: AtomicUsize::new(0),
            limits,
        })
    }

    pub fn engine_turned(&self, now: Mono) {
        self.engine_turn_us
            .store(now.as_micros(), Ordering::Relaxed);
    }

    pub fn set_links_down(&self, n: usize) {
        self.links_down.store(n, Ordering::Relaxed);
    }

    /// `/healthz` at `now`.
    pub fn liveness(&self, now: Mono) -> Liveness {
        liveness(
            now,
            Mono::from_micros(self.engine_turn_us.load(Ordering::Relaxed)),
            self.links_down.load(Ordering::Relaxed),
            &self.limits,
        )
    }
}

/// The `/healthz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Liveness {
    pub alive: bool,
    /// Each failing condition, in words.
    pub failing: Vec<String>,
}

/// Alive = the engine loop turned within `engine_stall` and no link poller is down.
pub fn liveness(
    now: Mono,
    engine_turn: Mono,
    links_down: usize,
    limits: &HealthLimits,
) -> Liveness {
    let mut failing = Vec::new();
    let stalled = now.since(engine_turn);
    if stalled > limits.engine_stall {
        failing.push(format!(
            "the engine loop has not turned for {} ms",
            stalled.as_millis()
        ));
    }
    if links_down > 0 {
        failing.push(format!("{links_down} link poller(s) down, restarting"));
    }
    Liveness {
        alive: failing.is_empty(),
        failing,
    }
}

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub config_loaded: bool,
    pub sinks_connected: usize,
    pub devices_up: usize,
    pub devices: usize,
    /// Devices that must answer: the configured share of `devices`, at least one.
    pub devices_needed: usize,
    /// Each failing condition, in words.
    pub failing: Vec<&'static str>,
}

/// Ready = config loaded, at least one sink connected, and at least `share` of the devices
/// answering (at least one; rounded up, so 1 of 400 is not "ready").
pub fn readiness(
    config_loaded: bool,
    sinks_connected: usize,
    devices: &DeviceHealth,
    share: f64,
) -> Readiness {
    let (devices_up, total) = (devices.up(), devices.devices());
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let devices_needed = ((total as f64 * share).ceil() as usize).clamp(total.min(1), total);
    let mut failing = Vec::new();
    if !config_loaded {
        failing.push("config not loaded");
    }
    if sinks_connected == 0 {
        failing.push("no sink connected");
    }
    if devices_up == 0 && total > 0 {
        failing.push("no device answering");
    } else if devices_up < devices_needed {
        failing.push("too few devices answering");
    }
    Readiness {
        ready: failing.is_empty(),
        config_loaded,
        sinks_connected,
        devices_up,
        devices: total,
        devices_needed,
        failing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_on_a_stuck_engine_and_on_a_dead_poller() {
        let limits = HealthLimits::default();
        let start = Mono::from_millis(1_000);
        let pulse = Pulse::new(limits, start);
        assert!(pulse.liveness(start + Duration::from_secs(10)).alive);
        // A stuck engine: no turn for more than 10 s.
        let l = pulse.liveness(start + Duration::from_millis(10_001));
        assert!(!l.alive);
        assert_eq!(l.failing, ["the engine loop has not turned for 10001 ms"]);
        pulse.engine_turned(start + Duration::from_secs(11));
        assert!(pulse.liveness(start + Duration::from_secs(12)).alive);
        pulse.set_links_down(1);
        let l = pulse.liveness(start + Duration::from_secs(12));
        assert_eq!(l.failing, ["1 link poller(s) down, restarting"]);
        pulse.set_links_down(0);
        assert!(pulse.liveness(start + Duration::from_secs(12)).alive);
    }

    #[test]
    fn readyz_needs_the_configured_share_of_devices() {
        let names = (0..400).map(|i| format!("pot-{i}"));
        let (tx, rx) = channel(names);
        let r = readiness(true, 1, &rx.borrow(), 0.5);
        assert_eq!(r.failing, ["no device answering"]);
        tx.set(0, true);
        // Issue 15: 1 of 400 answering was "ready".
        let r = readiness(true, 1, &rx.borrow(), 0.5);
        assert_eq!((r.ready, r.devices_needed), (false, 200));
        assert_eq!(r.failing, ["too few devices answering"]);
        for d in 1..200 {
            tx.set(d, true);
        }
        assert!(readiness(true, 1, &rx.borrow(), 0.5).ready);
        assert!(!readiness(false, 1, &rx.borrow(), 0.5).ready);
        assert!(!readiness(true, 0, &rx.borrow(), 0.5).ready);
        // Share 0: one device is enough; share 1: all of them.
        assert_eq!(readiness(true, 1, &rx.borrow(), 0.0).devices_needed, 1);
        assert_eq!(readiness(true, 1, &rx.borrow(), 1.0).devices_needed, 400);
        // No devices at all: nothing to wait for.
        let none = DeviceHealth::new(Vec::<String>::new());
        assert!(readiness(true, 1, &none, 0.5).ready);
    }

    #[test]
    fn counts_and_names_follow_the_writers() {
        let (tx, mut rx) = channel(["a".to_string(), "b".to_string(), "c".to_string()]);
        assert_eq!((rx.borrow().up(), rx.borrow().down()), (0, 3));
        tx.set(1, true);
        assert!(rx.has_changed().unwrap());
        let h = rx.borrow_and_update().clone();
        assert_eq!((h.up(), h.down()), (1, 2));
        assert_eq!(h.down_names().collect::<Vec<_>>(), ["a", "c"]);
        assert!(h.is_up(1) && !h.is_up(0) && !h.is_up(9));
        // No change, no wake-up; an unknown device is ignored.
        tx.set(1, true);
        tx.set(7, true);
        assert!(!rx.has_changed().unwrap());
        // The first cycle: every device polled once, answered or not.
        assert!(!rx.borrow().first_cycle_done());
        for d in [0, 1, 2, 2, 9] {
            tx.polled(d);
        }
        assert!(rx.borrow_and_update().first_cycle_done());
        tx.polled(1);
        assert!(!rx.has_changed().unwrap(), "woken once per device");
    }

    #[test]
    fn the_mirror_follows_every_writer_so_only_no_ops_are_skipped() {
        let (link, mut rx) = channel(["a".to_string(), "b".to_string()]);
        let supervisor = link.clone();
        // Up before the first "polled" and polled after: neither bit hides the other.
        link.set(0, true);
        link.polled(0);
        let h = rx.borrow_and_update().clone();
        assert!(h.is_up(0) && !h.first_cycle_done());
        link.set(0, true);
        link.polled(0);
        assert!(!rx.has_changed().unwrap(), "no change, no lock, no wake-up");
        // Another writer's change is seen by the mirror of every clone: the link's next
        // "up" after the supervisor set the device down goes through.
        supervisor.set(0, false);
        assert!(!rx.borrow_and_update().is_up(0));
        link.set(0, true);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().is_up(0));
        link.polled(1);
        link.set(1, false);
        let h = rx.borrow_and_update().clone();
        assert!(h.first_cycle_done() && !h.is_up(1) && h.is_up(0));
    }
}
