//! One task per physical link (a TCP endpoint or gateway, or a serial line): a serialized
//! transaction queue over the devices behind it. Different links poll concurrently.
//!
//! A unit that fails (timeout, gateway exception 0A/0B) backs off on its own, exponentially
//! with jitter and a cap, so it costs the others at most one timeout per backoff step; a link
//! that cannot connect backs off the same way, so there is never a reconnect storm. Those
//! decisions are the link's [`PollSchedule`] (`schedule.rs`, pure, unit-tested with a virtual
//! clock); this task sleeps until its next step, connects and reads, and reports each outcome
//! to the schedule, to the device-health owner and as telemetry events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff;
use super::health::HealthTx;
use super::modbus::{Connection, ReadData, ReadError};
use super::schedule::{Change, PollSchedule, Step, UnitTiming};
use crate::clock::{self, Clock};
use crate::config::{Device, Endpoint, Tag};
use crate::core::action::{WriteData, WriteOrder, WriteResult};
use crate::core::decode::{decode_at, Image, Table};
use crate::core::engine::SampleBatch;
use crate::core::model::{BadReason, Quality};
use crate::core::plan::{Planner, Probe, ReadBlock};
use crate::metrics::Metrics;
use crate::telemetry::{
    emit, BatchDropped, DeviceDown, DeviceUp, LinkConnectFailed, LinkConnected, PollFinished,
    PollResult, PollsMissed, ReadFailed, UnmappedRegisters,
};

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
    /// Which tags the current poll has settled (kept between polls: no allocation per poll).
    read: Vec<bool>,
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
            read: Vec::with_capacity(d.tags.len()),
        }
    }

    fn timing(&self) -> UnitTiming {
        UnitTiming {
            poll: self.poll,
            backoff_max: self.backoff_max,
        }
    }
}

/// Groups devices by link, links in order of their first device.
pub fn links(devices: &[Device]) -> Vec<(Endpoint, Vec<LinkDevice>)> {
    let mut out: Vec<(Endpoint, Vec<LinkDevice>)> = Vec::new();
    // Link key → index in `out`: one lookup per device (400 cells on 400 ports).
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        let key = d.endpoint.link_key();
        match at.get(&key) {
            Some(&li) => out[li].1.push(LinkDevice::new(i as u32, d)),
            None => {
                at.insert(key, out.len());
                out.push((d.endpoint.clone(), vec![LinkDevice::new(i as u32, d)]));
            }
        }
    }
    out
}

/// Test-only fault injection, not for operators: the next poll of each named device panics
/// its link poller, once, so tests can watch the supervisor restart it. Nothing in the agent
/// calls it; an empty list costs one relaxed load per poll.
#[doc(hidden)]
pub fn inject_panic_once(device: &str) {
    if let Ok(mut names) = INJECTED.lock() {
        names.push(device.to_string());
        ARMED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

static ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static INJECTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn take_injected_panic(device: &str) -> bool {
    if !ARMED.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let Ok(mut names) = INJECTED.lock() else {
        return false;
    };
    match names.iter().position(|n| n == device) {
        Some(i) => {
            names.swap_remove(i);
            true
        }
        None => false,
    }
}

/// A write for one device (disposal, docs/DISPOSAL.md), with where its outcome goes.
#[derive(Debug)]
pub struct WriteJob {
    pub order: WriteOrder,
    pub reply: tokio::sync::oneshot::Sender<WriteResult>,
    /// Reads back done so far (0: not written yet).
    reads: u32,
}

impl WriteJob {
    pub fn new(order: WriteOrder, reply: tokio::sync::oneshot::Sender<WriteResult>) -> WriteJob {
        WriteJob {
            order,
            reply,
            reads: 0,
        }
    }
}

/// Where writes go: every running link poller registers the inbox of its devices here, so a
/// write joins that link's serialized transaction queue (between two reads, never inside
/// one). Restarted pollers register again; a dead one's inbox is closed and the write is
/// answered "link not running".
#[derive(Debug, Clone, Default)]
pub struct WriteRouter {
    inboxes: Arc<std::sync::Mutex<std::collections::HashMap<u32, mpsc::Sender<Box<WriteJob>>>>>,
}

impl WriteRouter {
    fn register(&self, devices: &[LinkDevice], tx: &mpsc::Sender<Box<WriteJob>>) {
        if let Ok(mut m) = self.inboxes.lock() {
            for d in devices {
                m.insert(d.index, tx.clone());
            }
        }
    }

    /// Hands `job` to the link of its device; gives it back when there is none or its inbox is
    /// full.
    pub fn send(&self, job: WriteJob) -> Result<(), (WriteJob, &'static str)> {
        let tx = self
            .inboxes
            .lock()
            .ok()
            .and_then(|m| m.get(&job.order.device).cloned());
        match tx {
            None => Err((job, "the device's link is not running")),
            Some(tx) => tx.try_send(Box::new(job)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(j) => (*j, "the link's write queue is full"),
                mpsc::error::TrySendError::Closed(j) => (*j, "the device's link is not running"),
            }),
        }
    }
}

/// Writes waiting on one link, at most.
const WRITE_QUEUE: usize = 16;

/// A read still to do in this poll, beyond the planned blocks not reached yet.
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
    /// Where this link reports which of its devices answer.
    pub health: HealthTx,
    /// Where this link takes writes from.
    pub writes: WriteRouter,
}

enum PollOutcome {
    Ok,
    /// The unit did not answer (or the gateway says it cannot reach it).
    UnitFailed(BadReason),
    /// The connection is unusable; drop it.
    LinkFailed(BadReason),
}

/// What one poll measured, for its [`PollFinished`] event.
struct PollReport {
    outcome: PollOutcome,
    /// When the poll ended, on the monotonic timeline.
    ended: clock::Mono,
    took: Duration,
    last_rtt: Option<Duration>,
    samples: usize,
    /// Values read with good quality.
    good: usize,
    decode_errors: usize,
}

impl Link {
    /// Runs the link's [`PollSchedule`]: sleeps until its next step, does it, and feeds the
    /// outcome back. All timing decisions are the schedule's.
    pub async fn run(mut self, cancel: CancellationToken) {
        let key = self.endpoint.link_key();
        let timings: Vec<UnitTiming> = self.devices.iter().map(LinkDevice::timing).collect();
        let seed = backoff::seed(&key, self.clock.now() as u64);
        let mut schedule = PollSchedule::new(&timings, seed, self.clock.mono());
        let mut conn: Option<Connection> = None;
        // Boxed: a channel allocates its slots up front (a block of 32), and writes are rare;
        // unboxed, the inboxes of 400 links held ~1 MB.
        let (write_tx, mut write_rx) = mpsc::channel::<Box<WriteJob>>(WRITE_QUEUE);
        self.writes.register(&self.devices, &write_tx);
        loop {
            let Some((at, step)) = schedule.next() else {
                return;
            };
            let mut now = self.clock.mono();
            let job = if now < at {
                if let Some(c) = conn.as_mut() {
                    c.idle_for(at.since(now));
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = clock::sleep_until(&*self.clock, at) => None,
                    Some(job) = write_rx.recv() => Some(job),
                }
            } else {
                // Due already (polling flat out, or late): no timer and no wait, but
                // cancellation and queued writes are still seen before the step.
                if cancel.is_cancelled() {
                    return;
                }
                write_rx.try_recv().ok()
            };
            if let Some(job) = job {
                self.write(&mut conn, *job, &write_tx).await;
                if conn.is_none() {
                    // Without this the schedule still says "poll" and every poll step
                    // found no connection: the link spun and never polled again.
                    schedule.disconnected();
                }
                continue;
            }
            if now < at {
                now = self.clock.mono();
                if now < at {
                    continue;
                }
            }
            match step {
                Step::Connect => {
                    let timeout = self
                        .devices
                        .iter()
                        .map(|d| d.timeout)
                        .max()
                        .unwrap_or(Duration::from_secs(1))
                        .max(Duration::from_secs(1));
                    match Connection::open(&self.endpoint, timeout).await {
                        Ok(c) => {
                            let again = schedule.connected();
                            emit(LinkConnected { link: &key, again });
                            conn = Some(c);
                        }
                        Err(e) => {
                            let failed = schedule.connect_failed(self.clock.mono());
                            emit(LinkConnectFailed {
                                link: &key,
                                error: &e,
                                retry_in: failed.retry_in,
                            });
                            let now_ms = self.clock.now();
                            for (i, change) in failed.due {
                                self.report_all_bad(i, now_ms, BadReason::ConnectionLost);
                                self.health.polled(self.devices[i].index);
                                let d = &self.devices[i];
                                if let Some(m) = self.metrics.device(d.index) {
                                    emit(PollFinished {
                                        device: m,
                                        link: &key,
                                        unit: d.unit,
                                        took: Duration::ZERO,
                                        last_rtt: None,
                                        samples: 0,
                                        decode_errors: 0,
                                        result: PollResult::LinkDown,
                                    });
                                }
                                self.changed(i, change, &key);
                            }
                            conn = None;
                        }
                    }
                }
                Step::Poll(di) => {
                    let Some(c) = conn.as_mut() else {
                        schedule.disconnected();
                        continue;
                    };
                    if schedule.forget_due(di, now) {
                        self.devices[di].planner.forget();
                    }
                    if take_injected_panic(&self.devices[di].name) {
                        panic!(
                            "injected by a test: link poller of {} dies",
                            self.devices[di].name
                        );
                    }
                    let report = self.poll_device(c, di, now, &mut schedule).await;
                    let now = report.ended;
                    let d = &self.devices[di];
                    // Answering only with exceptions is answering, for the schedule (no comm
                    // loss), but not "up": no value came back.
                    let answered_values = report.good > 0;
                    let (result, change, missed) = match report.outcome {
                        PollOutcome::Ok => {
                            let a = schedule.answered(di, now);
                            (PollResult::Ok, a.change, a.missed)
                        }
                        PollOutcome::UnitFailed(reason) | PollOutcome::LinkFailed(reason) => {
                            let broken = matches!(report.outcome, PollOutcome::LinkFailed(_));
                            let f = schedule.failed(di, now, broken);
                            if broken {
                                conn = None;
                            }
                            (
                                PollResult::Failed {
                                    reason,
                                    retry_in: f.retry_in,
                                },
                                f.change,
                                0,
                            )
                        }
                    };
                    let polled_ok = matches!(result, PollResult::Ok);
                    if let Some(m) = self.metrics.device(d.index) {
                        emit(PollFinished {
                            device: m,
                            link: &key,
                            unit: d.unit,
                            took: report.took,
                            last_rtt: report.last_rtt,
                            samples: report.samples,
                            decode_errors: report.decode_errors,
                            result,
                        });
                        if missed > 0 {
                            emit(PollsMissed { device: m, missed });
                        }
                    }
                    self.changed(di, change, &key);
                    if polled_ok {
                        self.health.set(self.devices[di].index, answered_values);
                    }
                    self.health.polled(self.devices[di].index);
                    // Counts against the task's cooperative budget, so a link that is always
                    // due still lets the other links and the engine run on a single worker
                    // (here, after the poll, so that a yield never counts as round-trip time).
                    tokio::task::consume_budget().await;
                }
            }
        }
    }

    /// One step of a write job: the write and its first read-back, or a later read-back. A
    /// read-back that differs is read again after the job's delay (queued again, so polls go
    /// on meanwhile) until its attempts are spent.
    async fn write(
        &self,
        conn: &mut Option<Connection>,
        mut job: WriteJob,
        again: &mpsc::Sender<Box<WriteJob>>,
    ) {
        let o = &job.order;
        let result = |written, read_back, attempts| WriteResult {
            id: o.id,
            written,
            read_back,
            attempts,
        };
        let Some(d) = self.devices.iter().find(|d| d.index == o.device) else {
            let r = result(Err("the device is not on this link".into()), None, 0);
            let _ = job.reply.send(r);
            return;
        };
        let Some(c) = conn.as_mut() else {
            let r = if job.reads == 0 {
                result(Err("the link is not connected".into()), None, 0)
            } else {
                result(
                    Ok(()),
                    Some(Err("the link is not connected".into())),
                    job.reads,
                )
            };
            let _ = job.reply.send(r);
            return;
        };
        if job.reads == 0 {
            if let Err(e) = c.write(d.unit, o.address, &o.data, d.timeout).await {
                if !matches!(e, ReadError::Exception(_)) {
                    *conn = None;
                }
                let _ = job.reply.send(result(Err(e.to_string()), None, 0));
                return;
            }
        }
        job.reads += 1;
        let Some(c) = conn.as_mut() else { return };
        let table = match o.data {
            WriteData::Coils(_) => Table::Coil,
            WriteData::Registers(_) => Table::Holding,
        };
        let read = match c
            .read(d.unit, table, o.address, o.data.len(), d.timeout)
            .await
        {
            Ok(ReadData::Registers(w)) => Ok(w.to_vec()),
            Ok(ReadData::Bits(b)) => Ok(b.iter().map(|&x| u16::from(x)).collect()),
            Err(e) => {
                if !matches!(e, ReadError::Exception(_)) {
                    *conn = None;
                }
                Err(e.to_string())
            }
        };
        let matched = read.as_ref().is_ok_and(|w| *w == o.data.raw());
        if matched || job.reads >= o.read_back.attempts.max(1) {
            let r = result(Ok(()), Some(read), job.reads);
            let _ = job.reply.send(r);
            return;
        }
        let delay = Duration::from_millis(o.read_back.delay_ms.max(0) as u64);
        let again = again.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = again.send(Box::new(job)).await {
                // The link stopped meanwhile: answer with what is known.
                let j = *e.0;
                let r = WriteResult {
                    id: j.order.id,
                    written: Ok(()),
                    read_back: Some(Err("the link stopped before the read-back".into())),
                    attempts: j.reads,
                };
                let _ = j.reply.send(r);
            }
        });
    }

    /// Tells operators and the health owner that device `i` started or stopped answering.
    fn changed(&self, i: usize, change: Option<Change>, link: &str) {
        let (Some(change), Some(d)) = (change, self.devices.get(i)) else {
            return;
        };
        // Up is set by the poll that brought values (see `run`): an answer of exceptions
        // only is not up.
        if matches!(change, Change::Down) {
            self.health.set(d.index, false);
        }
        let Some(m) = self.metrics.device(d.index) else {
            return;
        };
        match change {
            Change::Up { again } => emit(DeviceUp {
                device: m,
                link,
                again,
            }),
            Change::Down => emit(DeviceDown { device: m }),
        }
    }

    fn report_all_bad(&self, di: usize, ts: i64, reason: BadReason) {
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
        let device = batch.device;
        // Pollers never wait for the engine: a stale batch is worth less than a fresh one.
        if self.tx.try_send(batch).is_err() {
            let name = self.metrics.device(device).map_or("", |d| d.name.as_str());
            emit(BatchDropped {
                metrics: &self.metrics,
                device: name,
            });
        }
    }

    async fn poll_device(
        &mut self,
        conn: &mut Connection,
        di: usize,
        started: clock::Mono,
        schedule: &mut PollSchedule,
    ) -> PollReport {
        let clock = self.clock.clone();
        let d = &mut self.devices[di];
        // Filled in place and sent as is: every tag starts as not read, and `read` says which
        // ones a reply (or an exception) settled.
        let mut values: Vec<(u16, f64, Quality)> = (0..d.tags.len() as u16)
            .map(|ti| (ti, f64::NAN, Quality::Bad(BadReason::Protocol)))
            .collect();
        let read = &mut d.read;
        read.clear();
        read.resize(values.len(), false);
        // The planned blocks are read in place (no copy per poll); `queue` holds what comes
        // first: probes and the blocks they yield. The plan changes only through a probe, so
        // the first exception 02 moves the planned blocks not read yet into `queue`.
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let planned = d.planner.blocks().len();
        let mut next_planned = 0;
        // The clock is read once per read, at its start (the first starts with the poll), and
        // once at the poll's end: a read ends when the next one starts or the poll ends, so a
        // round trip includes decoding its block (microseconds, below the smallest bucket of
        // the histogram).
        let mut outcome = PollOutcome::Ok;
        let mut reads: u32 = 0;
        let mut last_rtt = None;
        // The start of the read that answered last, until its end is known.
        let mut answered_at: Option<clock::Mono> = None;
        let mut decode_errors = 0;
        loop {
            let (owned, probe) = match queue.pop_front() {
                Some(Pending::Read(b)) => (Some(b), None),
                Some(Pending::Probe(pr)) => match d.planner.probe_read(&pr) {
                    Some(b) => (Some(b), Some(pr)),
                    None => continue,
                },
                None if next_planned < planned => {
                    next_planned += 1;
                    (None, None)
                }
                None => break,
            };
            let (table, start, count) = {
                let b = match &owned {
                    Some(b) => b,
                    None => &d.planner.blocks()[next_planned - 1],
                };
                (b.table, b.start, b.count)
            };
            let t0 = if reads == 0 { started } else { clock.mono() };
            if let Some(at) = answered_at.take() {
                last_rtt = Some(t0.since(at));
            }
            reads += 1;
            let result = conn.read(d.unit, table, start, count, d.timeout).await;
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
            let block = match &owned {
                Some(b) => b,
                None => &d.planner.blocks()[next_planned - 1],
            };
            match result {
                Ok(data) => {
                    answered_at = Some(t0);
                    let image = match data {
                        ReadData::Registers(words) => Image::Registers { start, words },
                        ReadData::Bits(bits) => Image::Bits { start, bits },
                    };
                    for &ti in &block.tags {
                        let tag = &d.tags[ti];
                        let r = decode_at(&tag.encoding, tag.address, image);
                        let slot = &mut values[ti];
                        (slot.1, slot.2) = match r {
                            Ok(v) => (v, Quality::Good),
                            Err(_) => {
                                decode_errors += 1;
                                (f64::NAN, Quality::Bad(BadReason::Decode))
                            }
                        };
                        read[ti] = true;
                    }
                }
                Err(ReadError::Exception(2)) => {
                    emit(UnmappedRegisters {
                        device: &d.name,
                        table: &block.table,
                        address: block.start,
                        count: block.count,
                    });
                    schedule.learned(di, t0);
                    let probe = Pending::Probe(d.planner.probe(block));
                    let rest = d.planner.blocks().get(next_planned..).unwrap_or_default();
                    queue.extend(rest.iter().cloned().map(Pending::Read));
                    next_planned = planned;
                    queue.push_front(probe);
                }
                Err(ReadError::Exception(code)) => {
                    for &ti in &block.tags {
                        // NaN too: a probe's earlier read may have settled this tag with a value.
                        (values[ti].1, values[ti].2) =
                            (f64::NAN, Quality::Bad(BadReason::Exception(code)));
                        read[ti] = true;
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
                    emit(ReadFailed {
                        device: &d.name,
                        error: &e,
                    });
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
        // One reading for the poll's end: its duration and its samples' timestamp.
        let (ended, ts) = clock.stamp();
        let took = ended.since(started);
        if let Some(at) = answered_at {
            last_rtt = Some(ended.since(at));
        }
        let mut good = 0;
        for (ti, slot) in values.iter_mut().enumerate() {
            if read[ti] {
                good += usize::from(slot.2.is_good());
            } else if d.planner.is_unmapped(ti) {
                slot.2 = Quality::Bad(BadReason::Exception(2));
            } else if let Some(r) = unit_reason {
                slot.2 = Quality::Bad(r);
            }
        }
        let samples = values.len();
        let index = d.index;
        self.send(SampleBatch {
            device: index,
            ts,
            values,
        });
        PollReport {
            outcome,
            ended,
            took,
            last_rtt,
            samples,
            good,
            decode_errors,
        }
    }
}
