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

/// The kill switches a command set in an earlier run (none when the file is absent or bad).
pub fn load_kill(state_dir: &Path) -> Kill {
    let Ok(text) = std::fs::read_to_string(state_dir.join(KILL_FILE)) else {
        return Kill::default();
    };
    let s: SavedKill = serde_json::from_str(&text).unwrap_or_default();
    Kill {
        all: s.all,
        areas: s.areas.into_iter().collect(),
    }
}

/// Saves the kill switches set by command (written to a temporary file, then renamed).
pub fn save_kill(state_dir: &Path, k: &Kill) -> std::io::Result<()> {
    let s = SavedKill {
        all: k.all,
        areas: k.areas.iter().cloned().collect(),
    };
    let tmp = state_dir.join(format!("{KILL_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&s).unwrap_or_default())?;
    std::fs::rename(&tmp, state_dir.join(KILL_FILE))
}
