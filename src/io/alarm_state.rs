//! The alarm state file, `<state_dir>/alarm-state.json`: what the engine's alarms were, which
//! `seq` comes next, and which retained alarm topics each sink has published. Written by the
//! engine task when alarm state changes (at most every [`MIN_INTERVAL`], at once after
//! commands so that an `ok` reply is durable) and at shutdown; read at start, before the first
//! poll (docs/MQTT.md, "Alarm state across restarts").
//!
//! Crash-safe: the new content goes to a temp file that is fsynced and renamed over the old
//! one, then the directory is fsynced, so a crash or power cut leaves the old file or the new
//! one, never a mix. The format is versioned JSON; every field has a default, so a newer
//! release reads an older file, and fields it does not know are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::engine::SavedInstance;
use crate::core::model::Ts;

/// The file's name in `state_dir`.
pub const FILE: &str = "alarm-state.json";
/// The format this release writes.
pub const VERSION: u32 = 1;
/// Condition-driven changes are saved at most this often (a crash loses at most this much).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateFile {
    pub version: u32,
    /// When it was written (wall ms).
    pub saved_at: Ts,
    /// The next event `seq` (io/seq.rs uses it when its lease is lost).
    pub next_seq: u64,
    /// Every alarm instance that is not as new.
    pub alarms: Vec<SavedInstance>,
    /// Per sink name: the retained alarm topics it has published (and not cleared), since
    /// the shipped ACLs do not let the agent read them back from the broker.
    pub retained: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid alarm state file: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StateError + 'p {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the file in `dir`: `None` when there is none (first start).
pub fn load(dir: &Path) -> Result<Option<StateFile>, StateError> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Format { path, source })
}

/// Moves an unreadable file aside (`alarm-state.json.bad`) so that it can be looked at and is
/// not overwritten by the fresh state.
pub fn set_aside(dir: &Path) -> Result<PathBuf, StateError> {
    let from = dir.join(FILE);
    let to = dir.join(format!("{FILE}.bad"));
    fs::rename(&from, &to).map_err(io_err("rename", &from))?;
    Ok(to)
}

/// Writes `state` to the file in `dir` atomically and durably.
pub fn save(dir: &Path, state: &StateFile) -> Result<(), StateError> {
    let path = dir.join(FILE);
    let bytes = serde_json::to_vec(state).map_err(|source| StateError::Format {
        path: path.clone(),
        source,
    })?;
    super::durable::replace(&path, &bytes).map_err(|e| StateError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alarm::{SavedAlarm, State};

    fn sample() -> StateFile {
        StateFile {
            version: VERSION,
            saved_at: 1_767_225_600_000,
            next_seq: 1_234,
            alarms: vec![SavedInstance {
                device: "pot-017".into(),
                rule: "anode_effect".into(),
                value: Some(12.5),
                alarm: SavedAlarm {
                    state: State::ActiveAcked,
                    active: true,
                    acked_by: Some("shift-a".into()),
                    ..SavedAlarm::default()
                },
            }],
            retained: BTreeMap::from([(
                "plant".to_string(),
                BTreeSet::from(["alsentry/s/a/pot-017/alarm/anode_effect".to_string()]),
            )]),
        }
    }

    #[test]
    fn saved_state_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        save(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.starts_with(r#"{"version":1,"#), "{text}");
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        let p = dir.path().join(FILE);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("alarm-state.json"), "{e}");
        let aside = set_aside(dir.path()).unwrap();
        assert!(aside.exists() && load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn an_older_or_newer_file_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE),
            r#"{"version":2,"alarms":[{"device":"d","rule":"r","alarm":{"state":"latched"},"x":1}],"later":true}"#,
        )
        .unwrap();
        let f = load(dir.path()).unwrap().unwrap();
        assert_eq!((f.version, f.next_seq, f.alarms.len()), (2, 0, 1));
        assert_eq!(f.alarms[0].alarm.state, State::Latched);
    }
}
