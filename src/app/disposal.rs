//! Disposal in the engine task: the action [`Book`] (pure, `core/action`) fed with the alarm
//! transitions, the operator's confirmations and kill switches, and the write results; its
//! effects carried out here: audit events appended to `state_dir/audit.jsonl` and published,
//! writes handed to the device's link poller (`io/poller.rs`), failures raised as the device's
//! `action_failed` alarm. docs/DISPOSAL.md.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::Config;
use crate::core::action::{Book, Effect, Facts, Kill, Trigger, WriteResult};
use crate::core::alarm::Cause;
use crate::core::engine::{AlarmEvent, Engine};
use crate::core::model::Ts;
use crate::core::outbound::Outbound;
use crate::io::audit::{self, AuditFile};
use crate::io::poller::{WriteJob, WriteRouter};

/// Write results waiting for the engine task, at most.
const RESULTS: usize = 64;

/// The engine's view of the plant at `now`, for interlocks: a bad or stale tag is unknown.
struct EngineFacts<'a>(&'a Engine, Ts);

impl Facts for EngineFacts<'_> {
    fn tag(&self, device: &str, tag: &str) -> Option<f64> {
        self.0.fresh_value(device, tag, self.1)
    }

    fn alarm_active(&self, device: &str, rule: &str) -> Option<bool> {
        let e = self.0.alarm_state(device, rule)?;
        Some(e.transition.to.starts_with("active_"))
    }
}

#[derive(Debug)]
pub struct Disposal {
    book: Book,
    writes: WriteRouter,
    results_tx: mpsc::Sender<WriteResult>,
    results_rx: Option<mpsc::Receiver<WriteResult>>,
    file: AuditFile,
    state_dir: PathBuf,
    /// What the engine task still has to publish.
    out: Vec<Outbound>,
    /// (agent, site, area) for the audit file's lines.
    who: (String, String, String),
}

/// What one step of disposal asks of the engine task.
#[derive(Debug, Default)]
pub struct Done {
    pub publish: Vec<Outbound>,
    pub alarms: Vec<AlarmEvent>,
}

impl Disposal {
    pub fn new(cfg: &Config, now: Ts) -> Disposal {
        let saved = audit::load_kill(&cfg.agent.state_dir);
        let kill = Kill {
            all: cfg.disposal.all || saved.all,
            areas: cfg.disposal.areas.union(&saved.areas).cloned().collect(),
        };
        let (results_tx, results_rx) = mpsc::channel(RESULTS);
        // Execution numbers start at the start time (ms): they do not repeat across restarts.
        let book = Book::new(cfg.actions.clone(), kill, now.max(1) as u64);
        Disposal {
            book,
            writes: WriteRouter::default(),
            results_tx,
            results_rx: Some(results_rx),
            file: AuditFile::new(&cfg.agent.state_dir),
            state_dir: cfg.agent.state_dir.clone(),
            out: Vec::new(),
            who: (
                cfg.agent.id.clone(),
                cfg.agent.site.clone(),
                cfg.agent.area.clone(),
            ),
        }
    }

    /// A reloaded configuration: its actions, the kill switches as they are now plus those the
    /// new `[disposal]` sets (a switch added to the file takes effect at the reload, not at the
    /// next start; removing one from the file releases nothing: `release_kill` does). Open
    /// proposals are dropped (an operator confirms against the actions in force).
    pub fn reload(&mut self, cfg: &Config) {
        let now = self.book.kill();
        let kill = Kill {
            all: now.all || cfg.disposal.all,
            areas: now.areas.union(&cfg.disposal.areas).cloned().collect(),
        };
        let first = self.book.next_id();
        self.book = Book::new(cfg.actions.clone(), kill, first);
    }

    pub fn with_writes(mut self, writes: WriteRouter) -> Disposal {
        self.writes = writes;
        self
    }

    /// The write results, for the engine task's loop (taken once).
    pub fn take_results(&mut self) -> mpsc::Receiver<WriteResult> {
        self.results_rx.take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    pub fn is_configured(&self) -> bool {
        !self.book.specs().is_empty()
    }

    /// Alarm transitions just drained from the engine: the actions they trigger.
    pub fn on_events(&mut self, events: &[AlarmEvent], engine: &mut Engine, now: Ts) -> Done {
        if !self.is_configured() {
            return Done::default();
        }
        let mut effects = Vec::new();
        for e in events {
            if e.transition.cause != Cause::Condition {
                continue;
            }
            let Some(t) = Trigger::of(e.transition.from, e.transition.to) else {
                continue;
            };
            effects.extend(self.book.on_alarm(
                &e.device,
                &e.rule,
                t,
                &EngineFacts(engine, now),
                now,
            ));
        }
        self.carry_out(effects, engine, now)
    }

    pub fn tick(&mut self, engine: &mut Engine, now: Ts) -> Done {
        if !self.is_configured() {
            return Done::default();
        }
        let effects = self.book.tick(now);
        self.carry_out(effects, engine, now)
    }

    pub fn on_written(&mut self, r: WriteResult, engine: &mut Engine, now: Ts) -> Done {
        let effects = self.book.on_written(r, now);
        self.carry_out(effects, engine, now)
    }

    /// An operator's confirmation: what to do, and the reply's outcome.
    pub fn confirm(
        &mut self,
        action: &str,
        device: &str,
        proposal: Option<u64>,
        by: &str,
        engine: &mut Engine,
        now: Ts,
    ) -> (Done, Result<(), String>) {
        let (effects, r) =
            self.book
                .confirm(action, device, proposal, by, &EngineFacts(engine, now), now);
        (self.carry_out(effects, engine, now), r)
    }

    /// Sets or releases a kill switch, and keeps it across restarts.
    pub fn kill(
        &mut self,
        area: Option<&str>,
        on: bool,
        by: &str,
        engine: &mut Engine,
        now: Ts,
    ) -> (Done, Result<(), String>) {
        let effects = self.book.set_kill(area, on, by, now);
        let saved = audit::save_kill(&self.state_dir, self.book.kill());
        let done = self.carry_out(effects, engine, now);
        match saved {
            Ok(()) => (done, Ok(())),
            Err(e) => (
                done,
                Err(format!(
                    "the kill switch is {} now, but could not be saved for the next start: {e}",
                    if on { "on" } else { "off" }
                )),
            ),
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect>, engine: &mut Engine, now: Ts) -> Done {
        let mut done = Done::default();
        for e in effects {
            match e {
                Effect::Audit(a) => {
                    info!(event = ?a.event, action = ?a.action, device = ?a.device, detail = ?a.detail, "disposal");
                    // The file first: the plant's own record holds even without a broker.
                    let line = a.payload(&self.who.0, &self.who.1, &self.who.2);
                    if let Err(e) = self.file.append(&line) {
                        warn!(file = %self.file.path().display(), error = %e, "audit event not written to the audit file");
                    }
                    if matches!(a.event, crate::core::action::AuditKind::Verified) {
                        if let Some(d) = &a.device {
                            engine.action_failed(d, false, None, now, &mut done.alarms);
                        }
                    }
                    done.publish.push(Outbound::Audit(*a));
                }
                Effect::Failed { device, detail, .. } => {
                    engine.action_failed(&device, true, Some(detail), now, &mut done.alarms);
                }
                Effect::Write(order) => self.dispatch(order),
            }
        }
        done.publish.append(&mut self.out);
        done
    }

    /// Hands a write to its link; the result comes back on the results channel.
    fn dispatch(&self, order: crate::core::action::WriteOrder) {
        let (tx, rx) = oneshot::channel();
        let id = order.id;
        let results = self.results_tx.clone();
        let failed = move |why: &str| WriteResult {
            id,
            written: Err(why.to_string()),
            read_back: None,
            attempts: 0,
        };
        match self.writes.send(WriteJob::new(order, tx)) {
            Err((_, why)) => {
                let r = failed(why);
                tokio::spawn(async move {
                    let _ = results.send(r).await;
                });
            }
            Ok(()) => {
                tokio::spawn(async move {
                    let r = rx
                        .await
                        .unwrap_or_else(|_| failed("the link stopped before writing"));
                    let _ = results.send(r).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(state: &std::path::Path, disposal: &str) -> Config {
        Config::from_str(
            std::path::Path::new("t.toml"),
            &format!(
                r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{}"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[data]
mode = "poll"
[[devices]]
name = "pot-001"
endpoint = "tcp://127.0.0.1:5020"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", unit = "V" }} ]
{disposal}
"#,
                state.display()
            ),
        )
        .unwrap()
    }

    #[test]
    fn an_interlock_tag_whose_samples_stopped_is_unknown() {
        let state = tempfile::tempdir().unwrap();
        let c = cfg(state.path(), "");
        let mut engine = Engine::new(&c.spec);
        let mut out = Vec::new();
        let batch = crate::core::engine::SampleBatch {
            device: 0,
            ts: 1_000,
            values: vec![(0, 4.2, crate::core::model::Quality::Good)],
        };
        engine.on_batch(&batch, 1_000, &mut out);
        assert_eq!(
            EngineFacts(&engine, 1_000).tag("pot-001", "voltage"),
            Some(4.2)
        );
        // The poller stalled: no sample, good or bad, for an hour. Its last good value must not
        // keep an interlock true.
        assert_eq!(
            EngineFacts(&engine, 3_601_000).tag("pot-001", "voltage"),
            None
        );
    }

    #[test]
    fn a_kill_switch_added_to_the_file_holds_from_the_reload() {
        let state = tempfile::tempdir().unwrap();
        let mut d = Disposal::new(&cfg(state.path(), ""), 1);
        assert!(!d.book.kill().all);
        d.reload(&cfg(
            state.path(),
            "[disposal]\nkill = true\nkilled_areas = [\"potline-2\"]",
        ));
        assert!(d.book.kill().all, "config kill ignored by the reload");
        assert!(d.book.kill().stops("potline-2"));
        // A switch set by command is not released by a reload either.
        let mut d = Disposal::new(&cfg(state.path(), ""), 1);
        let _ = d.book.set_kill(Some("potline-1"), true, "lead", 2);
        d.reload(&cfg(state.path(), ""));
        assert!(d.book.kill().stops("potline-1"));
    }
}
