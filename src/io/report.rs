//! The daily report task (docs/REPORT.md): feeds the engine task's samples and alarm
//! transitions to the pure accumulator (`core::report`), publishes each day's reports,
//! retained, when the day ends, and keeps the partial day in `<state_dir>/report-state.json`
//! so that a restart loses nothing of it.
//!
//! The file is written like the alarm state file (`io/alarm_state.rs`): a temp file, fsynced,
//! renamed over the old one, then the directory fsynced; versioned JSON whose fields all have
//! defaults. It is saved every `[report] save_interval`, at once after a day's reports are
//! handed to the sinks, and when the task stops.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::clock::{Clock, Mono};
use crate::config::Config;
use crate::core::engine::{AlarmEvent, SampleBatch};
use crate::core::model::Ts;
use crate::core::outbound::{Class, Message};
use crate::core::payload::Identity;
use crate::core::report::{DayReport, Reports, SavedReports};

/// The file's name in `state_dir`.
pub const FILE: &str = "report-state.json";
/// The format this release writes.
pub const VERSION: u32 = 1;
/// Inputs waiting for the task: the engine task waits when it is full (nothing is dropped).
pub const QUEUE: usize = 4096;
/// How often the task looks at the clock for the end of the day.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the engine task hands over.
#[derive(Debug)]
pub enum ReportInput {
    Batch(SampleBatch),
    // Boxed: transitions are rare, batches many; the queue holds the small variant.
    Event(Box<AlarmEvent>),
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportFile {
    pub version: u32,
    /// When it was written (wall ms).
    pub saved_at: Ts,
    pub state: SavedReports,
}

fn io_err(op: &str, path: &Path, e: io::Error) -> String {
    format!("cannot {op} {}: {e}", path.display())
}

/// Reads the file in `dir`: `None` when there is none (first start).
pub fn load(dir: &Path) -> Result<Option<ReportFile>, String> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is not a valid report state file: {e}", path.display()))
}

/// Writes `file` in `dir` atomically and durably.
pub fn save(dir: &Path, file: &ReportFile) -> Result<(), String> {
    let path = dir.join(FILE);
    let bytes = serde_json::to_vec(file).map_err(|e| format!("{}: {e}", path.display()))?;
    super::durable::replace(&path, &bytes).map_err(|e| e.to_string())
}

/// The report task of one agent.
#[derive(Debug)]
pub struct ReportTask {
    reports: Reports,
    dir: PathBuf,
    save_every: Duration,
    /// Each sink's inbox and the identity it publishes under.
    sinks: Vec<(Identity, mpsc::Sender<Arc<Message>>)>,
    clock: Arc<dyn Clock>,
    /// Reports of a day that ended while the agent was down, published at start.
    pending: Vec<DayReport>,
}

impl ReportTask {
    /// `None` when `[report]` is off or no device has a `voltage` tag. Takes up the partial
    /// day saved by the previous run; an unreadable file is set aside (`.bad`) with a warning.
    pub fn new(
        cfg: &Config,
        sinks: Vec<(Identity, mpsc::Sender<Arc<Message>>)>,
        clock: Arc<dyn Clock>,
    ) -> Option<ReportTask> {
        let opts = cfg.report.options.clone();
        if !opts.enabled {
            return None;
        }
        let mut reports = Reports::from_spec(&cfg.spec, opts, &cfg.agent.timezone);
        if !reports.has_cells() {
            return None;
        }
        let dir = cfg.agent.state_dir.clone();
        let pending = match load(&dir) {
            Ok(Some(f)) => {
                let day = f.state.day.as_ref().map(|d| d.date.clone());
                let out = reports.restore(f.state, clock.now());
                info!(day = ?day, closed = out.len(), "report: partial day restored");
                out
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                let bad = dir.join(format!("{FILE}.bad"));
                warn!(error = %e, aside = %bad.display(), "report: the saved day cannot be read; starting a new one");
                let _ = fs::rename(dir.join(FILE), &bad);
                Vec::new()
            }
        };
        Some(ReportTask {
            reports,
            dir,
            save_every: Duration::from_millis(cfg.report.save_interval_ms.max(1_000) as u64),
            sinks,
            clock,
            pending,
        })
    }

    fn save(&self) {
        let file = ReportFile {
            version: VERSION,
            saved_at: self.clock.now(),
            state: self.reports.save(),
        };
        if let Err(e) = save(&self.dir, &file) {
            warn!(error = %e, "report: the partial day could not be saved");
        }
    }

    /// Hands each report to every sink, retained (a plant reads yesterday's from the broker).
    async fn publish(&self, done: Vec<DayReport>) {
        for r in done {
            info!(day = %r.day, device = %r.device, ae = r.anode_effects.count, "report: day closed");
            for (who, tx) in &self.sinks {
                let m = Message {
                    class: Class::Summary,
                    topic: r.topic(who),
                    payload: r.payload(who),
                    retain: true,
                    priority: None,
                };
                let _ = tx.send(Arc::new(m)).await;
            }
        }
    }

    /// Runs until the engine task drops its sender, then saves the partial day.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ReportInput>) {
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            self.publish(pending).await;
        }
        self.save();
        let mut saved: Mono = self.clock.mono();
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let done = tokio::select! {
                // What is queued first: at midnight the old day's last batches are applied
                // before the clock ends the day (they would otherwise be late samples).
                biased;
                m = rx.recv() => match m {
                    Some(ReportInput::Batch(b)) => self.reports.batch(&b),
                    Some(ReportInput::Event(e)) => self.reports.event(&e),
                    None => break,
                },
                _ = check.tick() => self.reports.advance(self.clock.now()),
            };
            let mono = self.clock.mono();
            if !done.is_empty() {
                self.publish(done).await;
                self.save();
                saved = mono;
            } else if mono.since(saved) >= self.save_every {
                self.save();
                saved = mono;
            }
        }
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::core::model::Quality;

    /// 2026-11-27T16:00:00Z: midnight of 2026-11-28 in Shanghai.
    const DAY0: Ts = 1_795_795_200_000;
    const H: Ts = 3_600_000;

    fn config(state: &Path) -> Config {
        let text = format!(
            "[agent]\nid = \"gw\"\nsite = \"s\"\narea = \"a\"\ntimezone = \"Asia/Shanghai\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\ntopic_root = \"plant\"\n[[devices]]\nname = \"pot-1\"\nendpoint = \"tcp://127.0.0.1:502\"\ntags = [ {{ name = \"voltage\", table = \"input\", address = 0, type = \"f32\", unit = \"V\" }}, {{ name = \"current\", table = \"input\", address = 2, type = \"f32\", unit = \"kA\" }} ]\n",
            state.display()
        );
        Config::from_str(Path::new("t.toml"), &text).unwrap()
    }

    /// `alsentry run` publishes the day's reports, retained, when the plant's midnight passes,
    /// with no sample needed to end the day.
    #[tokio::test]
    async fn the_reports_go_out_retained_when_the_local_day_ends() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let clock = ManualClock::new(DAY0 + 10 * H);
        let who = Identity {
            topic_root: "plant".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        };
        let (sink, mut out) = mpsc::channel(16);
        let task = ReportTask::new(&cfg, vec![(who, sink)], clock.clone()).unwrap();
        let (input, rx) = mpsc::channel(16);
        let running = tokio::spawn(task.run(rx));
        let batch = SampleBatch {
            device: 0,
            ts: DAY0 + 10 * H,
            values: vec![(0, 4.2, Quality::Good), (1, 400.0, Quality::Good)],
        };
        input.send(ReportInput::Batch(batch)).await.unwrap();
        // 23:59:59 local: not yet.
        clock.set(DAY0 + 24 * H - 1_000);
        let early = tokio::time::timeout(Duration::from_millis(1_500), out.recv()).await;
        assert!(early.is_err(), "published before midnight");
        clock.set(DAY0 + 24 * H + 200);
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(5), out.recv())
                .await
                .expect("the reports at midnight")
                .unwrap();
            got.push(m);
        }
        assert_eq!(got[0].topic, "plant/s/a/pot-1/report/daily");
        assert_eq!(got[1].topic, "plant/s/a/_area/report/daily");
        assert!(got.iter().all(|m| m.retain && m.class == Class::Summary));
        let j: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(j["day"], "2026-11-28");
        assert_eq!(j["energy"]["voltage_mean_v"], 4.2);
        drop(input);
        running.await.unwrap();
        // The next day is the one saved.
        let f = load(dir.path()).unwrap().unwrap();
        assert_eq!(f.state.day.unwrap().date, "2026-11-29");
    }

    /// Polls `cond` every 20 ms for up to 5 s (clippy keeps clock reads in clock.rs).
    async fn within_5s(cond: impl Fn() -> bool) -> bool {
        for _ in 0..250 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    /// A crash loses at most `save_interval`: the partial day reaches the file while the task
    /// runs, not only when it stops.
    #[tokio::test]
    async fn the_partial_day_is_saved_every_save_interval_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let clock = ManualClock::new(DAY0 + 10 * H);
        let task = ReportTask::new(&cfg, Vec::new(), clock.clone()).unwrap();
        let (input, rx) = mpsc::channel(16);
        let running = tokio::spawn(task.run(rx));
        let batch = SampleBatch {
            device: 0,
            ts: DAY0 + 10 * H,
            values: vec![(0, 4.2, Quality::Good)],
        };
        input.send(ReportInput::Batch(batch)).await.unwrap();
        let samples = || {
            load(dir.path())
                .ok()
                .flatten()
                .map_or(0, |f| f.state.devices["pot-1"].v_samples)
        };
        // The task has started when it has written the file once.
        assert!(
            within_5s(|| load(dir.path()).ok().flatten().is_some()).await,
            "the task did not start"
        );
        // The save interval (10 s by default) passes on the clock; the next turn saves.
        clock.set(DAY0 + 10 * H + 61_000);
        assert!(
            within_5s(|| samples() > 0).await,
            "not saved while running: {:?}",
            load(dir.path())
        );
        assert_eq!(samples(), 1);
        drop(input);
        running.await.unwrap();
    }

    #[test]
    fn the_file_reads_back_and_an_older_or_newer_one_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut f = ReportFile {
            version: VERSION,
            saved_at: 5,
            state: SavedReports::default(),
        };
        f.state.devices.insert("pot-1".into(), Default::default());
        save(dir.path(), &f).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(f));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        fs::write(
            dir.path().join(FILE),
            r#"{"version":2,"later":1,"state":{"devices":{"p":{"v_good":3,"x":1}}}}"#,
        )
        .unwrap();
        let f = load(dir.path()).unwrap().unwrap();
        assert_eq!(f.state.devices["p"].v_good, 3);
        fs::write(dir.path().join(FILE), "{\"version\":").unwrap();
        assert!(load(dir.path()).unwrap_err().contains(FILE));
    }
}
