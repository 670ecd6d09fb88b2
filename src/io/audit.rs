//! The local audit file of disposal, `state_dir/audit.jsonl`: one JSON line per audit event
//! (schemas/audit.schema.json), appended and synced before the event is published, so the
//! plant keeps its own record even when no broker is reachable. Also the kill switches set
//! by command, `state_dir/kill.json`, so that a restart does not quietly release them.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::action::Kill;

pub const AUDIT_FILE: &str = "audit.jsonl";
const KILL_FILE: &str = "kill.json";

#[derive(Debug)]
pub struct AuditFile {
    path: PathBuf,
}

impl AuditFile {
    pub fn new(state_dir: &Path) -> AuditFile {
        AuditFile {
            path: state_dir.join(AUDIT_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it.
    pub fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// The last `n` lines (the operator station's list).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// The proposals of `lines` (audit events, oldest first) still waiting at `now` (RFC 3339, as
/// the events spell it): proposed in `confirm` mode, not yet confirmed, expired or refused.
pub fn waiting(lines: &[serde_json::Value], now: &str) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = Vec::new();
    for l in lines {
        let id = &l["id"];
        match l["event"].as_str() {
            Some("proposed") if l["mode"] == "confirm" => out.push(serde_json::json!({
                "id": id,
                "action": l["action"],
                "device": l["device"],
                "target": l["target"],
                "value": l["value"],
                "expires": l["expires"],
            })),
            Some(_) if !id.is_null() => out.retain(|p| &p["id"] != id),
            _ => {}
        }
    }
    // Timestamps of one format compare as text.
    out.retain(|p| p["expires"].as_str().is_some_and(|e| e > now));
    out
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SavedKill {
    all: bool,
    areas: Vec<String>,
}

/// The kill switches a command set in an earlier run: none when there is no file; every action
/// killed when the file cannot be read or is damaged (the switches it held are unknown, and a
/// kill switch fails closed; `release_kill` releases it).
pub fn load_kill(state_dir: &Path) -> Kill {
    let path = state_dir.join(KILL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Kill::default(),
        Err(e) => return killed_because(&path, &e.to_string()),
    };
    match serde_json::from_str::<SavedKill>(&text) {
        Ok(s) => Kill {
            all: s.all,
            areas: s.areas.into_iter().collect(),
        },
        Err(e) => killed_because(&path, &e.to_string()),
    }
}

fn killed_because(path: &Path, why: &str) -> Kill {
    tracing::warn!(
        "kill switch file {} unreadable ({why}): every action stays killed until release_kill",
        path.display()
    );
    Kill {
        all: true,
        ..Kill::default()
    }
}

/// Saves the kill switches set by command, atomically and durably: a kill switch that a power
/// loss could undo would let actions write again after the restart.
pub fn save_kill(state_dir: &Path, k: &Kill) -> std::io::Result<()> {
    let s = SavedKill {
        all: k.all,
        areas: k.areas.iter().cloned().collect(),
    };
    let bytes = serde_json::to_vec(&s).map_err(std::io::Error::other)?;
    Ok(crate::io::durable::replace(
        &state_dir.join(KILL_FILE),
        &bytes,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_switches_survive_a_save_and_a_damaged_file_keeps_every_action_killed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!load_kill(dir.path()).all, "no file: nothing killed");
        let mut k = Kill::default();
        k.areas.insert("potline-2".into());
        save_kill(dir.path(), &k).unwrap();
        let back = load_kill(dir.path());
        assert!(!back.all && back.areas.contains("potline-2"));
        std::fs::write(dir.path().join(KILL_FILE), b"{\"all\": fal").unwrap();
        assert!(load_kill(dir.path()).all, "a damaged file fails closed");
    }
}
