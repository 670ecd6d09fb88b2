//! The supervisor owns the link pollers and applies reloads: it re-reads the configuration,
//! refuses what needs a restart, has the engine task swap its engine, and restarts only the
//! links whose devices changed. It publishes nothing: the outcome of a reload asked for over
//! MQTT goes back to the engine task, which replies.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::engine::{Control, ReloadOrigin, ReloadRequest};
use crate::clock::Clock;
use crate::config::{Config, Device};
use crate::core::engine::SampleBatch;
use crate::io::health::HealthTx;
use crate::io::poller::{links, Link};
use crate::metrics::Metrics;

/// A running link poller.
#[derive(Debug)]
struct RunningLink {
    key: String,
    /// Its devices as configured, to tell whether a reload changes them.
    devices: Vec<Device>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
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
}

impl Supervisor {
    /// Starts a poller for every link of `cfg`.
    pub fn start(
        cfg: Config,
        batches: mpsc::Sender<SampleBatch>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        health: HealthTx,
        engine: mpsc::Sender<Control>,
    ) -> Supervisor {
        let mut s = Supervisor {
            links: Vec::new(),
            batches,
            clock,
            metrics,
            health,
            engine,
            cfg,
        };
        let devices = s.cfg.devices.clone();
        s.spawn_links(&devices, None);
        s
    }

    /// Starts a poller for every link, or only for the links in `only`.
    fn spawn_links(&mut self, devices: &[Device], only: Option<&[String]>) {
        for (endpoint, link_devices) in links(devices) {
            let key = endpoint.link_key();
            if only.is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            let configured: Vec<Device> = link_devices
                .iter()
                .map(|d| as_polled(&devices[d.index as usize]))
                .collect();
            let cancel = CancellationToken::new();
            let link = Link {
                endpoint,
                devices: link_devices,
                tx: self.batches.clone(),
                clock: self.clock.clone(),
                metrics: self.metrics.clone(),
                health: self.health.clone(),
            };
            let task = tokio::spawn(link.run(cancel.clone()));
            self.links.push(RunningLink {
                key,
                devices: configured,
                cancel,
                task,
            });
        }
    }

    /// Serves reload requests until `cancel`; then stops the pollers and, once they have
    /// stopped, `engine_cancel`, so that the engine applies their last batches.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        cancel: CancellationToken,
        engine_cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = requests.recv() => match r {
                    Some(r) => self.handle(r).await,
                    None => break,
                },
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
        let new = Config::load(&path).map_err(|e| {
            e.problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
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
        let mut i = 0;
        while i < self.links.len() {
            if plan.restart.contains(&self.links[i].key) {
                let l = self.links.remove(i);
                l.cancel.cancel();
                let _ = l.task.await;
            } else {
                i += 1;
            }
        }
        self.spawn_links(&new.devices, Some(&plan.restart));
        let rules = new.rules.len();
        self.cfg = new;
        Ok(format!(
            "{rules} rules; {} links kept, {} restarted",
            plan.kept,
            plan.restart.len()
        ))
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
    for (key, devices) in running {
        match wanted.iter().find(|(k, _)| k == key) {
            Some((_, d)) if d.as_slice() == *devices => plan.kept += 1,
            _ => plan.restart.push(key.to_string()),
        }
    }
    for (key, _) in wanted {
        if !running.iter().any(|(k, _)| k == key) && !plan.restart.contains(key) {
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

        // What needs a restart is refused before the engine hears of it.
        std::fs::write(&path, text("gw-2", 9.0, "")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let origin = ReloadOrigin::Caller(tx);
        requests.send(ReloadRequest { origin }).await.unwrap();
        let err = within(rx).await.unwrap().unwrap_err();
        assert!(err.contains("[agent]"), "{err}");
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
