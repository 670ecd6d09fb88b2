//! The alarm state across restarts, as the engine task keeps it: restored into the engine at
//! start (before the first poll), the broker brought to the same picture (restored states
//! republished, retained topics of vanished instances cleared), and the state file kept up to
//! date. The file itself is `io/alarm_state.rs`; the rules are in docs/MQTT.md ("Alarm state
//! across restarts").

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::clock::Mono;
use crate::config::{Config, MqttSink};
use crate::core::engine::Engine;
use crate::core::model::{Priority, Ts};
use crate::core::outbound::Class;
use crate::core::payload::{Identity, RestoreReport};
use crate::io::alarm_state::{self, StateFile, MIN_INTERVAL};
use crate::telemetry::{emit, AlarmStateNotSaved, AlarmStateRestored, AlarmStateUnreadable};

/// What a start took over from the previous run.
#[derive(Debug, Clone, Default)]
pub struct Restore {
    /// "read", "none" or "unreadable" (see [`RestoreReport`]).
    pub state_file: &'static str,
    pub restored: usize,
    pub dropped: usize,
    /// Per sink index: retained alarm topics to clear (their instance no longer exists).
    pub clears: Vec<Vec<String>>,
    /// Per sink name: the retained topics published earlier that still have their instance.
    pub retained: BTreeMap<String, BTreeSet<String>>,
    /// The next `seq` the previous run recorded.
    pub next_seq: Option<u64>,
}

impl Restore {
    /// The report for the status of sink `i`.
    pub fn report(&self, i: usize) -> RestoreReport {
        RestoreReport {
            state_file: self.state_file,
            restored: self.restored as u64,
            dropped: self.dropped as u64,
            cleared: self.clears.get(i).map_or(0, Vec::len) as u64,
        }
    }
}

/// The sinks as the state file names them: name, identity, and what each carries.
#[derive(Debug, Clone)]
struct SinkView {
    name: String,
    who: Identity,
    sink: MqttSink,
}

impl SinkView {
    fn carries(&self, priority: Priority) -> bool {
        self.sink.carries(Class::Alarm, Some(priority))
    }
}

fn views(cfg: &Config) -> Vec<SinkView> {
    cfg.sinks
        .iter()
        .map(|s| SinkView {
            name: s.name.clone(),
            who: super::engine::identity(cfg, s),
            sink: s.clone(),
        })
        .collect()
}

/// Reads the state file of `cfg`'s `state_dir` into `engine` (built from `cfg`, not yet fed),
/// and works out which retained topics each sink must clear. An unreadable file is reported,
/// set aside and the agent starts fresh: a damaged file must not keep the agent down.
pub fn restore(cfg: &Config, engine: &mut Engine) -> Restore {
    let dir = &cfg.agent.state_dir;
    let file = match alarm_state::load(dir) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Restore {
                state_file: "none",
                ..Restore::default()
            }
        }
        Err(e) => {
            let aside = alarm_state::set_aside(dir);
            emit(AlarmStateUnreadable {
                error: &e,
                set_aside: aside.as_ref().ok().map(PathBuf::as_path),
            });
            return Restore {
                state_file: "unreadable",
                ..Restore::default()
            };
        }
    };
    let done = engine.restore(file.alarms);
    let mut r = Restore {
        state_file: "read",
        restored: done.restored,
        dropped: done.dropped,
        next_seq: Some(file.next_seq).filter(|&n| n > 0),
        ..Restore::default()
    };
    let mut published = file.retained;
    for v in views(cfg) {
        let now: BTreeSet<String> = engine
            .instances()
            .filter(|&(_, _, p)| v.carries(p))
            .map(|(d, rule, _)| v.who.alarm_topic(d, rule))
            .collect();
        let before = published.remove(&v.name).unwrap_or_default();
        let (keep, clear): (BTreeSet<String>, BTreeSet<String>) =
            before.into_iter().partition(|t| now.contains(t));
        r.clears.push(clear.into_iter().collect());
        r.retained.insert(v.name, keep);
    }
    emit(AlarmStateRestored {
        restored: r.restored,
        dropped: r.dropped,
        cleared: r.clears.iter().map(Vec::len).sum(),
    });
    r
}

/// Keeps the state file up to date for the engine task.
#[derive(Debug)]
pub struct Keeper {
    dir: PathBuf,
    sinks: Vec<SinkView>,
    retained: BTreeMap<String, BTreeSet<String>>,
    /// `Engine::changes` at the last save.
    saved_changes: Option<u64>,
    retained_dirty: bool,
    last_save: Option<Mono>,
}

impl Keeper {
    pub fn new(cfg: &Config) -> Keeper {
        Keeper {
            dir: cfg.agent.state_dir.clone(),
            sinks: views(cfg),
            retained: BTreeMap::new(),
            saved_changes: None,
            retained_dirty: false,
            last_save: None,
        }
    }

    /// Takes over the lists of retained topics that survived the restore.
    pub fn restored(&mut self, r: &Restore) {
        self.retained = r.retained.clone();
        self.retained_dirty = true;
    }

    /// An alarm of (device, rule) went to every sink that carries `priority`: its topic is
    /// now retained there.
    pub fn published(&mut self, device: &str, rule: &str, priority: Priority) {
        for v in &self.sinks {
            if !v.carries(priority) {
                continue;
            }
            let topic = v.who.alarm_topic(device, rule);
            let list = self.retained.entry(v.name.clone()).or_default();
            if !list.contains(&topic) {
                list.insert(topic);
                self.retained_dirty = true;
            }
        }
    }

    /// A topic was added to a retained list since the last save.
    pub fn has_new_topics(&self) -> bool {
        self.retained_dirty
    }

    /// Saves when something changed and the last save is at least [`MIN_INTERVAL`] old, or
    /// whenever something changed when `at_once` (commands, start, shutdown).
    pub fn save_if_due(
        &mut self,
        engine: &Engine,
        next_seq: u64,
        mono: Mono,
        now: Ts,
        at_once: bool,
    ) {
        let changed = self.retained_dirty || self.saved_changes != Some(engine.changes());
        if !changed {
            return;
        }
        let recent = self.last_save.is_some_and(|t| mono.since(t) < MIN_INTERVAL);
        if recent && !at_once {
            return;
        }
        let file = StateFile {
            version: alarm_state::VERSION,
            saved_at: now,
            next_seq,
            alarms: engine.save(),
            retained: self.retained.clone(),
        };
        let result = match tokio::runtime::Handle::try_current() {
            // An fsync may take milliseconds: let the runtime move other tasks off this worker.
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| alarm_state::save(&self.dir, &file))
            }
            _ => alarm_state::save(&self.dir, &file),
        };
        self.last_save = Some(mono);
        match result {
            Ok(()) => {
                self.saved_changes = Some(engine.changes());
                self.retained_dirty = false;
            }
            // Tried again at the next change; the agent keeps running on its memory.
            Err(e) => emit(AlarmStateNotSaved { error: &e }),
        }
    }
}
