//! The engine task: the only producer of what the agent publishes, command replies included.
//!
//! It owns the rule engine through the one [`Driver`] (the same batching, tick grid and decoding
//! as `replay` and `evaluate`), the event sequence and the raw-data filter. It applies the
//! pollers' batches on arrival, ticks on the wall clock's grid, runs operator commands and
//! answers them. A `reload` command is applied by the supervisor, which hands the outcome back
//! here for the reply. Every message is spelled once per sink identity ([`Identities`]) and the
//! sinks that publish under that identity share it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::{Clock, Mono};
use crate::config::{Config, DataMode, DataOptions, SummaryOptions};
use crate::core::command::{self, RecentReplies, Reply, Request};
use crate::core::driver::{Cadence, Driver, TICK_MS};
use crate::core::engine::{AlarmEvent, Engine, SampleBatch};
use crate::core::model::Ts;
use crate::core::outbound::{Class, Identities, Message, Outbound};
use crate::core::payload::{DataFilter, DataTag, DataTags, Identity};
use crate::io::http::AlarmSnapshot;
use crate::io::inbound::{CommandOrigin, InboundCommand};
use crate::io::record::Recorder;
use crate::io::report::ReportInput;
use crate::io::seq::SeqLease;
use crate::metrics::Metrics;
use crate::telemetry::{emit, AlarmPublished, SeqLeaseNotPersisted};

use super::disposal::{Disposal, Done};
use super::restore::{Keeper, Restore};

/// Hands a copy to the daily report, waiting while its queue is full (it loses nothing).
async fn to_report(
    report: &Option<mpsc::Sender<ReportInput>>,
    input: impl FnOnce() -> ReportInput,
) {
    if let Some(r) = report {
        let _ = r.send(input()).await;
    }
}

/// Poll batches applied per turn of the loop at most, when they are already queued.
const BATCH_BURST: usize = 64;

/// Commands applied before one save of the alarm state (group commit).
const COMMAND_BATCH: usize = 256;
/// Summaries handed to the sinks before the engine waits for them to be taken
/// ([`Outlets::wait_drained`]).
const SUMMARY_SLICE: usize = 32;

/// A command answered later (a reload, once the supervisor has applied it): where the reply
/// goes and what it echoes.
#[derive(Debug)]
pub struct PendingReply {
    pub to: CommandOrigin,
    pub request_id: Option<String>,
    pub op: String,
}

/// Where the outcome of a reload goes.
#[derive(Debug)]
pub enum ReloadOrigin {
    /// The `reload` command: the supervisor hands the outcome to the engine task, which replies.
    Command(PendingReply),
    /// SIGHUP or [`super::Running::reload`]: the caller waits for the outcome.
    Caller(oneshot::Sender<Result<String, String>>),
}

/// Asks the supervisor to re-read the configuration file.
#[derive(Debug)]
pub struct ReloadRequest {
    pub origin: ReloadOrigin,
}

/// What the supervisor tells the engine task.
#[derive(Debug)]
pub enum Control {
    /// Build an engine for this configuration and swap it in, carrying the state over.
    Swap(Box<Config>, oneshot::Sender<Result<(), String>>),
    /// A reload asked for by a command has finished: reply to it.
    Reloaded {
        to: PendingReply,
        result: Result<String, String>,
    },
}

/// The sinks' inboxes, and the identity each publishes under.
#[derive(Debug)]
pub struct Outlets {
    identities: Identities,
    sinks: Vec<mpsc::Sender<Arc<Message>>>,
    /// Per sink: raw data in the compact form (`data_payload = "compact"`), else the full one.
    compact: Vec<bool>,
}

impl Outlets {
    /// `sinks[i]` is the inbox of `cfg.sinks[i]`.
    pub fn new(cfg: &Config, sinks: Vec<mpsc::Sender<Arc<Message>>>) -> Outlets {
        let who: Vec<Identity> = cfg.sinks.iter().map(|s| identity(cfg, s)).collect();
        Outlets {
            identities: Identities::new(&who),
            sinks,
            compact: cfg
                .sinks
                .iter()
                .map(super::compact::takes_compact)
                .collect(),
        }
    }

    /// Whether some sink takes raw data in the full form (else it is not written at all).
    fn wants_full_data(&self) -> bool {
        self.compact.iter().any(|c| !c)
    }

    /// Hands `msg` to every sink, waiting while a sink's inbox is full: the sink stores at
    /// disk speed, and waiting is the backpressure. Returns how many sinks have stopped.
    async fn publish(&self, msg: Outbound) -> usize {
        let mut stopped = 0;
        // Raw data goes in one form per sink: the full one or the compact one with its meta.
        let form = msg.compact_form();
        for (sinks, m) in self.identities.spell_all(msg) {
            for &i in sinks {
                if form.is_some_and(|c| self.compact.get(i) != Some(&c)) {
                    continue;
                }
                if let Some(tx) = self.sinks.get(i) {
                    if tx.send(m.clone()).await.is_err() {
                        stopped += 1;
                    }
                }
            }
        }
        stopped
    }

    /// Waits until at most `queued` messages wait in each sink's inbox. A bulk round (one
    /// summary per device) goes out in slices this way: dropped into the inbox at once, the
    /// messages of 400 cells (~2 KB each) lived side by side and left 1.9 MiB of heap the
    /// allocator kept (issue 22).
    async fn wait_drained(&self, queued: usize) {
        for tx in &self.sinks {
            let room = tx.max_capacity().saturating_sub(queued).max(1);
            // The permits go back at once: this only waits for the sink to catch up.
            let _ = tx.reserve_many(room).await;
        }
    }

    /// A message for one sink only, as it stands (a retained topic to clear).
    async fn send_to(&self, sink: usize, m: Message) {
        if let Some(tx) = self.sinks.get(sink) {
            let _ = tx.send(Arc::new(m)).await;
        }
    }

    /// Replies go to the sink the command came from.
    async fn reply(&self, sink: usize, reply: Reply) {
        if let (Some(tx), Some(m)) = (
            self.sinks.get(sink),
            self.identities.spell_for(sink, Outbound::Reply(reply)),
        ) {
            let _ = tx.send(m).await;
        }
    }
}

/// Who publishes for `sink`: the parts of its topics that do not change.
pub fn identity(cfg: &Config, sink: &crate::config::MqttSink) -> Identity {
    Identity {
        topic_root: sink.topic_root.clone(),
        agent: cfg.agent.id.clone(),
        site: cfg.agent.site.clone(),
        area: cfg.agent.area.clone(),
    }
}

/// Handles the engine task shares with the rest of the agent.
#[derive(Debug)]
pub struct Shared {
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The alarms operators see, for the HTTP endpoint.
    pub alarms: watch::Sender<AlarmSnapshot>,
    /// Copies of the batches for `[record]`.
    pub recorder: Option<Recorder>,
    /// To the supervisor, which applies reloads.
    pub reloads: mpsc::Sender<ReloadRequest>,
    /// The operator station's event history (transitions and commands), when it is served.
    pub history: Option<Arc<crate::io::web::history::History>>,
    /// Where each turn of the loop is marked, for `/healthz`.
    pub pulse: Arc<crate::io::health::Pulse>,
    /// Copies of the batches and transitions for the daily report (`io/report.rs`).
    pub report: Option<mpsc::Sender<ReportInput>>,
}

/// What the engine task reads.
#[derive(Debug)]
pub struct Inputs {
    pub batches: mpsc::Receiver<SampleBatch>,
    pub commands: mpsc::Receiver<InboundCommand>,
    pub control: mpsc::Receiver<Control>,
    /// The operator station's device views (closed when it is not served).
    pub queries: mpsc::Receiver<crate::io::web::DeviceQuery>,
}

#[derive(Debug)]
pub struct EngineTask {
    driver: Driver,
    seq: SeqLease,
    outlets: Outlets,
    shared: Shared,
    summary: SummaryOptions,
    data: DataOptions,
    data_filter: DataFilter,
    /// The compact data form, when a sink takes it (`super::compact`).
    compact: Option<crate::core::compact::CompactData>,
    agent: String,
    /// Per device: name and (tag, unit) names, for raw data payloads.
    names: Vec<DataTags>,
    /// READY=1 after the first poll cycle, WATCHDOG=1 while this loop turns (issue 15).
    systemd: crate::io::notify::Systemd,
    /// The alarm state file.
    keeper: Keeper,
    /// Per sink: retained alarm topics to clear at start (their instance is gone).
    clears: Vec<Vec<String>>,
    /// Replies by `request_id`, so that a command sent twice runs once.
    recent: RecentReplies,
    /// The actions on rules (docs/DISPOSAL.md).
    disposal: Disposal,
    /// What commands of this batch asked disposal to publish.
    disposal_done: Done,
}

impl EngineTask {
    /// `engine` is built from `cfg`.
    pub fn new(
        cfg: &Config,
        engine: Engine,
        seq: SeqLease,
        outlets: Outlets,
        shared: Shared,
    ) -> EngineTask {
        let systemd = crate::io::notify::Systemd::from_env(cfg.devices.len(), shared.clock.mono());
        let disposal = Disposal::new(cfg, shared.clock.now());
        EngineTask {
            driver: Driver::new(engine, Cadence::default()),
            seq,
            outlets,
            shared,
            summary: cfg.summary.clone(),
            data: cfg.data.clone(),
            data_filter: DataFilter::default(),
            compact: super::compact::build(cfg),
            agent: cfg.agent.id.clone(),
            names: data_names(cfg),
            systemd,
            keeper: Keeper::new(cfg),
            clears: Vec::new(),
            recent: RecentReplies::default(),
            disposal,
            disposal_done: Done::default(),
        }
    }

    /// Where action writes reach the link pollers (without it every write fails as "link not
    /// running").
    pub fn with_writes(mut self, writes: crate::io::poller::WriteRouter) -> EngineTask {
        self.disposal = self.disposal.with_writes(writes);
        self
    }

    /// Publishes what disposal produced: audit events, then the failure alarms they caused.
    async fn deliver(&mut self, done: Done) {
        for o in done.publish {
            if self.outlets.publish(o).await > 0 {
                error!("a sink stopped; audit event not queued for it");
            }
        }
        if !done.alarms.is_empty() {
            self.send_snapshot(self.shared.clock.now());
        }
        for e in done.alarms {
            self.publish_alarm(e).await;
        }
    }

    /// What was restored into the engine at start (`super::restore::restore`): the task
    /// republishes it and clears the retained topics of vanished instances when it starts.
    pub fn restored(mut self, r: &Restore) -> EngineTask {
        self.keeper.restored(r);
        self.clears = r.clears.clone();
        self
    }

    /// Before the first poll: the broker gets the same picture as the agent (vanished alarm
    /// topics cleared, restored states republished), /alarms shows the restored alarms, and
    /// the file says what this run holds.
    async fn start_up(&mut self) {
        let now = self.shared.clock.now();
        self.send_snapshot(now);
        for (sink, topics) in std::mem::take(&mut self.clears).into_iter().enumerate() {
            for topic in topics {
                let clear = Message {
                    class: Class::Alarm,
                    topic,
                    // An empty retained message removes the broker's retained one.
                    payload: Vec::new(),
                    retain: true,
                    priority: None,
                };
                self.outlets.send_to(sink, clear).await;
            }
        }
        for event in self.driver.engine().restored_states(now) {
            self.publish_alarm(event).await;
        }
        self.save(true);
        self.publish_data_metas(&[]).await;
    }

    fn send_snapshot(&self, now: i64) {
        let engine = self.driver.engine();
        let kpis = engine.kpis(now);
        self.shared.alarms.send_replace(
            AlarmSnapshot::from_events(
                &engine.shown_alarms(),
                kpis.floods,
                kpis.chattering_episodes,
            )
            .with_hidden(&engine.flagged_alarms()),
        );
    }

    /// Saves the alarm state when due (`at_once`: whenever it changed).
    fn save(&mut self, at_once: bool) {
        let (mono, now) = self.shared.clock.stamp();
        self.save_at(at_once, mono, now);
    }

    fn save_at(&mut self, at_once: bool, mono: Mono, now: Ts) {
        self.keeper
            .save_if_due(self.driver.engine(), self.seq.peek(), mono, now, at_once);
    }

    /// Runs until every poller has stopped (the batch channel closes) or `cancel` fires; either
    /// way what is left is applied and handed to the sinks first.
    pub async fn run(mut self, inputs: Inputs, cancel: CancellationToken) {
        let Inputs {
            mut batches,
            mut commands,
            mut control,
            mut queries,
        } = inputs;
        let cadence = self.driver.cadence();
        // Wakes on the driver's grid of the clock, so a timer due at a grid tick fires when
        // that tick comes, not up to a period later.
        let tick = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(tick);
        let mut wakes: u64 = 0;
        let mut written = self.disposal.take_results();
        let summary_every = Duration::from_millis(self.summary.interval_ms.max(1_000) as u64);
        let mut summaries = tokio::time::interval(summary_every);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first summary one interval after start, not at once.
        summaries.reset();
        self.start_up().await;
        loop {
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        // A lone batch waits for the pollers whose replies came in with it (the
                        // runtime would otherwise switch here after each of them): their
                        // batches join this turn and their data messages leave in one flush.
                        // A backlog is worked off at once.
                        if batches.is_empty() {
                            tokio::task::yield_now().await;
                        }
                        self.on_batch(&b).await;
                        // Batches already waiting are applied in this turn, each followed by
                        // its alarms as before: one wake for a burst of polls, not one each.
                        for _ in 1..BATCH_BURST {
                            let Ok(b) = batches.try_recv() else { break };
                            self.publish_events().await;
                            self.on_batch(&b).await;
                        }
                    }
                    None => {
                        // Every poller stopped: deliver what is left, then let the sinks drain.
                        self.driver.advance(self.shared.clock.now());
                        self.driver.finish();
                        self.publish_events().await;
                        self.save(true);
                        return;
                    }
                },
                c = commands.recv() => {
                    if let Some(c) = c {
                        self.commands(c, &mut commands).await;
                    }
                }
                () = &mut tick => {
                    wakes += 1;
                    // Small drifts are NTP slewing; a step (boot without RTC, operator) is followed.
                    if wakes.is_multiple_of(40) {
                        if let Some(step) = self.shared.clock.resync(2_000) {
                            warn!(step_ms = step, "the system clock stepped; timestamps follow it (pending alarm delays see the step)");
                            self.driver.jump(self.shared.clock.now());
                        }
                    }
                    let now = self.shared.clock.now();
                    self.driver.advance(now);
                    let done = self.disposal.tick(self.driver.engine_mut(), now);
                    self.deliver(done).await;
                    self.systemd.on_tick(self.shared.clock.mono());
                    let wait = cadence.until_next_tick(now).unwrap_or(TICK_MS);
                    tick.set(tokio::time::sleep(Duration::from_millis(wait as u64)));
                }
                c = control.recv() => {
                    if let Some(c) = c {
                        self.control(c).await;
                    }
                }
                Some(r) = written.recv() => {
                    let now = self.shared.clock.now();
                    let done = self.disposal.on_written(r, self.driver.engine_mut(), now);
                    self.deliver(done).await;
                }
                Some(q) = queries.recv() => {
                    let trend = self.driver.engine_mut().device_trend(
                        &q.device,
                        q.since,
                        crate::io::web::TREND_POINTS,
                    );
                    let _ = q.reply.send(trend);
                }
                _ = summaries.tick(), if self.summary.interval_ms > 0 => self.publish_summaries().await,
                _ = cancel.cancelled() => {
                    while let Ok(b) = batches.try_recv() {
                        self.record(&b);
                        to_report(&self.shared.report, || ReportInput::Batch(b.clone())).await;
                        self.driver.apply(&b, self.shared.clock.now());
                    }
                    self.publish_events().await;
                    self.save(true);
                    return;
                }
            }
            self.publish_events().await;
            // One clock reading per turn (a turn takes in every batch already waiting).
            let (mono, now) = self.shared.clock.stamp();
            self.shared.pulse.engine_turned(mono);
            crate::metrics::inc(&self.shared.metrics.engine_turns);
            self.save_at(false, mono, now);
        }
    }

    fn record(&self, b: &SampleBatch) {
        if let Some(r) = &self.shared.recorder {
            r.offer(b);
        }
    }

    async fn on_batch(&mut self, b: &SampleBatch) {
        self.record(b);
        to_report(&self.shared.report, || ReportInput::Batch(b.clone())).await;
        self.systemd.on_batch(b.device);
        // Live evaluates a batch when it arrives.
        self.driver.apply(b, self.shared.clock.now());
        if self.data.mode != DataMode::Off {
            self.publish_compact_data(b).await;
            if self.outlets.wants_full_data() {
                self.publish_data(b).await;
            }
        }
    }

    async fn publish_events(&mut self) {
        if !self.driver.has_events() {
            return;
        }
        self.send_snapshot(self.shared.clock.now());
        let events: Vec<AlarmEvent> = self.driver.drain_events().collect();
        let now = self.shared.clock.now();
        let done = self
            .disposal
            .on_events(&events, self.driver.engine_mut(), now);
        for event in events {
            self.publish_alarm(event).await;
        }
        self.deliver(done).await;
        // A topic retained for the first time must be on the list before a crash can lose
        // it, or a later removal of its rule could not clear it.
        if self.keeper.has_new_topics() {
            self.save(true);
        }
    }

    /// Numbers one alarm event and hands it to every sink.
    async fn publish_alarm(&mut self, event: AlarmEvent) {
        let now = self.shared.clock.now();
        let (seq, err) = self.seq.take();
        if let Some(e) = err {
            emit(SeqLeaseNotPersisted { error: &e });
        }
        emit(AlarmPublished {
            metrics: &self.shared.metrics,
            device: &event.device,
            rule: &event.rule,
            state: event.transition.to,
            priority: &event.priority,
            message: &event.message,
            latency: (event.transition.cause == crate::core::alarm::Cause::Condition)
                .then(|| Duration::from_millis((now - event.transition.at).max(0) as u64)),
        });
        // A state republished at start is not a transition: the history already holds it.
        if let Some(h) = self
            .shared
            .history
            .as_ref()
            .filter(|_| event.transition.cause != crate::core::alarm::Cause::Restored)
        {
            h.record(crate::io::web::history::Entry::transition(&event));
        }
        self.keeper
            .published(&event.device, &event.rule, event.priority);
        to_report(&self.shared.report, || {
            ReportInput::Event(Box::new(event.clone()))
        })
        .await;
        // Alarms are never dropped here: waiting is the backpressure.
        if self.outlets.publish(Outbound::Alarm { seq, event }).await > 0 {
            error!("a sink stopped; alarm not queued for it");
        }
    }

    async fn publish_summaries(&mut self) {
        let now = self.shared.clock.now();
        for (i, summary) in self.driver.engine_mut().take_summaries(now).enumerate() {
            if i > 0 && i % SUMMARY_SLICE == 0 {
                self.outlets.wait_drained(SUMMARY_SLICE).await;
            }
            self.outlets
                .publish(Outbound::Summary {
                    summary,
                    current_efficiency: self.summary.current_efficiency,
                    rectifier_efficiency: self.summary.rectifier_efficiency,
                })
                .await;
        }
    }

    async fn publish_data(&mut self, b: &SampleBatch) {
        let Some(tags) = self.names.get(b.device as usize) else {
            return;
        };
        let deadband = (self.data.mode == DataMode::Change).then_some(self.data.deadband);
        let Some(payload) = self.data_filter.payload(&self.agent, tags, b, deadband) else {
            return;
        };
        let device = tags.device().to_string();
        self.outlets
            .publish(Outbound::Data { device, payload })
            .await;
    }

    async fn publish_compact_data(&mut self, b: &SampleBatch) {
        let deadband = (self.data.mode == DataMode::Change).then_some(self.data.deadband);
        let Some((device, payload)) = self.compact.as_mut().and_then(|c| c.payload(b, deadband))
        else {
            return;
        };
        let device = device.to_string();
        self.outlets
            .publish(Outbound::DataCompact { device, payload })
            .await;
    }

    /// The retained meta of every device to the compact sinks, at start and after a reload
    /// (the sinks send only what changed, and everything again on each connection), and an
    /// empty one clearing the meta of each device in `previous` that is gone.
    async fn publish_data_metas(&mut self, previous: &[String]) {
        let Some(c) = self
            .compact
            .as_ref()
            .filter(|_| self.data.mode != DataMode::Off)
        else {
            return;
        };
        let mut metas: Vec<Outbound> = c
            .devices()
            .map(|(device, layout)| Outbound::DataMeta {
                device: device.to_string(),
                payload: crate::core::compact::meta_payload(&self.agent, device, layout),
            })
            .collect();
        let now: std::collections::HashSet<&str> = c.devices().map(|(d, _)| d).collect();
        for gone in previous.iter().filter(|d| !now.contains(d.as_str())) {
            metas.push(Outbound::DataMeta {
                device: gone.clone(),
                payload: Vec::new(),
            });
        }
        for m in metas {
            self.outlets.publish(m).await;
        }
    }

    /// Runs `first` and whatever else is queued (up to [`COMMAND_BATCH`]), saves the alarm
    /// state once, then replies: an `ok` reply means the change survives a crash, and a burst
    /// costs one fsync per batch rather than one per command.
    async fn commands(
        &mut self,
        first: InboundCommand,
        queue: &mut mpsc::Receiver<InboundCommand>,
    ) {
        let mut replies = Vec::new();
        replies.extend(self.command(first));
        for _ in 1..COMMAND_BATCH {
            let Ok(c) = queue.try_recv() else { break };
            replies.extend(self.command(c));
        }
        self.save(true);
        for (to, reply) in replies {
            self.answer(to, reply).await;
        }
        let done = std::mem::take(&mut self.disposal_done);
        self.deliver(done).await;
    }

    /// Applies one command; its reply, unless it comes later (a reload).
    fn command(&mut self, c: InboundCommand) -> Option<(CommandOrigin, Reply)> {
        let now = self.shared.clock.now();
        let InboundCommand { origin, payload } = c;
        if let CommandOrigin::Mqtt { retained: true, .. } = origin {
            let reply = command::refuse_retained(&payload, now);
            warn!(request_id = ?reply.request_id, op = ?reply.op, "retained command refused, not executed");
            return Some((origin, reply));
        }
        let p = match command::parse(&payload, now) {
            Err(e) => {
                warn!(error = %e.message, "command refused");
                let reply = Reply::unparsed(e, now);
                self.recent.remember(&payload, &reply, now);
                return Some((origin, reply));
            }
            Ok(p) => p,
        };
        if let Some(first) = p
            .request_id
            .as_deref()
            .and_then(|id| self.recent.get(id, &payload, now))
        {
            info!(request_id = ?p.request_id, op = %p.op, "duplicate command: the first reply again");
            return Some((origin, first));
        }
        let reply = match p.request {
            Request::Reload { .. } if matches!(origin, CommandOrigin::Local { .. }) => {
                Reply::refused(
                    p.request_id,
                    Some(p.op),
                    "reload is not offered here; use SIGHUP or the MQTT command",
                    now,
                )
            }
            Request::Reload { by } => {
                info!(by = %by, "reload requested over MQTT");
                let pending = PendingReply {
                    to: origin,
                    request_id: p.request_id,
                    op: p.op,
                };
                match self.shared.reloads.try_send(ReloadRequest {
                    origin: ReloadOrigin::Command(pending),
                }) {
                    // The supervisor applies it and hands the outcome back for the reply.
                    Ok(()) => return None,
                    Err(e) => {
                        let ReloadRequest {
                            origin: ReloadOrigin::Command(pending),
                        } = e.into_inner()
                        else {
                            return None;
                        };
                        let reply = Reply::refused(
                            pending.request_id,
                            Some(pending.op),
                            "a reload is already in progress; try again",
                            now,
                        );
                        return Some((pending.to, reply));
                    }
                }
            }
            Request::Confirm {
                action,
                device,
                proposal,
                by,
            } => {
                let (done, r) = self.disposal.confirm(
                    &action,
                    &device,
                    proposal,
                    &by,
                    self.driver.engine_mut(),
                    now,
                );
                self.disposal_done.publish.extend(done.publish);
                self.disposal_done.alarms.extend(done.alarms);
                info!(action = %action, device = %device, by = %by, ok = r.is_ok(), "action confirmation");
                let reply = match r {
                    Ok(()) => Reply::ok(p.request_id, Some(p.op), now).state(Some("confirmed")),
                    Err(e) => Reply::refused(p.request_id, Some(p.op), e, now),
                };
                reply.on(device, action)
            }
            Request::Kill { area, on, by } => {
                let (done, r) =
                    self.disposal
                        .kill(area.as_deref(), on, &by, self.driver.engine_mut(), now);
                self.disposal_done.publish.extend(done.publish);
                self.disposal_done.alarms.extend(done.alarms);
                warn!(area = ?area, on, by = %by, "action kill switch");
                match r {
                    Ok(()) => Reply::ok(p.request_id, Some(p.op), now).state(Some(if on {
                        "killed"
                    } else {
                        "released"
                    })),
                    Err(e) => Reply::refused(p.request_id, Some(p.op), e, now),
                }
            }
            Request::Alarm {
                device,
                rule,
                by,
                command,
            } => match self.driver.command(&device, &rule, &by, &command, now) {
                Ok(state) => {
                    let from = match origin {
                        CommandOrigin::Mqtt { .. } => "mqtt",
                        CommandOrigin::Local { .. } => "operator station",
                    };
                    info!(device = %device, rule = %rule, op = %p.op, by = %by, from, "command applied");
                    let r = Reply::ok(p.request_id, Some(p.op), now)
                        .on(device, rule)
                        .state(state);
                    self.remember_command(&r, &by, now);
                    r
                }
                Err(e) => {
                    let r = Reply::refused(p.request_id, Some(p.op), e.to_string(), now)
                        .on(device, rule);
                    self.remember_command(&r, &by, now);
                    r
                }
            },
        };
        self.recent.remember(&payload, &reply, now);
        Some((origin, reply))
    }

    /// Keeps an applied or refused alarm command in the station's history, when it is served.
    fn remember_command(&self, r: &Reply, by: &str, now: Ts) {
        if let Some(h) = &self.shared.history {
            h.record(crate::io::web::history::Entry::command(r, Some(by), now));
        }
    }

    /// Sends a reply back the way its command came.
    async fn answer(&mut self, to: CommandOrigin, reply: Reply) {
        match to {
            CommandOrigin::Mqtt { sink, .. } => self.outlets.reply(sink, reply).await,
            CommandOrigin::Local { reply: tx } => {
                let _ = tx.send(reply);
            }
        }
    }

    async fn control(&mut self, c: Control) {
        match c {
            Control::Swap(cfg, done) => {
                let previous: Vec<String> = self
                    .compact
                    .iter()
                    .flat_map(|c| c.devices().map(|(d, _)| d.to_string()))
                    .collect();
                let _ = done.send(self.swap(&cfg));
                self.publish_data_metas(&previous).await;
            }
            Control::Reloaded { to, result } => {
                let now = self.shared.clock.now();
                let reply = match result {
                    // What was applied ("12 rules; 1 links kept, 0 restarted").
                    Ok(m) => Reply::ok(to.request_id, Some(to.op), now).state(Some(&m)),
                    Err(e) => Reply::refused(to.request_id, Some(to.op), e, now),
                };
                self.answer(to.to, reply).await;
            }
        }
    }

    /// Replaces the engine with one built for `cfg`, carrying the state over.
    fn swap(&mut self, cfg: &Config) -> Result<(), String> {
        let next = Engine::new(&cfg.spec);
        self.driver.replace_engine(next);
        self.summary = cfg.summary.clone();
        self.data = cfg.data.clone();
        self.names = data_names(cfg);
        self.compact = super::compact::build(cfg);
        self.disposal.reload(cfg);
        Ok(())
    }
}

/// Per device: its name and its tags' (name, unit), as raw-data payloads name them.
fn data_names(cfg: &Config) -> Vec<DataTags> {
    // Devices expanded from one entry share their tag list, and so their fragments.
    let mut shared: Vec<(*const crate::config::Tag, Arc<[DataTag]>)> = Vec::new();
    cfg.devices
        .iter()
        .map(|d| {
            let key = d.tags.as_ptr();
            let tags = match shared.iter().find(|(k, _)| *k == key) {
                Some((_, t)) => t.clone(),
                None => {
                    let names: Vec<(String, String)> = d
                        .tags
                        .iter()
                        .map(|t| (t.name.clone(), t.unit.clone()))
                        .collect();
                    let t = DataTags::spell(&names);
                    shared.push((key, t.clone()));
                    t
                }
            };
            DataTags::with_tags(&d.name, tags)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::core::model::Quality;

    const T0: i64 = 1_767_225_600_000;

    /// The engine task on real channels with three sinks: two publish under "plant", one under
    /// "province".
    struct Harness {
        clock: Arc<ManualClock>,
        batches: mpsc::Sender<SampleBatch>,
        commands: mpsc::Sender<InboundCommand>,
        control: mpsc::Sender<Control>,
        reloads: mpsc::Receiver<ReloadRequest>,
        sinks: Vec<mpsc::Receiver<Arc<Message>>>,
        _state: tempfile::TempDir,
    }

    fn harness(reload_capacity: usize) -> Harness {
        let state = tempfile::tempdir().unwrap();
        let cfg = Config::from_str(
            std::path::Path::new("t.toml"),
            &format!(
                r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{}"
[[mqtt]]
name = "plant"
url = "mqtt://127.0.0.1:1883"
topic_root = "plant"
[[mqtt]]
name = "province"
url = "mqtt://127.0.0.2:1883"
topic_root = "province"
[[mqtt]]
name = "plant-backup"
url = "mqtt://127.0.0.3:1883"
topic_root = "plant"
[data]
mode = "poll"
[[devices]]
name = "pot-001"
endpoint = "tcp://127.0.0.1:5020"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", unit = "V" }} ]
[[rules]]
name = "ae"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 8.0
"#,
                state.path().display()
            ),
        )
        .unwrap();
        let clock = ManualClock::new(T0);
        let (sink_txs, sinks): (Vec<_>, Vec<_>) =
            (0..3).map(|_| mpsc::channel::<Arc<Message>>(64)).unzip();
        let (batches, batch_rx) = mpsc::channel(16);
        let (commands, command_rx) = mpsc::channel(16);
        let (control, control_rx) = mpsc::channel(4);
        let (reload_tx, reloads) = mpsc::channel(reload_capacity);
        let task = EngineTask::new(
            &cfg,
            Engine::new(&cfg.spec),
            SeqLease::open(state.path(), Default::default(), T0).unwrap(),
            Outlets::new(&cfg, sink_txs),
            Shared {
                clock: clock.clone(),
                metrics: Metrics::new(["pot-001".to_string()], []),
                alarms: watch::channel(AlarmSnapshot::default()).0,
                recorder: None,
                reloads: reload_tx,
                history: None,
                pulse: crate::io::health::Pulse::new(Default::default(), clock.mono()),
                report: None,
            },
        );
        let inputs = Inputs {
            batches: batch_rx,
            commands: command_rx,
            control: control_rx,
            queries: mpsc::channel(1).1,
        };
        tokio::spawn(task.run(inputs, CancellationToken::new()));
        Harness {
            clock,
            batches,
            commands,
            control,
            reloads,
            sinks,
            _state: state,
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Arc<Message>>) -> Arc<Message> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("the engine task is running")
    }

    fn json(m: &Arc<Message>) -> serde_json::Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    impl Harness {
        async fn volts(&self, v: f64) {
            let ts = self.clock.now();
            let values = vec![(0, v, Quality::Good)];
            let b = SampleBatch {
                device: 0,
                ts,
                values,
            };
            self.batches.send(b).await.unwrap();
        }

        async fn command(&self, sink: usize, payload: &str) {
            let payload = payload.as_bytes().to_vec();
            let origin = CommandOrigin::Mqtt {
                sink,
                retained: false,
            };
            let c = InboundCommand { origin, payload };
            self.commands.send(c).await.unwrap();
        }
    }

    #[tokio::test]
    async fn each_message_is_spelled_once_per_identity_under_each_sinks_own_root() {
        let mut h = harness(4);
        h.volts(9.0).await;
        let mut got: Vec<Vec<Arc<Message>>> = Vec::new();
        for rx in &mut h.sinks {
            got.push(vec![next(rx).await, next(rx).await]);
        }
        let topics: Vec<Vec<&str>> = got
            .iter()
            .map(|ms| ms.iter().map(|m| m.topic.as_str()).collect())
            .collect();
        let plant = vec!["plant/s/a/pot-001/data", "plant/s/a/pot-001/alarm/ae"];
        let province = vec!["province/s/a/pot-001/data", "province/s/a/pot-001/alarm/ae"];
        assert_eq!(topics, vec![plant.clone(), province, plant]);
        // The two "plant" sinks share the very same messages.
        for (a, b) in got[0].iter().zip(&got[2]) {
            assert!(Arc::ptr_eq(a, b));
        }
        assert_eq!(json(&got[1][1])["state"], "active_unacked");
        assert_eq!(
            json(&got[1][1]),
            json(&got[0][1]),
            "same payload on each root"
        );
    }

    #[tokio::test]
    async fn a_command_is_answered_once_on_the_sink_it_came_from() {
        let mut h = harness(4);
        h.volts(9.0).await;
        for rx in &mut h.sinks {
            next(rx).await; // data
            next(rx).await; // alarm
        }
        h.clock.advance(1_000);
        h.command(
            1,
            r#"{"op":"ack","device":"pot-001","rule":"ae","by":"op","request_id":"r1"}"#,
        )
        .await;
        // The reply goes only to the province sink (first, as it always has), the transition
        // everywhere.
        let reply = next(&mut h.sinks[1]).await;
        assert_eq!(reply.topic, "province/s/a/_agent/gw/cmd/reply");
        for rx in &mut h.sinks {
            let m = next(rx).await;
            assert!(m.topic.ends_with("/alarm/ae"), "{}", m.topic);
            assert_eq!(json(&m)["state"], "active_acked");
        }
        let j = json(&reply);
        assert_eq!(
            (&j["ok"], &j["request_id"], &j["op"], &j["state"]),
            (
                &true.into(),
                &"r1".into(),
                &"ack".into(),
                &"active_acked".into()
            )
        );
        assert_eq!(j["ts"], "2026-01-01T00:00:01.000Z");
        // A refusal names the error; nothing else was sent to the plant sinks meanwhile.
        h.command(
            0,
            r#"{"op":"ack","device":"pot-001","rule":"nope","by":"op"}"#,
        )
        .await;
        let refused = next(&mut h.sinks[0]).await;
        assert_eq!(refused.topic, "plant/s/a/_agent/gw/cmd/reply");
        assert_eq!(json(&refused)["ok"], false);
        assert!(json(&refused)["error"]
            .as_str()
            .unwrap()
            .contains("unknown alarm"));
        h.command(0, "not json").await;
        assert!(json(&next(&mut h.sinks[0]).await)["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"));
        assert!(h.sinks[1].try_recv().is_err() && h.sinks[2].try_recv().is_err());
    }

    #[tokio::test]
    async fn a_local_command_is_answered_to_its_caller_and_its_transition_goes_everywhere() {
        let mut h = harness(4);
        h.volts(9.0).await;
        for rx in &mut h.sinks {
            next(rx).await; // data
            next(rx).await; // alarm
        }
        let (tx, rx) = oneshot::channel();
        let payload = br#"{"op":"ack","device":"pot-001","rule":"ae","by":"li.wei"}"#.to_vec();
        let origin = CommandOrigin::Local { reply: tx };
        h.commands
            .send(InboundCommand { origin, payload })
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(reply.ok, "{reply:?}");
        assert_eq!(reply.state.as_deref(), Some("active_acked"));
        for rx in &mut h.sinks {
            let m = next(rx).await;
            assert!(
                m.topic.ends_with("/alarm/ae"),
                "no reply topic: {}",
                m.topic
            );
            assert_eq!(json(&m)["acked_by"], "li.wei");
        }
        // A reload is not taken from the page.
        let (tx, rx) = oneshot::channel();
        let payload = br#"{"op":"reload","by":"li.wei"}"#.to_vec();
        let origin = CommandOrigin::Local { reply: tx };
        h.commands
            .send(InboundCommand { origin, payload })
            .await
            .unwrap();
        assert!(!rx.await.unwrap().ok);
        assert!(h.reloads.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_reload_is_answered_by_the_engine_once_the_supervisor_has_applied_it() {
        let mut h = harness(1);
        h.command(2, r#"{"op":"reload","by":"ops","request_id":"r7"}"#)
            .await;
        let req = tokio::time::timeout(Duration::from_secs(5), h.reloads.recv())
            .await
            .unwrap()
            .unwrap();
        let ReloadOrigin::Command(to) = req.origin else {
            panic!("a command origin")
        };
        assert_eq!(
            (to.request_id.as_deref(), to.op.as_str()),
            (Some("r7"), "reload")
        );
        assert!(matches!(
            to.to,
            CommandOrigin::Mqtt {
                sink: 2,
                retained: false
            }
        ));
        // Not answered yet: the next reply on that sink is for a later command.
        h.command(2, "{}").await;
        assert_eq!(
            json(&next(&mut h.sinks[2]).await)["error"],
            "missing \"op\""
        );
        h.control
            .send(Control::Reloaded {
                to,
                result: Ok("1 rules; 1 links kept, 0 restarted".into()),
            })
            .await
            .unwrap();
        let j = json(&next(&mut h.sinks[2]).await);
        assert_eq!(
            (&j["ok"], &j["request_id"], &j["state"]),
            (
                &true.into(),
                &"r7".into(),
                &"1 rules; 1 links kept, 0 restarted".into()
            )
        );

        // While the supervisor is busy with one reload, another is refused at once.
        h.command(0, r#"{"op":"reload","by":"ops"}"#).await;
        h.command(0, r#"{"op":"reload","by":"ops","request_id":"r9"}"#)
            .await;
        let j = json(&next(&mut h.sinks[0]).await);
        assert_eq!(j["request_id"], "r9");
        assert_eq!(j["error"], "a reload is already in progress; try again");
        let req = h.reloads.recv().await.unwrap();
        let ReloadOrigin::Command(to) = req.origin else {
            panic!("a command origin")
        };
        h.control
            .send(Control::Reloaded {
                to,
                result: Err("changes in [agent] take effect at the next restart".into()),
            })
            .await
            .unwrap();
        let j = json(&next(&mut h.sinks[0]).await);
        assert_eq!(j["ok"], false);
        assert_eq!(
            j["error"],
            "changes in [agent] take effect at the next restart"
        );
        assert!(h.sinks[1].try_recv().is_err(), "replies go to one sink");
    }
}
