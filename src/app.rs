//! Wires the tasks together: link pollers → engine task → sinks, with one cancellation token
//! and an ordered shutdown. `main` is the only caller of [`main`]; tests and the demo use
//! [`start`]. The tasks live in their own modules: [`engine`] (the only producer of what is
//! published) and `supervisor` (link pollers and reloads).

pub(crate) mod compact;
mod disposal;
pub mod engine;
mod restore;
mod supervisor;

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
use crate::core::command::Reply;
use crate::core::engine::{Engine, SampleBatch};
use crate::core::outbound::Message;
use crate::io::http::{self, AlarmSnapshot, HttpState};
use crate::io::inbound::CommandOrigin;
use crate::io::publisher::{InboundCommand, SinkTask};
use crate::io::seq::SeqLease;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use engine::{Control, EngineTask, Inputs, Outlets, ReloadOrigin, ReloadRequest, Shared};
use supervisor::Supervisor;

/// Commands waiting for the engine task, at most (all sinks together).
const COMMAND_QUEUE: usize = 1024;
/// Messages waiting for each sink. Room for a burst of operator commands (each answered with
/// a reply and often an alarm change) while the sink reads commands first (io::inbound); bulk
/// rounds (summaries) are paced by the engine instead of filling it (app::engine).
const SINK_INBOX: usize = 1024;

/// Handles to a running agent, for tests and the demo.
#[derive(Debug)]
pub struct Running {
    pub cancel: CancellationToken,
    pub tasks: JoinSet<()>,
    pub metrics: Arc<Metrics>,
    /// Where the HTTP listener is bound (`[http] listen` may name port 0).
    pub http: Option<std::net::SocketAddr>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    commands: mpsc::Sender<InboundCommand>,
}

impl Running {
    /// Re-reads the configuration file: a valid one is applied without losing alarm states or
    /// windows of unchanged tags and without reconnecting unchanged links; an invalid one is
    /// refused with its problems and the running configuration stays.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload_tx
            .send(ReloadRequest {
                origin: ReloadOrigin::Caller(tx),
            })
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await.map_err(|_| "the agent is stopping".to_string())?
    }

    /// Runs an operator command from inside the agent (an operator page; tests): the same JSON,
    /// checks and reply as on the MQTT command topic, without a broker.
    pub async fn command(&self, payload: &[u8]) -> Result<Reply, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = InboundCommand {
            origin: CommandOrigin::Local { reply },
            payload: payload.to_vec(),
        };
        self.commands
            .send(cmd)
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await.map_err(|_| "the agent is stopping".to_string())
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
    // Before this start creates anything there: has an agent used this state_dir?
    let ran_before = crate::io::seq::ran_before(&cfg.agent.state_dir);
    std::fs::create_dir_all(&cfg.agent.state_dir)
        .with_context(|| format!("creating {}", cfg.agent.state_dir.display()))?;
    let mut engine = Engine::new(&cfg.spec);
    // The previous run's alarm state, before the first poll.
    let restored = restore::restore(&cfg, &mut engine);
    // The agent watching itself: the engine marks its turns, the supervisor its dead pollers.
    let pulse = crate::io::health::Pulse::new(
        crate::io::health::HealthLimits {
            ready_share: cfg.http.as_ref().map_or(0.5, |h| h.ready_share),
            ..Default::default()
        },
        clock.mono(),
    );
    // Which devices answer: written by the pollers, read by the status and /readyz.
    let (health, health_rx) =
        crate::io::health::channel(cfg.devices.iter().map(|d| d.name.clone()));

    // The hash of the configuration in force: the supervisor updates it, the statuses say it.
    let (hash_tx, hash_rx) = tokio::sync::watch::channel(cfg.hash.clone());
    // Commands are at most 4 KiB: a full queue holds 4 MiB. Past it a sink answers "busy".
    let (cmd_tx, cmd_rx) = mpsc::channel::<InboundCommand>(COMMAND_QUEUE);
    let mut sink_txs = Vec::new();
    // What was found on disk at start, for the operator station's agent page.
    let clears: usize = restored.clears.iter().map(Vec::len).sum();
    let mut restore_lines: Vec<String> = vec![format!(
        "alarm state ({}): {} alarms restored, {} dropped (rule or device removed), {} retained topics cleared",
        restored.state_file, restored.restored, restored.dropped, clears
    )];
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
        restore_lines.push(format!(
            "outbox {}: {} messages recovered, {} damaged regions skipped",
            s.name,
            report.recovered,
            report.torn_tails + report.corrupt_regions
        ));
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
        let (tx, rx) = mpsc::channel::<Arc<Message>>(SINK_INBOX);
        sink_txs.push(tx);
        let task = SinkTask {
            index: i,
            cfg: s.clone(),
            who: engine::identity(&cfg, s),
            client_id,
            outbox,
            rx,
            commands: cmd_tx.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            health: health_rx.clone(),
            config_hash: hash_rx.clone(),
            password,
            restore: Some(restored.report(i)),
            sparkplug: (s.format == crate::config::mqtt::Format::Sparkplug)
                .then(|| crate::io::sparkplug::Model::from_config(&cfg)),
        };
        tasks.spawn(task.run(cancel.child_token()));
    }

    let (batch_tx, batch_rx) = mpsc::channel::<SampleBatch>(4096);
    // The engine outlives the pollers so that their last batches are processed.
    let engine_cancel = CancellationToken::new();
    let evidence = crate::io::seq::Evidence {
        ran_before,
        next_seen: restored.next_seq,
    };
    let seq = SeqLease::open(&cfg.agent.state_dir, evidence, clock.now())
        .with_context(|| format!("opening {}", cfg.agent.state_dir.display()))?;
    let (alarms_tx, alarms_rx) = tokio::sync::watch::channel(AlarmSnapshot::default());
    let mut history = None;
    let mut http_addr = None;
    // The station's device views; the sender is dropped (the engine stops asking) without it.
    let (query_tx, query_rx) = mpsc::channel::<crate::io::web::DeviceQuery>(8);
    if let Some(h) = &cfg.http {
        let listener = tokio::net::TcpListener::bind(h.listen)
            .await
            .with_context(|| format!("binding the HTTP endpoint {}", h.listen))?;
        http_addr = listener.local_addr().ok();
        let tls = match &h.tls {
            Some((cert, key)) => Some(http::Tls::load(cert, key)?),
            None => None,
        };
        let web = if h.station() {
            let users = match &h.users {
                Some(p) => crate::io::web::auth::Users::load(p).map_err(anyhow::Error::msg)?,
                None => crate::io::web::auth::Users::default(),
            };
            let opts = crate::io::web::WebOptions {
                users,
                users_file: h.users.clone(),
                anonymous: h.anonymous,
                session_ttl_ms: h.session_timeout_ms,
                tls: tls.is_some(),
                info: crate::io::web::AgentInfo {
                    id: cfg.agent.id.clone(),
                    site: cfg.agent.site.clone(),
                    area: cfg.agent.area.clone(),
                    timezone: cfg.agent.timezone.clone(),
                },
                history: Some(cfg.agent.state_dir.clone()),
                restored: restore_lines.clone(),
                links: cfg.devices.iter().map(|d| d.endpoint.to_string()).collect(),
            };
            let link = crate::io::web::EngineLink {
                commands: cmd_tx.clone(),
                queries: query_tx.clone(),
                alarms: alarms_rx.clone(),
            };
            let web = crate::io::web::Web::new(
                opts,
                link,
                health_rx.clone(),
                metrics.clone(),
                clock.clone(),
            );
            history = web.history();
            Some(Arc::new(web))
        } else {
            None
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(listen = %h.listen, scheme, station = web.is_some(), "HTTP endpoint: /metrics /healthz /readyz /alarms");
        let state = HttpState {
            metrics: metrics.clone(),
            alarms: alarms_rx,
            devices: health_rx.clone(),
            clock: clock.clone(),
            config_loaded: true,
            web,
            tls,
            pulse: pulse.clone(),
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
    // The daily report: fed by the engine task, publishing to every sink.
    let report_sinks = cfg
        .sinks
        .iter()
        .zip(&sink_txs)
        .map(|(s, tx)| (engine::identity(&cfg, s), tx.clone()))
        .collect();
    let report = crate::io::report::ReportTask::new(&cfg, report_sinks, clock.clone()).map(|t| {
        let (tx, rx) = mpsc::channel(crate::io::report::QUEUE);
        tasks.spawn(t.run(rx));
        tx
    });
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    // Where action writes reach the pollers (docs/DISPOSAL.md).
    let writes = crate::io::poller::WriteRouter::default();
    let (control_tx, control_rx) = mpsc::channel::<Control>(4);
    let engine_task = EngineTask::new(
        &cfg,
        engine,
        seq,
        Outlets::new(&cfg, sink_txs),
        Shared {
            clock: clock.clone(),
            metrics: metrics.clone(),
            alarms: alarms_tx,
            recorder,
            reloads: reload_tx.clone(),
            history,
            pulse: pulse.clone(),
            report,
        },
    )
    .restored(&restored)
    .with_writes(writes.clone());
    let supervisor = Supervisor::start(
        cfg,
        batch_tx,
        clock.clone(),
        metrics.clone(),
        health,
        control_tx,
        supervisor::Reports {
            pulse,
            config_hash: hash_tx,
        },
        writes,
    );
    tasks.spawn(supervisor.run(reload_rx, cancel.clone(), engine_cancel.clone()));
    drop(query_tx);
    let inputs = Inputs {
        batches: batch_rx,
        commands: cmd_rx,
        control: control_rx,
        queries: query_rx,
    };
    tasks.spawn(engine_task.run(inputs, engine_cancel));
    Ok(Running {
        cancel,
        tasks,
        metrics,
        http: http_addr,
        reload_tx,
        commands: cmd_tx,
    })
}

/// `alsentry run`: load, start, run until SIGTERM or Ctrl-C.
pub fn main(config_path: &Path) -> ExitCode {
    crate::telemetry::init(None);
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return crate::telemetry::config_refused(config_path, &e, "; not starting"),
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
        for line in crate::config::describe::summary(&cfg).lines() {
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
