//! One task per physical link (a TCP endpoint or gateway, or a serial line): a serialized
//! transaction queue over the devices behind it. Different links poll concurrently.
//!
//! A unit that fails (timeout, gateway exception 0A/0B) backs off on its own, exponentially
//! with jitter and a cap, so it costs the others at most one timeout per backoff step; a link
//! that cannot connect backs off the same way, so there is never a reconnect storm.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::modbus::{Connection, ReadData, ReadError};
use crate::clock::Clock;
use crate::config::{Device, Endpoint, Tag};
use crate::core::decode::{decode_at, Image};
use crate::core::engine::SampleBatch;
use crate::core::model::{BadReason, Quality};
use crate::core::plan::{Planner, Probe, ReadBlock};
use crate::metrics::{inc, Metrics};

/// Bad re-probes of unmapped registers: a device may be reconfigured.
const FORGET_UNMAPPED_AFTER: Duration = Duration::from_secs(600);
const CONNECT_BACKOFF_START: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct LinkDevice {
    pub index: u32,
    pub name: String,
    pub unit: u8,
    pub poll: Duration,
    pub timeout: Duration,
    pub backoff_max: Duration,
    pub tags: Arc<[Tag]>,
    pub planner: Planner,
    next_due: Instant,
    failures: u32,
    learned_at: Option<Instant>,
}

impl LinkDevice {
    pub fn new(index: u32, d: &Device) -> LinkDevice {
        LinkDevice {
            index,
            name: d.name.clone(),
            unit: d.unit,
            poll: Duration::from_millis(d.poll_ms as u64),
            timeout: Duration::from_millis(d.timeout_ms as u64),
            backoff_max: Duration::from_millis(d.backoff_max_ms as u64),
            tags: d.tags.clone(),
            planner: super::read_plan::planner_for(d),
            next_due: Instant::now(),
            failures: 0,
            learned_at: None,
        }
    }
}

/// Small xorshift for jitter; no need for a crate.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }
    /// A factor in [0.8, 1.2).
    fn factor(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        0.8 + (self.0 % 10_000) as f64 / 25_000.0
    }
}

fn backoff(base: Duration, failures: u32, cap: Duration, j: &mut Jitter) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    exp.min(cap).mul_f64(j.factor())
}

/// Groups devices by link.
pub fn links(devices: &[Device]) -> Vec<(Endpoint, Vec<LinkDevice>)> {
    let mut out: Vec<(Endpoint, Vec<LinkDevice>)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let key = d.endpoint.link_key();
        match out.iter_mut().find(|(e, _)| e.link_key() == key) {
            Some((_, list)) => list.push(LinkDevice::new(i as u32, d)),
            None => out.push((d.endpoint.clone(), vec![LinkDevice::new(i as u32, d)])),
        }
    }
    out
}

/// A read still to do in this poll.
#[derive(Debug)]
enum Pending {
    Read(ReadBlock),
    Probe(Probe),
}

#[derive(Debug)]
pub struct Link {
    pub endpoint: Endpoint,
    pub devices: Vec<LinkDevice>,
    pub tx: mpsc::Sender<SampleBatch>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

enum PollOutcome {
    Ok,
    /// The unit did not answer (or the gateway says it cannot reach it).
    UnitFailed(BadReason),
    /// The connection is unusable; drop it.
    LinkFailed(BadReason),
}

impl Link {
    pub async fn run(mut self, cancel: CancellationToken) {
        let key = self.endpoint.link_key();
        let mut jitter = Jitter::new(
            crate::clock::wall_ms() as u64
                ^ (key.len() as u64) << 32
                ^ u64::from(self.devices.first().map(|d| d.index).unwrap_or(0)),
        );
        // Spread the first polls so that many links do not fire in lockstep.
        let start = Instant::now();
        for d in &mut self.devices {
            d.next_due = start + d.poll.mul_f64(jitter.factor() - 0.8);
        }
        let mut conn: Option<Connection> = None;
        let mut connect_failures: u32 = 0;
        let mut link_retry_at = start;
        loop {
            let Some(di) = (0..self.devices.len()).min_by_key(|&i| self.devices[i].next_due) else {
                return;
            };
            let due = self.devices[di].next_due.max(link_retry_at);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            if conn.is_none() {
                let timeout = self
                    .devices
                    .iter()
                    .map(|d| d.timeout)
                    .max()
                    .unwrap_or(Duration::from_secs(1))
                    .max(Duration::from_secs(1));
                match Connection::open(&self.endpoint, timeout).await {
                    Ok(c) => {
                        if connect_failures > 0 {
                            info!(link = %key, "link connected again");
                        } else {
                            debug!(link = %key, "link connected");
                        }
                        connect_failures = 0;
                        conn = Some(c);
                    }
                    Err(e) => {
                        connect_failures += 1;
                        let wait = backoff(
                            CONNECT_BACKOFF_START,
                            connect_failures,
                            self.max_backoff(),
                            &mut jitter,
                        );
                        // Log once per backoff step, not once per device or poll.
                        warn!(link = %key, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot connect");
                        link_retry_at = Instant::now() + wait;
                        let now_ms = self.clock.now();
                        for i in 0..self.devices.len() {
                            if self.devices[i].next_due <= Instant::now() {
                                self.report_all_bad(i, now_ms, BadReason::ConnectionLost)
                                    .await;
                                let m = &self.metrics.devices[self.devices[i].index as usize];
                                inc(&m.polls_failed);
                                m.up.store(false, std::sync::atomic::Ordering::Relaxed);
                                self.devices[i].next_due = link_retry_at
                                    .max(self.devices[i].next_due + self.devices[i].poll);
                            }
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let outcome = self.poll_device(c, di).await;
            let d = &mut self.devices[di];
            let m = &self.metrics.devices[d.index as usize];
            match outcome {
                PollOutcome::Ok => {
                    inc(&m.polls_ok);
                    if d.failures > 0 {
                        info!(device = %d.name, link = %key, "device answers again");
                    }
                    m.up.store(true, std::sync::atomic::Ordering::Relaxed);
                    d.failures = 0;
                    schedule_next(d, &self.metrics);
                }
                PollOutcome::UnitFailed(reason) | PollOutcome::LinkFailed(reason) => {
                    inc(&m.polls_failed);
                    m.up.store(false, std::sync::atomic::Ordering::Relaxed);
                    d.failures += 1;
                    let wait = backoff(d.poll, d.failures, d.backoff_max.max(d.poll), &mut jitter);
                    warn!(device = %d.name, link = %key, unit = d.unit, reason = %reason, retry_in_ms = wait.as_millis() as u64, "poll failed");
                    d.next_due = Instant::now() + wait;
                    if matches!(outcome, PollOutcome::LinkFailed(_)) {
                        conn = None;
                    }
                }
            }
        }
    }

    fn max_backoff(&self) -> Duration {
        self.devices
            .iter()
            .map(|d| d.backoff_max)
            .max()
            .unwrap_or(Duration::from_secs(10))
    }

    async fn report_all_bad(&mut self, di: usize, ts: i64, reason: BadReason) {
        let d = &self.devices[di];
        let values = (0..d.tags.len() as u16)
            .map(|t| (t, f64::NAN, Quality::Bad(reason)))
            .collect();
        self.send(SampleBatch {
            device: d.index,
            ts,
            values,
        });
    }

    fn send(&self, batch: SampleBatch) {
        // Pollers never wait for the engine: a stale batch is worth less than a fresh one.
        if self.tx.try_send(batch).is_err() {
            inc(&self.metrics.batches_dropped);
        }
    }

    async fn poll_device(&mut self, conn: &mut Connection, di: usize) -> PollOutcome {
        let d = &mut self.devices[di];
        if let Some(t) = d.learned_at {
            if t.elapsed() > FORGET_UNMAPPED_AFTER {
                d.planner.forget();
                d.learned_at = None;
            }
        }
        let mut values: Vec<Option<(f64, Quality)>> = vec![None; d.tags.len()];
        let mut queue: VecDeque<Pending> = d
            .planner
            .blocks()
            .iter()
            .cloned()
            .map(Pending::Read)
            .collect();
        let started = Instant::now();
        let mut outcome = PollOutcome::Ok;
        let mut reads: u32 = 0;
        let m = &self.metrics.devices[d.index as usize];
        while let Some(item) = queue.pop_front() {
            let (block, probe) = match item {
                Pending::Read(b) => (b, None),
                Pending::Probe(pr) => match d.planner.probe_read(&pr) {
                    Some(b) => (b, Some(pr)),
                    None => continue,
                },
            };
            reads += 1;
            let t0 = Instant::now();
            let result = conn
                .read(d.unit, block.table, block.start, block.count, d.timeout)
                .await;
            // A probe learns from success and from exception 02 alike.
            if let (Some(mut pr), Ok(_) | Err(ReadError::Exception(2))) = (probe, &result) {
                let ok = result.is_ok();
                match d.planner.probe_result(&mut pr, ok) {
                    Some(rest) => {
                        if let Some(nb) = d.planner.block_of(&rest) {
                            queue.push_front(Pending::Read(nb));
                        }
                    }
                    None => queue.push_front(Pending::Probe(pr)),
                }
                if !ok {
                    continue;
                }
            }
            match result {
                Ok(data) => {
                    m.rtt_us_last.store(
                        t0.elapsed().as_micros() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let image = match &data {
                        ReadData::Registers(words) => Image::Registers {
                            start: block.start,
                            words,
                        },
                        ReadData::Bits(bits) => Image::Bits {
                            start: block.start,
                            bits,
                        },
                    };
                    for &ti in &block.tags {
                        let tag = &d.tags[ti];
                        let r = decode_at(&tag.encoding, tag.address, image);
                        values[ti] = Some(match r {
                            Ok(v) => (v, Quality::Good),
                            Err(_) => {
                                inc(&m.decode_errors);
                                (f64::NAN, Quality::Bad(BadReason::Decode))
                            }
                        });
                    }
                }
                Err(ReadError::Exception(2)) => {
                    info!(device = %d.name, table = %block.table, address = block.start, count = block.count, "exception 02: part of this read is not served by the device; finding which");
                    d.learned_at.get_or_insert_with(Instant::now);
                    queue.push_front(Pending::Probe(d.planner.probe(&block)));
                }
                Err(ReadError::Exception(code)) => {
                    for &ti in &block.tags {
                        values[ti] = Some((f64::NAN, Quality::Bad(BadReason::Exception(code))));
                    }
                    // 0A/0B: the gateway cannot reach the unit; the rest of its reads would fail too.
                    if code == 0x0A || code == 0x0B {
                        outcome = PollOutcome::UnitFailed(BadReason::Exception(code));
                        break;
                    }
                }
                Err(e) => {
                    let reason = match &e {
                        ReadError::Timeout(_) => BadReason::Timeout,
                        ReadError::Transport(_) => BadReason::ConnectionLost,
                        _ => BadReason::Protocol,
                    };
                    debug!(device = %d.name, error = %e, "read failed; dropping the connection");
                    // Even when only this unit is silent the connection is dropped: a late
                    // reply would put it out of step for the next unit.
                    outcome = PollOutcome::LinkFailed(reason);
                    break;
                }
            }
            if reads > 4 * d.tags.len() as u32 + 8 {
                break;
            }
        }
        let unit_reason = match &outcome {
            PollOutcome::Ok => None,
            PollOutcome::UnitFailed(r) | PollOutcome::LinkFailed(r) => Some(*r),
        };
        m.rtt_us_sum.fetch_add(
            started.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let ts = self.clock.now();
        let mut batch = Vec::with_capacity(values.len());
        for (ti, v) in values.into_iter().enumerate() {
            let (v, q) = match v {
                Some(x) => x,
                None if d.planner.is_unmapped(ti) => {
                    (f64::NAN, Quality::Bad(BadReason::Exception(2)))
                }
                None => (
                    f64::NAN,
                    Quality::Bad(unit_reason.unwrap_or(BadReason::Protocol)),
                ),
            };
            batch.push((ti as u16, v, q));
        }
        m.samples
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let index = d.index;
        self.send(SampleBatch {
            device: index,
            ts,
            values: batch,
        });
        outcome
    }
}

fn schedule_next(d: &mut LinkDevice, metrics: &Metrics) {
    d.next_due += d.poll;
    let now = Instant::now();
    if d.next_due < now {
        // Fell behind: the slots that passed are counted as missed, and the next poll starts
        // at once rather than waiting for the next slot (at the fastest rates that wait would
        // halve the throughput).
        let behind = now - d.next_due;
        let missed = (behind.as_nanos() / d.poll.as_nanos().max(1)) as u64;
        if missed > 0 {
            metrics.devices[d.index as usize]
                .polls_missed
                .fetch_add(missed, std::sync::atomic::Ordering::Relaxed);
        }
        d.next_due = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut j = Jitter::new(42);
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        let b1 = backoff(base, 1, cap, &mut j);
        assert!(
            b1 >= Duration::from_millis(800) && b1 < Duration::from_millis(1200),
            "{b1:?}"
        );
        let b3 = backoff(base, 3, cap, &mut j);
        assert!(
            b3 >= Duration::from_millis(3200) && b3 < Duration::from_millis(4800),
            "{b3:?}"
        );
        for n in 5..40 {
            assert!(backoff(base, n, cap, &mut j) < Duration::from_secs(12));
        }
        let spread: std::collections::HashSet<u128> = (0..50)
            .map(|_| backoff(base, 8, cap, &mut j).as_millis())
            .collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
