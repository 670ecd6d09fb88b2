//! The event history for shift handover: alarm transitions and operator commands, newest
//! kept, bounded, and kept across restarts in `state_dir/history.jsonl`.
//!
//! The engine task records into it; a thread of its own appends to the file, so the engine
//! never waits on the disk (when the thread falls behind, lines are dropped from the file,
//! never from memory). The file is compacted to the newest [`KEEP`] entries at start.

use std::collections::VecDeque;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use serde::{Deserialize, Serialize};

use crate::core::engine::AlarmEvent;
use crate::core::model::Ts;

/// Entries kept: about three 8-hour shifts of a busy potline.
pub const KEEP: usize = 5_000;
const FILE: &str = "history.jsonl";

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub ts: Ts,
    /// `transition` or `command`.
    pub kind: String,
    pub device: String,
    pub rule: String,
    #[serde(default)]
    pub priority: String,
    #[serde(default)]
    pub from: String,
    /// The new state (transition) or the command (`ack`, `shelve` ...).
    pub to: String,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub value: Option<f64>,
}

impl Entry {
    pub fn transition(ev: &AlarmEvent) -> Entry {
        Entry {
            ts: ev.transition.at,
            kind: "transition".into(),
            device: ev.device.to_string(),
            rule: ev.rule.to_string(),
            priority: ev.priority.as_str().into(),
            from: ev.transition.from.into(),
            to: ev.transition.to.into(),
            by: ev.transition.by.clone(),
            note: ev.transition.note.clone(),
            message: ev.message.clone(),
            value: ev.value.filter(|v| v.is_finite()),
        }
    }

    /// A command and its outcome (`message` holds the refusal, if any).
    pub fn command(reply: &crate::core::command::Reply, by: Option<&str>, now: Ts) -> Entry {
        Entry {
            ts: now,
            kind: "command".into(),
            device: reply.device.clone().unwrap_or_default(),
            rule: reply.rule.clone().unwrap_or_default(),
            priority: String::new(),
            from: String::new(),
            to: reply.op.clone().unwrap_or_default(),
            by: by.map(str::to_string),
            note: None,
            message: match &reply.error {
                Some(e) => format!("refused: {e}"),
                None => "ok".into(),
            },
            value: None,
        }
    }

    fn matches(&self, q: &str) -> bool {
        if q.is_empty() {
            return true;
        }
        let q = q.to_lowercase();
        [
            &self.device,
            &self.rule,
            &self.priority,
            &self.to,
            &self.kind,
            &self.message,
        ]
        .iter()
        .any(|f| f.to_lowercase().contains(&q))
            || self
                .by
                .as_deref()
                .is_some_and(|b| b.to_lowercase().contains(&q))
    }
}

/// The history: in memory for the page, appended to the file by its own thread.
#[derive(Debug)]
pub struct History {
    entries: Mutex<VecDeque<Entry>>,
    writer: Option<mpsc::SyncSender<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The lines handed to the writer reach the file before the history is gone (a restart reads
/// them back).
impl Drop for History {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl History {
    /// Reads what the last runs left in `dir` (unreadable lines are skipped) and starts the
    /// writer. Without a usable directory the history is kept in memory only.
    pub fn open(dir: &Path) -> History {
        let path = dir.join(FILE);
        let mut entries: VecDeque<Entry> = VecDeque::new();
        if let Ok(f) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                    if entries.len() == KEEP {
                        entries.pop_front();
                    }
                    entries.push_back(e);
                }
            }
        }
        let (writer, thread) = match compact(&path, &entries)
            .and_then(|()| start_writer(path.clone()))
        {
            Ok((w, t)) => (Some(w), Some(t)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the event history is kept in memory only");
                (None, None)
            }
        };
        History {
            entries: Mutex::new(entries),
            writer,
            thread,
        }
    }

    pub fn record(&self, e: Entry) {
        if let (Some(w), Ok(line)) = (&self.writer, serde_json::to_string(&e)) {
            let _ = w.try_send(line);
        }
        if let Ok(mut l) = self.entries.lock() {
            if l.len() == KEEP {
                l.pop_front();
            }
            l.push_back(e);
        }
    }

    /// Entries matching `q` (any field, case-insensitive), newest first.
    pub fn list(&self, q: &str) -> Vec<Entry> {
        self.entries
            .lock()
            .map(|l| l.iter().rev().filter(|e| e.matches(q)).cloned().collect())
            .unwrap_or_default()
    }
}

/// When alarms of `device` were active since `from`, from the transitions (`entries` newest
/// first, as [`History::list`] gives them). An alarm still active has an open span (`to` null).
pub fn spans(entries: &[Entry], device: &str, from: Ts) -> Vec<serde_json::Value> {
    let active = |s: &str| s.starts_with("active");
    let mut open: std::collections::BTreeMap<&str, (Ts, &str)> = Default::default();
    let mut out = Vec::new();
    for e in entries.iter().rev() {
        if e.kind != "transition" || e.device != device {
            continue;
        }
        match (active(&e.from), active(&e.to)) {
            (false, true) => {
                open.insert(&e.rule, (e.ts, &e.priority));
            }
            (true, false) => {
                if let Some((start, prio)) = open.remove(e.rule.as_str()) {
                    if e.ts >= from {
                        out.push(serde_json::json!({ "rule": e.rule, "priority": prio, "from": start.max(from), "to": e.ts }));
                    }
                }
            }
            _ => {}
        }
    }
    for (rule, (start, prio)) in open {
        out.push(serde_json::json!({ "rule": rule, "priority": prio, "from": start.max(from), "to": serde_json::Value::Null }));
    }
    out
}

fn compact(path: &Path, entries: &VecDeque<Entry>) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("jsonl.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for e in entries {
        if let Ok(line) = serde_json::to_string(e) {
            writeln!(f, "{line}")?;
        }
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

type Writer = (mpsc::SyncSender<String>, std::thread::JoinHandle<()>);

fn start_writer(path: PathBuf) -> std::io::Result<Writer> {
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let t = std::thread::Builder::new()
        .name("history".into())
        .spawn(move || {
            // Ends when the sender (the History) is dropped.
            while let Ok(line) = rx.recv() {
                if writeln!(f, "{line}").is_err() {
                    break;
                }
            }
        })?;
    Ok((tx, t))
}

/// CSV for a spreadsheet: times in the plant's time zone (`[agent] timezone`).
pub fn to_csv(entries: &[Entry], timezone: &str) -> String {
    let tz = jiff::tz::TimeZone::get(timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let mut out = String::from("time,kind,device,rule,priority,from,to,by,note,message,value\n");
    for e in entries {
        let time = jiff::Timestamp::from_millisecond(e.ts)
            .map(|t| {
                t.to_zoned(tz.clone())
                    .strftime("%Y-%m-%d %H:%M:%S%:z")
                    .to_string()
            })
            .unwrap_or_default();
        let fields = [
            time,
            e.kind.clone(),
            e.device.clone(),
            e.rule.clone(),
            e.priority.clone(),
            e.from.clone(),
            e.to.clone(),
            e.by.clone().unwrap_or_default(),
            e.note.clone().unwrap_or_default(),
            e.message.clone(),
            e.value.map(|v| v.to_string()).unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Quotes when needed; a leading `=`, `+`, `-` or `@` is defused so a spreadsheet does not
/// run it as a formula.
fn csv_field(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '@']) || (f.starts_with('-') && f.parse::<f64>().is_err()) {
        format!("'{f}")
    } else {
        f.to_string()
    };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: Ts, device: &str) -> Entry {
        Entry {
            ts,
            kind: "transition".into(),
            device: device.into(),
            rule: "ae".into(),
            priority: "critical".into(),
            from: "normal".into(),
            to: "active_unacked".into(),
            by: None,
            note: None,
            message: "anode effect, 31.5 V".into(),
            value: Some(31.5),
        }
    }

    #[test]
    fn history_survives_a_restart_newest_first_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path());
        h.record(entry(1, "pot-1"));
        h.record(entry(2, "pot-2"));
        drop(h);
        let again = History::open(dir.path());
        let l = again.list("");
        assert_eq!(l.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(again.list("POT-1").len(), 1);
        assert_eq!(again.list("nothing").len(), 0);
    }

    #[test]
    fn csv_uses_the_plant_time_zone_and_quotes() {
        let mut e = entry(1_767_225_600_000, "pot,1");
        e.note = Some("=cmd()".into());
        let csv = to_csv(&[e], "Asia/Shanghai");
        let line = csv.lines().nth(1).unwrap();
        assert!(
            line.starts_with("2026-01-01 08:00:00+08:00,transition,\"pot,1\",ae,"),
            "{line}"
        );
        assert!(line.contains(",'=cmd(),"), "{line}");
    }
}
