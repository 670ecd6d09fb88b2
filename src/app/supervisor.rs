//! The supervisor owns the link pollers and applies reloads: it re-reads the configuration
//! (off the runtime, bounded in time), refuses what needs a restart, has the engine task swap
//! its engine, and restarts only the links whose devices changed. It also watches its
//! pollers: one that dies (a panic) has its devices reported down with bad samples (so they
//! raise `comm_loss`), counts as down for `/healthz`, and is restarted with backoff. It
//! publishes nothing: the outcome of a reload asked for over MQTT goes back to the engine
//! task, which replies.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::engine::{Control, ReloadOrigin, ReloadRequest};
use crate::clock::{Clock, Mono};
use crate::config::{Config, Device, Endpoint};
use crate::core::engine::SampleBatch;
use crate::core::model::{BadReason, Quality};
use crate::io::backoff::{self, Backoff};
use crate::io::health::{HealthTx, Pulse};
use crate::io::poller::{links, Link, LinkDevice, WriteRouter};
use crate::metrics::Metrics;
use crate::telemetry::{emit, BatchDropped, DeviceDown, LinkDied, LinkRestarted};

/// How often the supervisor looks for dead pollers.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// First and longest wait before a dead poller is restarted.
const RESTART_MIN: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A poller that ran this long before dying starts its backoff again.
const RESTART_FORGIVEN_AFTER: Duration = Duration::from_secs(60);

/// A running link poller.
#[derive(Debug)]
struct RunningLink {
    key: String,
    /// Its devices as configured, to tell whether a reload changes them.
    devices: Vec<Device>,
    /// Each device's index and tag count: what to report bad when the poller dies.
    polled: Vec<(u32, usize)>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    started: Mono,
    /// Deaths in a row (reset after a long life).
    deaths: u32,
    /// Dead, to be restarted at this time.
    restart_at: Option<Mono>,
}

/// What the supervisor tells about the agent.
#[derive(Debug)]
pub struct Reports {
    /// Where dead pollers are counted, for `/healthz`.
    pub pulse: Arc<Pulse>,
    /// The hash of the configuration in force, for the sinks' status.
    pub config_hash: watch::Sender<String>,
}

#[derive(Debug)]
pub struct Supervisor {
    cfg: Config,
    links: Vec<RunningLink>,
    batches: mpsc::Sender<SampleBatch>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Handed to each poller: which devices answer.
    health: HealthTx,
    engine: mpsc::Sender<Control>,
    reports: Reports,
    restart_backoff: Backoff,
    /// Handed to each poller: where writes of actions reach its link.
    writes: WriteRouter,
}

impl Supervisor {
    /// Starts a poller for every link of `cfg`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: Config,
        batches: mpsc::Sender<SampleBatch>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        health: HealthTx,
        engine: mpsc::Sender<Control>,
        reports: Reports,
        writes: WriteRouter,
    ) -> Supervisor {
        let seed = backoff::seed("supervisor", clock.now() as u64);
        let mut s = Supervisor {
            links: Vec::new(),
            batches,
            clock,
            metrics,
            health,
            engine,
            reports,
            restart_backoff: Backoff::new(RESTART_MIN, RESTART_MAX, seed),
            writes,
            cfg,
        };
        let devices = s.cfg.devices.clone();
        s.spawn_links(&devices, None);
        s
    }

    /// Starts a poller for every link, or only for the links in `only`.
    fn spawn_links(&mut self, devices: &[Device], only: Option<&HashSet<String>>) {
        for (endpoint, link_devices) in links(devices) {
            let key = endpoint.link_key();
            if only.is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            let configured: Vec<Device> = link_devices
                .iter()
                .map(|d| as_polled(&devices[d.index as usize]))
                .collect();
            let polled = link_devices
                .iter()
                .map(|d| (d.index, d.tags.len()))
                .collect();
            let (cancel, task) = self.spawn_link(endpoint, link_devices);
            self.links.push(RunningLink {
                key,
                devices: configured,
                polled,
                cancel,
                task,
                started: self.clock.mono(),
                deaths: 0,
                restart_at: None,
            });
        }
    }

    fn spawn_link(
        &self,
        endpoint: Endpoint,
        devices: Vec<LinkDevice>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let link = Link {
            endpoint,
            devices,
            tx: self.batches.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            writes: self.writes.clone(),
        };
        (cancel.clone(), tokio::spawn(link.run(cancel)))
    }

    /// Finds pollers that died, reports their devices down, and restarts each when its
    /// backoff has passed. Sets the count of dead pollers for `/healthz`.
    async fn watch_links(&mut self) {
        let now = self.clock.mono();
        let mut down = 0;
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            if l.restart_at.is_none() && l.task.is_finished() && !l.cancel.is_cancelled() {
                let error = match (&mut l.task).await {
                    Err(e) => e.to_string(),
                    Ok(()) => "the poller returned".to_string(),
                };
                if now.since(l.started) >= RESTART_FORGIVEN_AFTER {
                    l.deaths = 0;
                }
                l.deaths += 1;
                let retry_in = self.restart_backoff.delay(l.deaths);
                l.restart_at = Some(now + retry_in);
                emit(LinkDied {
                    link: &l.key,
                    error: &error,
                    retry_in,
                });
                self.report_down(i);
            }
            let l = &self.links[i];
            match l.restart_at {
                Some(at) if now >= at => self.restart(i),
                Some(_) => down += 1,
                None => {}
            }
        }
        self.reports.pulse.set_links_down(down);
    }

    /// A dead poller's devices: down, and one batch of bad samples each, so that the engine
    /// raises `comm_loss` as for a lost connection until the new poller reads them again.
    fn report_down(&self, i: usize) {
        let now = self.clock.now();
        for &(index, tags) in &self.links[i].polled {
            self.health.set(index, false);
            if let Some(m) = self.metrics.device(index) {
                emit(DeviceDown { device: m });
            }
            let values = (0..tags as u16)
                .map(|t| (t, f64::NAN, Quality::Bad(BadReason::ConnectionLost)))
                .collect();
            let batch = SampleBatch {
                device: index,
                ts: now,
                values,
            };
            if self.batches.try_send(batch).is_err() {
                let name = self.metrics.device(index).map_or("", |d| d.name.as_str());
                emit(BatchDropped {
                    metrics: &self.metrics,
                    device: name,
                });
            }
        }
    }

    fn restart(&mut self, i: usize) {
        let key = self.links[i].key.clone();
        let Some((endpoint, devices)) = links(&self.cfg.devices)
            .into_iter()
            .find(|(e, _)| e.link_key() == key)
        else {
            return;
        };
        let (cancel, task) = self.spawn_link(endpoint, devices);
        let l = &mut self.links[i];
        (l.cancel, l.task) = (cancel, task);
        l.started = self.clock.mono();
        l.restart_at = None;
        emit(LinkRestarted {
            metrics: &self.metrics,
            link: &key,
            restarts: l.deaths,
        });
    }

    /// Serves reload requests until `cancel`; then stops the pollers and, once they have
    /// stopped, `engine_cancel`, so that the engine applies their last batches.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        cancel: CancellationToken,
        engine_cancel: CancellationToken,
    ) {
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = requests.recv() => match r {
                    Some(r) => self.handle(r).await,
                    None => break,
                },
                _ = watch.tick() => self.watch_links().await,
            }
        }
        for l in &self.links {
            l.cancel.cancel();
        }
        for l in self.links.drain(..) {
            let _ = l.task.await;
        }
        engine_cancel.cancel();
    }

    async fn handle(&mut self, r: ReloadRequest) {
        let result = self.reload().await;
        match &result {
            Ok(m) => info!("configuration reloaded: {m}"),
            Err(e) => warn!("configuration reload refused; the running configuration stays:\n{e}"),
        }
        match r.origin {
            ReloadOrigin::Caller(tx) => {
                let _ = tx.send(result);
            }
            ReloadOrigin::Command(to) => {
                // The engine task replies; if it has stopped, nobody is left to tell.
                let _ = self.engine.send(Control::Reloaded { to, result }).await;
            }
        }
    }

    async fn reload(&mut self) -> Result<String, String> {
        let path = self
            .cfg
            .files
            .first()
            .cloned()
            .ok_or("no configuration file to re-read")?;
        let new = load_off_runtime(path, RELOAD_TIMEOUT).await?;
        needs_restart(&self.cfg, &new)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine
            .send(Control::Swap(Box::new(new.clone()), tx))
            .await
            .map_err(|_| "the engine stopped".to_string())?;
        rx.await.map_err(|_| "the engine stopped".to_string())??;
        let running: Vec<(&str, &[Device])> = self
            .links
            .iter()
            .map(|l| (l.key.as_str(), l.devices.as_slice()))
            .collect();
        let plan = plan_links(&running, &wanted_links(&new.devices));
        let restart: HashSet<String> = plan.restart.iter().cloned().collect();
        let mut i = 0;
        while i < self.links.len() {
            if restart.contains(&self.links[i].key) {
                let l = self.links.remove(i);
                l.cancel.cancel();
                let _ = l.task.await;
            } else {
                i += 1;
            }
        }
        self.spawn_links(&new.devices, Some(&restart));
        let rules = new.rules.len();
        self.reports.config_hash.send_replace(new.hash.clone());
        self.cfg = new;
        Ok(format!(
            "{rules} rules; {} links kept, {} restarted",
            plan.kept,
            plan.restart.len()
        ))
    }
}

/// Longest a reload may take to read and validate the configuration. Files are bounded in
/// kind and size (`config/reader.rs`), so only a stuck file system reaches it.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads and validates the configuration on a blocking thread, so that a slow disk or a large
/// plant (10,000 devices) never holds a runtime worker that pollers, the engine and `/healthz`
/// need. Past `timeout` the reload is refused; the thread is left to finish on its own.
async fn load_off_runtime(path: PathBuf, timeout: Duration) -> Result<Config, String> {
    let read = tokio::task::spawn_blocking(move || Config::load(&path));
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(format!(
            "reading the configuration took longer than {} s; nothing was applied",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("reading the configuration failed: {e}")),
        Ok(Ok(Err(e))) => Err(e
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")),
        Ok(Ok(Ok(cfg))) => Ok(cfg),
    }
}

/// Changes a reload cannot apply in place; they take effect at the next restart.
pub fn needs_restart(old: &Config, new: &Config) -> Result<(), String> {
    if new.agent != old.agent {
        return Err(
            "changes in [agent] take effect at the next restart; nothing was applied".into(),
        );
    }
    if new.sinks != old.sinks {
        return Err(
            "changes in [mqtt] take effect at the next restart; nothing was applied".into(),
        );
    }
    if new.http != old.http {
        return Err(
            "changes in [http] take effect at the next restart; nothing was applied".into(),
        );
    }
    if new.record != old.record {
        return Err(
            "changes in [record] take effect at the next restart; nothing was applied".into(),
        );
    }
    let names = |c: &Config| c.devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
    if names(old) != names(new) {
        return Err("adding, removing or reordering devices takes effect at the next restart; devices can be changed in place".into());
    }
    Ok(())
}

/// The links `devices` need: (link key, its devices as polled).
fn wanted_links(devices: &[Device]) -> Vec<(String, Vec<Device>)> {
    links(devices)
        .into_iter()
        .map(|(e, ds)| {
            (
                e.link_key(),
                ds.iter()
                    .map(|d| as_polled(&devices[d.index as usize]))
                    .collect(),
            )
        })
        .collect()
}

/// A device as its poller sees it: where its entry sits in the file does not matter, so an
/// edit above it (which moves it) does not restart its link.
fn as_polled(d: &Device) -> Device {
    Device {
        origin: (0, 0),
        ..d.clone()
    }
}

/// What a reload does to the link pollers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkPlan {
    /// Running links whose devices are unchanged.
    kept: usize,
    /// Links to stop (if running) and start (if still wanted): the changed, the new and the gone.
    restart: Vec<String>,
}

fn plan_links(running: &[(&str, &[Device])], wanted: &[(String, Vec<Device>)]) -> LinkPlan {
    let mut plan = LinkPlan {
        kept: 0,
        restart: Vec::new(),
    };
    // Maps, not scans: a plant of 10,000 links must not cost 100 million comparisons.
    let wanted_by_key: HashMap<&str, &[Device]> = wanted
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_slice()))
        .collect();
    let running_keys: HashSet<&str> = running.iter().map(|(k, _)| *k).collect();
    for (key, devices) in running {
        match wanted_by_key.get(key) {
            Some(d) if d == devices => plan.kept += 1,
            _ => plan.restart.push(key.to_string()),
        }
    }
    for (key, _) in wanted {
        if !running_keys.contains(key.as_str()) {
            plan.restart.push(key.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(agent_id: &str, devices: &str) -> Config {
        Config::from_str(
            Path::new("t.toml"),
            &format!(
                r#"
[agent]
id = "{agent_id}"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
{devices}
[[rules]]
name = "high"
devices = ["*"]
tag = "v"
type = "high"
limit = 8.0
"#
            ),
        )
        .unwrap()
    }

    fn device(name: &str, endpoint: &str, unit: u8, poll: &str) -> String {
        format!(
            "[[devices]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\nunit = {unit}\npoll = \"{poll}\"\ntags = [ {{ name = \"v\", table = \"input\", address = 0, type = \"u16\" }} ]\n"
        )
    }

    #[test]
    fn a_reload_refuses_what_needs_a_restart() {
        let a = device("a", "tcp://10.0.0.1:502", 1, "1s");
        let b = device("b", "tcp://10.0.0.2:502", 1, "1s");
        let old = cfg("gw", &format!("{a}{b}"));
        assert_eq!(needs_restart(&old, &old.clone()), Ok(()));
        let faster = cfg(
            "gw",
            &format!("{}{b}", device("a", "tcp://10.0.0.1:502", 1, "100ms")),
        );
        assert_eq!(needs_restart(&old, &faster), Ok(()), "in place");
        let renamed = cfg("gw2", &format!("{a}{b}"));
        assert!(needs_restart(&old, &renamed)
            .unwrap_err()
            .contains("[agent]"));
        let reordered = cfg("gw", &format!("{b}{a}"));
        assert!(needs_restart(&old, &reordered)
            .unwrap_err()
            .contains("reordering devices"));
        let fewer = cfg("gw", &a);
        assert!(needs_restart(&old, &fewer).is_err());
        // [http] and [record] are read at start only: a reload must not answer ok for them.
        let mut http = old.clone();
        http.http = Some(crate::config::Http {
            listen: "127.0.0.1:9184".parse().unwrap(),
            ready_share: 0.5,
            users: None,
            anonymous: false,
            session_timeout_ms: 3_600_000,
            tls: None,
        });
        assert!(needs_restart(&old, &http).unwrap_err().contains("[http]"));
    }

    #[test]
    fn only_links_whose_devices_changed_are_restarted() {
        let one = |poll| {
            cfg(
                "gw",
                &format!(
                    "{}{}{}",
                    device("a", "tcp://10.0.0.1:502", 1, "1s"),
                    device("b", "tcp://10.0.0.1:502", 2, poll),
                    device("c", "tcp://10.0.0.2:502", 1, "1s"),
                ),
            )
        };
        let (old, new) = (one("1s"), one("200ms"));
        let running = wanted_links(&old.devices);
        let running: Vec<(&str, &[Device])> = running
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_slice()))
            .collect();
        assert_eq!(running.len(), 2);
        assert_eq!(
            plan_links(&running, &wanted_links(&old.devices)),
            LinkPlan {
                kept: 2,
                restart: vec![]
            }
        );
        assert_eq!(
            plan_links(&running, &wanted_links(&new.devices)),
            LinkPlan {
                kept: 1,
                restart: vec![running[0].0.to_string()]
            }
        );
        // Device c moves to a new endpoint: its old link goes, the new one starts.
        let moved = cfg(
            "gw",
            &format!(
                "{}{}{}",
                device("a", "tcp://10.0.0.1:502", 1, "1s"),
                device("b", "tcp://10.0.0.1:502", 2, "1s"),
                device("c", "tcp://10.0.0.3:502", 1, "1s"),
            ),
        );
        let plan = plan_links(&running, &wanted_links(&moved.devices));
        assert_eq!(plan.kept, 1);
        assert_eq!(plan.restart.len(), 2, "{plan:?}");
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::app::engine::PendingReply;
    use crate::clock::ManualClock;
    use crate::io::inbound::CommandOrigin;
    use std::time::Duration;

    fn text(agent: &str, limit: f64, top: &str) -> String {
        format!(
            r#"{top}
[agent]
id = "{agent}"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "a"
endpoint = "tcp://127.0.0.1:1"
poll = "1s"
tags = [ {{ name = "v", table = "input", address = 0, type = "u16" }} ]
[[rules]]
name = "high"
devices = ["*"]
tag = "v"
type = "high"
limit = {limit}
"#
        )
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("within 5 s")
    }

    /// The test plays the engine task's side of the control channel.
    #[tokio::test]
    async fn a_reload_is_applied_through_the_engine_and_its_outcome_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alsentry.toml");
        std::fs::write(&path, text("gw", 8.0, "")).unwrap();
        let cfg = Config::load(&path).unwrap();
        let first_hash = cfg.hash.clone();
        let (hash_tx, hash_rx) = watch::channel(first_hash.clone());
        let (batches, _batch_rx) = mpsc::channel(16);
        let (control_tx, mut control) = mpsc::channel(4);
        let metrics = Metrics::new(["a".to_string()], ["default".to_string()]);
        let health = crate::io::health::channel(cfg.devices.iter().map(|d| d.name.clone())).0;
        let sup = Supervisor::start(
            cfg,
            batches,
            ManualClock::new(0),
            metrics,
            health,
            control_tx,
            Reports {
                pulse: Pulse::new(Default::default(), Mono::ZERO),
                config_hash: hash_tx,
            },
            Default::default(),
        );
        let (requests, requests_rx) = mpsc::channel(4);
        let (cancel, engine_cancel) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(sup.run(requests_rx, cancel.clone(), engine_cancel.clone()));

        // A new limit, and a comment that moves every entry: applied in place, link kept.
        std::fs::write(&path, text("gw", 9.0, "# moved\n")).unwrap();
        let to = PendingReply {
            to: CommandOrigin::Mqtt {
                sink: 0,
                retained: false,
            },
            request_id: Some("r1".into()),
            op: "reload".into(),
        };
        let origin = ReloadOrigin::Command(to);
        requests.send(ReloadRequest { origin }).await.unwrap();
        let Some(Control::Swap(new, done)) = within(control.recv()).await else {
            panic!("the engine is asked to swap first")
        };
        assert_ne!(new.hash, first_hash, "the file as it is now");
        done.send(Ok(())).unwrap();
        let Some(Control::Reloaded { to: got, result }) = within(control.recv()).await else {
            panic!("the outcome goes back to the engine task")
        };
        assert_eq!(got.request_id.as_deref(), Some("r1"));
        assert!(matches!(got.to, CommandOrigin::Mqtt { sink: 0, .. }));
        assert_eq!(result, Ok("1 rules; 1 links kept, 0 restarted".to_string()));
        // Issue 15: the status kept the old hash after a reload.
        assert_eq!(
            *hash_rx.borrow(),
            new.hash,
            "the sinks learn the hash in force"
        );
        assert_ne!(*hash_rx.borrow(), first_hash);

        // What needs a restart is refused before the engine hears of it.
        std::fs::write(&path, text("gw-2", 9.0, "")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let origin = ReloadOrigin::Caller(tx);
        requests.send(ReloadRequest { origin }).await.unwrap();
        let err = within(rx).await.unwrap().unwrap_err();
        assert!(err.contains("[agent]"), "{err}");
        assert_eq!(
            *hash_rx.borrow(),
            new.hash,
            "a refused reload changes nothing"
        );
        assert!(
            control.try_recv().is_err(),
            "no swap, no reply to hand back"
        );

        // Stopping: the pollers first, then the engine.
        cancel.cancel();
        within(engine_cancel.cancelled()).await;
        within(task).await.unwrap();
    }
}
