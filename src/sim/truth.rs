//! Ground truth: every injected fault and every disturbance (scripted, scheduled, or a beam move
//! the cell controller made) as JSON lines (a `start` line and an `end` line).

use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::plant::{Phase, Transition};
use super::scenario::Scenario;

/// One ground-truth line. Times are simulated time mapped onto the wall clock at start:
/// `epoch_ms + tick × tick_ms` (equal to wall time at `--speed 1`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TruthEvent {
    pub phase: &'static str,
    pub fault_id: usize,
    pub device: String,
    pub kind: &'static str,
    /// `process`, `operation` (tapping, anode change, beam move), `sensor` or `comm`.
    pub class: &'static str,
    /// Anode effects: `slow`, `fast` or `none` (what precedes the voltage jump).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precursor: Option<&'static str>,
    pub start: String,
    pub end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onset: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onset_ms: Option<i64>,
    pub params: serde_json::Value,
}

pub use crate::core::time::rfc3339_ms;

/// Collects ground truth in memory and, if asked, appends it to a file.
#[derive(Debug, Clone)]
pub struct Truth {
    events: Arc<Mutex<Vec<TruthEvent>>>,
    file: Option<Arc<Mutex<LineWriter<File>>>>,
    epoch_ms: i64,
    tick_ms: i64,
}

impl Truth {
    pub fn new(path: Option<&Path>, epoch_ms: i64, tick: Duration) -> std::io::Result<Truth> {
        let file = match path {
            Some(p) => Some(Arc::new(Mutex::new(LineWriter::new(File::create(p)?)))),
            None => None,
        };
        Ok(Truth {
            events: Arc::new(Mutex::new(Vec::new())),
            file,
            epoch_ms,
            tick_ms: tick.as_millis() as i64,
        })
    }

    pub fn ms_at(&self, tick: u64) -> i64 {
        self.epoch_ms + tick as i64 * self.tick_ms
    }

    pub fn record(&self, scenario: &Scenario, transitions: &[Transition]) {
        if transitions.is_empty() {
            return;
        }
        let mut lines = Vec::with_capacity(transitions.len());
        for tr in transitions {
            let f = &tr.spec;
            let Some(d) = scenario.devices.get(tr.device) else {
                continue;
            };
            let start_ms = self.ms_at(f.start_tick);
            let end_ms = self.ms_at(f.end_tick);
            let onset_ms = f.onset_tick.map(|t| self.ms_at(t));
            lines.push(TruthEvent {
                phase: match tr.phase {
                    Phase::Start => "start",
                    Phase::End => "end",
                },
                fault_id: f.id,
                device: d.name.clone(),
                kind: f.kind.name(),
                class: f.kind.class(),
                precursor: f.kind.precursor(),
                start: rfc3339_ms(start_ms),
                end: rfc3339_ms(end_ms),
                onset: onset_ms.map(rfc3339_ms),
                start_ms,
                end_ms,
                onset_ms,
                params: f.params.clone(),
            });
        }
        if let Some(file) = &self.file {
            if let Ok(mut w) = file.lock() {
                for e in &lines {
                    if let Ok(s) = serde_json::to_string(e) {
                        if let Err(err) = writeln!(w, "{s}") {
                            tracing::warn!("cannot write ground truth: {err}");
                        }
                    }
                }
            }
        }
        if let Ok(mut ev) = self.events.lock() {
            ev.extend(lines);
        }
    }

    pub fn events(&self) -> Vec<TruthEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}
