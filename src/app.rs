//! Wires the tasks together: link pollers → engine → sinks, with one cancellation token and an
//! ordered shutdown. `main` is the only caller.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::config::mqtt::PasswordSource;
use crate::config::Config;
use crate::core::command::{self, Reply, Request, REPLY_SCHEMA};
use crate::core::engine::{AlarmEvent, Engine, SampleBatch};
use crate::core::payload::{alarm_payload, Identity};
use crate::io::http::{self, AlarmSnapshot, HttpState};
use crate::io::poller::{links, Link};
use crate::io::publisher::{InboundCommand, Message, SinkTask};
use crate::io::seq::SeqLease;
use crate::metrics::Metrics;
use crate::outbox::{Class, Outbox};

/// Handles to a running agent, for tests and the demo.
#[derive(Debug)]
pub struct Running {
    pub cancel: CancellationToken,
    pub tasks: JoinSet<()>,
    pub metrics: Arc<Metrics>,
    reload_tx: mpsc::Sender<ReloadRequest>,
}

/// Asks the supervisor to re-read the configuration file.
#[derive(Debug)]
pub struct ReloadRequest {
    /// When the request came over MQTT: (sink, request id, operator), for the reply.
    pub from: Option<(usize, Option<String>, String)>,
    pub reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
}

/// Messages from the supervisor to the engine task.
#[derive(Debug)]
enum EngineControl {
    Reload(
        Box<Config>,
        tokio::sync::oneshot::Sender<Result<(), String>>,
    ),
}

impl Running {
    /// Re-reads the configuration file: a valid one is applied without losing alarm states or
    /// windows of unchanged tags and without reconnecting unchanged links; an invalid one is
    /// refused with its problems and the running configuration stays.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload_tx
            .send(ReloadRequest {
                from: None,
                reply: Some(tx),
            })
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await.map_err(|_| "the agent is stopping".to_string())?
    }

    /// Stops every task and waits for them (bounded).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

fn read_password(src: &PasswordSource) -> anyhow::Result<String> {
    match src {
        PasswordSource::File(p) => Ok(std::fs::read_to_string(p)
            .with_context(|| format!("reading the MQTT password file {p}"))?
            .trim_end_matches(['\n', '\r'])
            .to_string()),
        PasswordSource::Env(v) => {
            std::env::var(v).with_context(|| format!("the MQTT password variable {v} is not set"))
        }
    }
}

/// Starts every task of the agent for `cfg`.
pub async fn start(cfg: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let metrics = Metrics::new(
        cfg.devices.iter().map(|d| d.name.clone()),
        cfg.sinks.iter().map(|s| s.name.clone()),
    );
    metrics
        .started_ms
        .store(clock.now(), std::sync::atomic::Ordering::Relaxed);
    let engine = Engine::new(&cfg).context("building the rule engine")?;

    let (cmd_tx, cmd_rx) = mpsc::channel::<InboundCommand>(64);
    let mut sink_txs = Vec::new();
    let many = cfg.sinks.len() > 1;
    for (i, s) in cfg.sinks.iter().enumerate() {
        let dir = cfg.agent.state_dir.join("outbox").join(&s.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the outbox directory {}", dir.display()))?;
        let (outbox, report) = Outbox::open(&dir, s.outbox_options(), clock.now())
            .with_context(|| format!("opening the outbox {}", dir.display()))?;
        if report.recovered > 0 || report.torn_tails > 0 || report.corrupt_regions > 0 {
            info!(sink = %s.name, recovered = report.recovered, torn = report.torn_tails, corrupt = report.corrupt_regions, "outbox reopened with a backlog");
        }
        if report.torn_tails > 0 || report.corrupt_regions > 0 {
            warn!(sink = %s.name, torn_bytes = report.torn_bytes, corrupt_bytes = report.corrupt_bytes, "outbox had damaged records (power cut?); they were skipped");
        }
        let password = match &s.password {
            Some(p) => Some(read_password(p)?),
            None => None,
        };
        let client_id = s.client_id.clone().unwrap_or_else(|| {
            if many {
                format!("alsentry-{}-{}", cfg.agent.id, s.name)
            } else {
                format!("alsentry-{}", cfg.agent.id)
            }
        });
        let (tx, rx) = mpsc::channel::<Arc<Message>>(1024);
        sink_txs.push(tx);
        let task = SinkTask {
            index: i,
            cfg: s.clone(),
            who: identity(&cfg, s),
            client_id,
            outbox,
            rx,
            commands: cmd_tx.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            config_hash: cfg.hash.clone(),
            password,
        };
        tasks.spawn(task.run(cancel.child_token()));
    }

    let (batch_tx, batch_rx) = mpsc::channel::<SampleBatch>(4096);
    // The engine outlives the pollers so that their last batches are processed.
    let engine_cancel = CancellationToken::new();
    let seq = SeqLease::open(&cfg.agent.state_dir)
        .with_context(|| format!("opening {}", cfg.agent.state_dir.display()))?;
    let whos: Vec<Identity> = cfg.sinks.iter().map(|s| identity(&cfg, s)).collect();
    let (alarms_tx, alarms_rx) = tokio::sync::watch::channel(AlarmSnapshot::default());
    if let Some(h) = &cfg.http {
        let listener = tokio::net::TcpListener::bind(h.listen)
            .await
            .with_context(|| format!("binding the HTTP endpoint {}", h.listen))?;
        info!(listen = %h.listen, "HTTP endpoint: /metrics /healthz /readyz /alarms");
        let state = HttpState {
            metrics: metrics.clone(),
            alarms: alarms_rx,
            clock: clock.clone(),
            config_loaded: true,
        };
        tasks.spawn(http::serve(listener, state, cancel.child_token()));
    }
    let recorder = cfg.record.as_ref().map(|rc| {
        let (rec, writer) =
            crate::io::record::recorder(rc, &cfg, crate::io::record::DEFAULT_CAPACITY);
        // Blocking file writes on their own thread; it ends when the engine drops `rec`.
        tasks.spawn_blocking(move || writer.run());
        rec
    });
    let engine_task = EngineTask {
        reload: None,
        recorder,
        engine,
        seq,
        whos,
        sinks: sink_txs,
        clock: clock.clone(),
        metrics: metrics.clone(),
        alarms: alarms_tx,
        summary: cfg.summary.clone(),
        data: cfg.data.clone(),
        data_filter: Default::default(),
        names: data_names(&cfg),
        systemd: crate::io::notify::Systemd::from_env(cfg.devices.len()),
    };
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let (ctl_tx, ctl_rx) = mpsc::channel::<EngineControl>(4);
    let mut supervisor = Supervisor {
        cfg: cfg.clone(),
        links: Vec::new(),
        batch_tx,
        clock: clock.clone(),
        metrics: metrics.clone(),
        engine: ctl_tx,
        sinks: engine_task.sinks.clone(),
        whos: engine_task.whos.clone(),
    };
    supervisor.spawn_links(&cfg.devices, None);
    tasks.spawn(supervisor.run(reload_rx, cancel.clone(), engine_cancel.clone()));
    let mut engine_task = engine_task;
    engine_task.reload = Some(reload_tx.clone());
    tasks.spawn(engine_task.run(batch_rx, cmd_rx, ctl_rx, engine_cancel));
    Ok(Running {
        cancel,
        tasks,
        metrics,
        reload_tx,
    })
}

/// Owns the link pollers and applies reloads.
struct Supervisor {
    cfg: Config,
    /// (link key, devices as configured, cancel, task).
    links: Vec<(
        String,
        Vec<crate::config::Device>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
    batch_tx: mpsc::Sender<SampleBatch>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    engine: mpsc::Sender<EngineControl>,
    sinks: Vec<mpsc::Sender<Arc<Message>>>,
    whos: Vec<Identity>,
}

impl Supervisor {
    /// Starts a poller for every link, or only for the links in `only`.
    fn spawn_links(&mut self, devices: &[crate::config::Device], only: Option<&[String]>) {
        for (endpoint, link_devices) in links(devices) {
            let key = endpoint.link_key();
            if only.is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            let configured: Vec<crate::config::Device> = link_devices
                .iter()
                .map(|d| devices[d.index as usize].clone())
                .collect();
            let token = CancellationToken::new();
            let link = Link {
                endpoint,
                devices: link_devices,
                tx: self.batch_tx.clone(),
                clock: self.clock.clone(),
                metrics: self.metrics.clone(),
            };
            let handle = tokio::spawn(link.run(token.clone()));
            self.links.push((key, configured, token, handle));
        }
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        cancel: CancellationToken,
        engine_cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = requests.recv() => match r {
                    Some(r) => self.handle(r).await,
                    None => break,
                },
            }
        }
        for (_, _, token, _) in &self.links {
            token.cancel();
        }
        for (_, _, _, handle) in self.links.drain(..) {
            let _ = handle.await;
        }
        // The engine outlives the pollers so that their last batches are processed.
        engine_cancel.cancel();
    }

    async fn handle(&mut self, r: ReloadRequest) {
        let result = self.reload().await;
        match &result {
            Ok(m) => info!("configuration reloaded: {m}"),
            Err(e) => warn!("configuration reload refused; the running configuration stays:\n{e}"),
        }
        if let Some((sink, request_id, _by)) = &r.from {
            let now = self.clock.now();
            let reply = Reply {
                schema: REPLY_SCHEMA,
                ok: result.is_ok(),
                request_id: request_id.clone(),
                op: Some("reload".into()),
                device: None,
                rule: None,
                state: result.as_ref().ok().cloned(),
                error: result.as_ref().err().cloned(),
                ts: crate::clock::rfc3339_ms(now),
            };
            if let (Some(tx), Some(who)) = (self.sinks.get(*sink), self.whos.get(*sink)) {
                let msg = Message {
                    class: Class::Status,
                    topic: who.agent_topic("cmd/reply"),
                    payload: serde_json::to_vec(&reply).unwrap_or_default(),
                    retain: false,
                    priority: None,
                };
                let _ = tx.send(Arc::new(msg)).await;
            }
        }
        if let Some(tx) = r.reply {
            let _ = tx.send(result);
        }
    }

    async fn reload(&mut self) -> Result<String, String> {
        let path = self
            .cfg
            .files
            .first()
            .cloned()
            .ok_or("no configuration file to re-read")?;
        let new = Config::load(&path).map_err(|e| {
            e.problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        if new.agent != self.cfg.agent {
            return Err(
                "changes in [agent] take effect at the next restart; nothing was applied".into(),
            );
        }
        if new.sinks != self.cfg.sinks {
            return Err(
                "changes in [mqtt] take effect at the next restart; nothing was applied".into(),
            );
        }
        let old_names: Vec<&str> = self.cfg.devices.iter().map(|d| d.name.as_str()).collect();
        let new_names: Vec<&str> = new.devices.iter().map(|d| d.name.as_str()).collect();
        if old_names != new_names {
            return Err("adding, removing or reordering devices takes effect at the next restart; devices can be changed in place".into());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine
            .send(EngineControl::Reload(Box::new(new.clone()), tx))
            .await
            .map_err(|_| "the engine stopped".to_string())?;
        rx.await.map_err(|_| "the engine stopped".to_string())??;
        // Restart only the links whose devices changed.
        let mut changed: Vec<String> = Vec::new();
        let new_links: Vec<(String, Vec<crate::config::Device>)> = links(&new.devices)
            .into_iter()
            .map(|(e, ds)| {
                (
                    e.link_key(),
                    ds.iter()
                        .map(|d| new.devices[d.index as usize].clone())
                        .collect(),
                )
            })
            .collect();
        let mut kept = 0;
        let mut i = 0;
        while i < self.links.len() {
            let (key, devs, _, _) = &self.links[i];
            match new_links.iter().find(|(k, _)| k == key) {
                Some((_, nd)) if nd == devs => {
                    kept += 1;
                    i += 1;
                }
                _ => {
                    let (key, _, token, handle) = self.links.remove(i);
                    token.cancel();
                    let _ = handle.await;
                    changed.push(key);
                }
            }
        }
        for (k, _) in &new_links {
            if !self.links.iter().any(|(key, ..)| key == k) && !changed.contains(k) {
                changed.push(k.clone());
            }
        }
        self.spawn_links(&new.devices, Some(&changed));
        let rules = new.rules.len();
        self.cfg = new;
        Ok(format!(
            "{rules} rules; {kept} links kept, {} restarted",
            changed.len()
        ))
    }
}

/// Per device: its name and its tags' (name, unit), as raw-data payloads name them.
fn data_names(cfg: &Config) -> Vec<crate::core::payload::DataTags> {
    use crate::core::payload::{DataTag, DataTags};
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

fn identity(cfg: &Config, s: &crate::config::MqttSink) -> Identity {
    Identity {
        topic_root: s.topic_root.clone(),
        agent: cfg.agent.id.clone(),
        site: cfg.agent.site.clone(),
        area: cfg.agent.area.clone(),
    }
}

struct EngineTask {
    reload: Option<mpsc::Sender<ReloadRequest>>,
    recorder: Option<crate::io::record::Recorder>,
    engine: Engine,
    seq: SeqLease,
    whos: Vec<Identity>,
    sinks: Vec<mpsc::Sender<Arc<Message>>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    alarms: tokio::sync::watch::Sender<AlarmSnapshot>,
    summary: crate::config::SummaryOptions,
    data: crate::config::DataOptions,
    data_filter: crate::core::payload::DataFilter,
    /// Per device: name and (tag, unit) names, for raw data payloads.
    names: Vec<crate::core::payload::DataTags>,
    /// READY=1 after the first poll cycle, WATCHDOG=1 while this loop turns (issue 15).
    systemd: crate::io::notify::Systemd,
}

impl EngineTask {
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<SampleBatch>,
        mut commands: mpsc::Receiver<InboundCommand>,
        mut control: mpsc::Receiver<EngineControl>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events: Vec<AlarmEvent> = Vec::new();
        let mut ticks: u64 = 0;
        let summary_every = Duration::from_millis(self.summary.interval_ms.max(1_000) as u64);
        let mut summaries =
            tokio::time::interval_at(tokio::time::Instant::now() + summary_every, summary_every);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        self.systemd.on_batch(b.device);
                        if let Some(r) = &self.recorder {
                            r.offer(&b);
                        }
                        self.engine.on_batch(&b, self.clock.now(), &mut events);
                        if self.data.mode != crate::config::DataMode::Off {
                            self.publish_data(&b).await;
                        }
                    }
                    None => {
                        // Every poller stopped: deliver what is left, then let the sinks drain.
                        self.engine.tick(self.clock.now(), &mut events);
                        self.publish(&mut events).await;
                        return;
                    }
                },
                c = commands.recv() => {
                    if let Some(c) = c {
                        self.command(c, &mut events).await;
                    }
                }
                _ = tick.tick() => {
                    self.systemd.on_tick();
                    ticks += 1;
                    // Small drifts are NTP slewing; a step (boot without RTC, operator) is followed.
                    if ticks.is_multiple_of(40) {
                        if let Some(step) = self.clock.resync(2_000) {
                            warn!(step_ms = step, "the system clock stepped; timestamps follow it (pending alarm delays see the step)");
                        }
                    }
                    self.engine.tick(self.clock.now(), &mut events);
                }
                c = control.recv() => {
                    if let Some(EngineControl::Reload(cfg, reply)) = c {
                        let _ = reply.send(self.swap(&cfg));
                    }
                }
                _ = summaries.tick(), if self.summary.interval_ms > 0 => self.publish_summaries().await,
                _ = cancel.cancelled() => {
                    while let Ok(b) = batches.try_recv() {
                        if let Some(r) = &self.recorder {
                            r.offer(&b);
                        }
                        self.engine.on_batch(&b, self.clock.now(), &mut events);
                    }
                    self.publish(&mut events).await;
                    return;
                }
            }
            self.publish(&mut events).await;
        }
    }

    async fn publish(&mut self, events: &mut Vec<AlarmEvent>) {
        if events.is_empty() {
            return;
        }
        let kpis = self.engine.kpis(self.clock.now());
        self.alarms.send_replace(AlarmSnapshot::from_events(
            &self.engine.shown_alarms(),
            kpis.floods,
            kpis.chattering_episodes,
        ));
        for ev in events.drain(..) {
            let (seq, err) = self.seq.take();
            if let Some(e) = err {
                warn!(error = %e, "cannot persist the event sequence lease");
            }
            self.metrics
                .alarm_transitions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(device = %ev.device, rule = %ev.rule, state = ev.transition.to, priority = %ev.priority, message = %ev.message, "alarm");
            for (i, tx) in self.sinks.iter().enumerate() {
                let who = &self.whos[i];
                let msg = Message {
                    class: Class::Alarm,
                    topic: who.alarm_topic(&ev.device, &ev.rule),
                    payload: alarm_payload(who, seq, &ev),
                    retain: true,
                    priority: Some(ev.priority),
                };
                // Alarms are never dropped here: waiting is the backpressure.
                if tx.send(Arc::new(msg)).await.is_err() {
                    error!("a sink stopped; alarm not queued for it");
                }
            }
        }
    }

    /// Replaces the engine with one built for `cfg`, carrying the state over.
    fn swap(&mut self, cfg: &Config) -> Result<(), String> {
        let next = Engine::new(cfg).map_err(|e| e.to_string())?;
        let old = std::mem::replace(&mut self.engine, next);
        self.engine.adopt(old);
        self.summary = cfg.summary.clone();
        self.data = cfg.data.clone();
        self.names = data_names(cfg);
        Ok(())
    }

    async fn fan_out(&mut self, msg: Message) {
        let msg = Arc::new(msg);
        for tx in &self.sinks {
            // Summaries and data wait like alarms: the sink stores them at disk speed.
            let _ = tx.send(msg.clone()).await;
        }
    }

    async fn publish_summaries(&mut self) {
        let now = self.clock.now();
        let ce = self.summary.current_efficiency;
        let rect = self.summary.rectifier_efficiency;
        for s in self.engine.take_summaries(now) {
            for (i, tx) in self.sinks.iter().enumerate() {
                let who = &self.whos[i];
                let msg = Message {
                    class: Class::Summary,
                    topic: who.summary_topic(&s.device),
                    payload: crate::core::payload::summary_payload(who, &s, ce, rect),
                    retain: false,
                    priority: None,
                };
                let _ = tx.send(Arc::new(msg)).await;
            }
        }
    }

    async fn publish_data(&mut self, b: &SampleBatch) {
        let Some(tags) = self.names.get(b.device as usize) else {
            return;
        };
        let deadband =
            (self.data.mode == crate::config::DataMode::Change).then_some(self.data.deadband);
        let Some(who) = self.whos.first() else { return };
        let Some(payload) = self.data_filter.payload(who, tags, b, deadband) else {
            return;
        };
        let topic = who.data_topic(tags.device());
        self.fan_out(Message {
            class: Class::Data,
            topic,
            payload,
            retain: false,
            priority: None,
        })
        .await;
    }

    async fn command(&mut self, c: InboundCommand, events: &mut Vec<AlarmEvent>) {
        let now = self.clock.now();
        let reply = match command::parse(&c.payload, now) {
            Err(e) => {
                warn!(error = %e.message, "command refused");
                Reply {
                    schema: REPLY_SCHEMA,
                    ok: false,
                    request_id: e.request_id,
                    op: e.op,
                    device: None,
                    rule: None,
                    state: None,
                    error: Some(e.message),
                    ts: crate::clock::rfc3339_ms(now),
                }
            }
            Ok(p) => match p.request {
                Request::Reload { by } => {
                    info!(by = %by, "reload requested over MQTT");
                    let req = ReloadRequest {
                        from: Some((c.sink, p.request_id.clone(), by)),
                        reply: None,
                    };
                    match self.reload.as_ref().map(|r| r.try_send(req)) {
                        // The supervisor applies it and sends the reply itself.
                        Some(Ok(())) => return,
                        _ => Reply {
                            schema: REPLY_SCHEMA,
                            ok: false,
                            request_id: p.request_id,
                            op: Some(p.op),
                            device: None,
                            rule: None,
                            state: None,
                            error: Some("a reload is already in progress; try again".into()),
                            ts: crate::clock::rfc3339_ms(now),
                        },
                    }
                }
                Request::Alarm {
                    device,
                    rule,
                    by,
                    command,
                } => {
                    self.engine.tick(now, events);
                    match self.engine.command(&device, &rule, &by, &command, now) {
                        Ok(ev) => {
                            let state = ev.as_ref().map(|e| e.transition.to.to_string());
                            info!(device = %device, rule = %rule, op = %p.op, by = %by, "command applied");
                            events.extend(ev);
                            Reply {
                                schema: REPLY_SCHEMA,
                                ok: true,
                                request_id: p.request_id,
                                op: Some(p.op),
                                device: Some(device),
                                rule: Some(rule),
                                state,
                                error: None,
                                ts: crate::clock::rfc3339_ms(now),
                            }
                        }
                        Err(e) => Reply {
                            schema: REPLY_SCHEMA,
                            ok: false,
                            request_id: p.request_id,
                            op: Some(p.op),
                            device: Some(device),
                            rule: Some(rule),
                            state: None,
                            error: Some(e.to_string()),
                            ts: crate::clock::rfc3339_ms(now),
                        },
                    }
                }
            },
        };
        if let (Some(tx), Some(who)) = (self.sinks.get(c.sink), self.whos.get(c.sink)) {
            let msg = Message {
                class: Class::Status,
                topic: who.agent_topic("cmd/reply"),
                payload: serde_json::to_vec(&reply).unwrap_or_default(),
                retain: false,
                priority: None,
            };
            let _ = tx.send(Arc::new(msg)).await;
        }
    }
}

/// `alsentry run`: load, start, run until SIGTERM or Ctrl-C.
pub fn main(config_path: &Path) -> ExitCode {
    crate::telemetry::init(None);
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return crate::cli::config_refused(config_path, &e, "; not starting"),
    };
    // A multi-thread runtime even with one worker: an outbox fsync on slow storage runs under
    // `block_in_place` and must not stall the pollers.
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.agent.worker_threads)
        .enable_all()
        .build();
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        for line in crate::explain::summary(&cfg).lines() {
            info!("{line}");
        }
        let clock: Arc<dyn Clock> = SystemClock::new();
        let running = match start(cfg, clock).await {
            Ok(r) => r,
            Err(e) => {
                error!("cannot start: {e:#}");
                return ExitCode::from(1);
            }
        };
        wait_for_shutdown(&running).await;
        if let Some(n) = crate::io::notify::Notifier::from_env() {
            let _ = n.send("STOPPING=1");
        }
        info!("stopping");
        running.stop().await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or Ctrl-C; SIGHUP re-reads the configuration meanwhile.
async fn wait_for_shutdown(running: &Running) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hup.recv() => {
                    info!("SIGHUP: re-reading the configuration");
                    // The supervisor logs the outcome.
                    let _ = running.reload().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = running;
        let _ = tokio::signal::ctrl_c().await;
    }
}
