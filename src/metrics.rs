//! Counters shared by the tasks and read by the HTTP endpoint. Plain atomics: each counter has
//! one writer task, readers only take snapshots.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct DeviceMetrics {
    pub name: String,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// Polls that were due but skipped because the link fell behind or the unit was backing off.
    pub polls_missed: AtomicU64,
    pub rtt_us_sum: AtomicU64,
    pub rtt_us_last: AtomicU64,
    pub samples: AtomicU64,
    pub decode_errors: AtomicU64,
    pub up: AtomicBool,
}

#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub name: String,
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub bytes: AtomicU64,
    pub outbox_depth: AtomicU64,
    pub outbox_bytes: AtomicU64,
    pub dropped: AtomicU64,
    /// Appends the outbox refused with an I/O error (disk full, unwritable).
    pub outbox_write_errors: AtomicU64,
    pub puback_latency_us_sum: AtomicU64,
    pub puback_latency_us_last: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub devices: Vec<DeviceMetrics>,
    pub sinks: Vec<SinkMetrics>,
    /// Sample batches dropped because the engine fell behind.
    pub batches_dropped: AtomicU64,
    pub alarm_transitions: AtomicU64,
    pub started_ms: AtomicI64,
}

impl Metrics {
    pub fn new(
        devices: impl IntoIterator<Item = String>,
        sinks: impl IntoIterator<Item = String>,
    ) -> Arc<Metrics> {
        Arc::new(Metrics {
            devices: devices
                .into_iter()
                .map(|name| DeviceMetrics {
                    name,
                    ..Default::default()
                })
                .collect(),
            sinks: sinks
                .into_iter()
                .map(|name| SinkMetrics {
                    name,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub fn device(&self, i: u32) -> Option<&DeviceMetrics> {
        self.devices.get(i as usize)
    }

    pub fn devices_up(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.up.load(Ordering::Relaxed))
            .count()
    }
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
