//! `alsentry sim`: a Modbus plant simulator (potline cells, baking-furnace sections, calciners)
//! with scripted, seeded faults and a ground-truth log. See docs/SIMULATOR.md.

pub(crate) mod calciner;
pub mod cell;
pub mod faults;
pub(crate) mod kiln;
pub mod plant;
pub(crate) mod react;
pub mod registers;
pub(crate) mod rng;
pub mod scenario;
pub(crate) mod schedule;
pub(crate) mod server;
pub(crate) mod truth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use plant::Plant;
pub use scenario::{DeviceKind, Scenario, ScenarioError};
pub use truth::TruthEvent;

use server::{SharedPlant, UnitMap};

/// Command-line arguments of `alsentry sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Scenario file (TOML), e.g. config/scenarios/normal.toml.
    #[arg(long, value_name = "FILE")]
    pub scenario: PathBuf,
    /// Seed; overrides `[plant] seed` of the scenario.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Write ground truth (one JSON object per fault start/end) to this file.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Bind every listener on this host instead of the scenario's (e.g. 0.0.0.0).
    #[arg(long, value_name = "HOST")]
    pub listen_host: Option<String>,
    /// Run the model this many times faster than real time (timelines shrink accordingly).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Stop after this long (wall time), e.g. "10m". Default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = crate::core::duration::parse_duration)]
    pub run_for: Option<Duration>,
}

/// Options of the in-process API.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub seed: Option<u64>,
    pub truth: Option<PathBuf>,
    /// Replace the host part of every listen address.
    pub listen_host: Option<String>,
    /// Bind every TCP listener on port 0 (tests); the real ports are in [`SimHandle`].
    pub ephemeral_ports: bool,
    /// Model steps per tick period; 1.0 is real time.
    pub speed: f64,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            seed: None,
            truth: None,
            listen_host: None,
            ephemeral_ports: false,
            speed: 1.0,
        }
    }
}

/// Where one device can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEndpoint {
    pub name: String,
    pub kind: DeviceKind,
    pub group: String,
    pub addr: SocketAddr,
    pub unit: u8,
    pub serial: Option<String>,
}

/// A running simulator. Dropping it stops it (listeners, connections and the model); use
/// [`SimHandle::stop`] to also wait until every task has ended.
#[derive(Debug)]
pub struct SimHandle {
    endpoints: Vec<DeviceEndpoint>,
    listeners: Vec<(String, SocketAddr)>,
    plant: SharedPlant,
    truth: truth::Truth,
    ticks: watch::Receiver<u64>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    seed: u64,
    tick: Duration,
}

impl SimHandle {
    pub fn endpoints(&self) -> &[DeviceEndpoint] {
        &self.endpoints
    }

    pub fn endpoint(&self, device: &str) -> Option<&DeviceEndpoint> {
        self.endpoints.iter().find(|e| e.name == device)
    }

    /// Bound address of each listener, keyed by the scenario's configured address.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// Bound addresses of one group's devices (one for a gateway, one per device otherwise).
    pub fn group_addrs(&self, group: &str) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .endpoints
            .iter()
            .filter(|e| e.group == group)
            .map(|e| e.addr)
            .collect();
        v.dedup();
        v
    }

    pub fn truth(&self) -> Vec<TruthEvent> {
        self.truth.events()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn tick_period(&self) -> Duration {
        self.tick
    }

    /// Model steps taken so far.
    pub fn tick(&self) -> u64 {
        *self.ticks.borrow()
    }

    /// Wait until the model has taken `tick` steps (a readiness signal for tests).
    pub async fn wait_tick(&self, tick: u64) {
        let mut rx = self.ticks.clone();
        let _ = rx.wait_for(|t| *t >= tick).await;
    }

    /// Wait until simulated time `t` (from start) has been reached.
    pub async fn wait_sim_time(&self, t: Duration) {
        self.wait_tick(faults::ticks(t, self.tick)).await;
    }

    /// Model signals of a device (after sensor faults), for tests and demos.
    pub fn signals(&self, device: &str) -> Option<Vec<f64>> {
        let p = self.plant.read().ok()?;
        let i = p.scenario().device_index(device)?;
        p.signals(i).map(<[f64]>::to_vec)
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn now_ms() -> i64 {
    crate::clock::wall_ms()
}

fn with_host(addr: &str, host: Option<&str>, ephemeral: bool) -> String {
    let (h, p) = addr.rsplit_once(':').unwrap_or((addr, "502"));
    let h = host.unwrap_or(h);
    let p = if ephemeral { "0" } else { p };
    format!("{h}:{p}")
}

/// Start the simulator: bind every listener, then step the model on a fixed tick.
/// Returns once every listener is bound.
pub async fn start(scenario: Scenario, opts: StartOptions) -> anyhow::Result<SimHandle> {
    if !(opts.speed.is_finite() && opts.speed > 0.0 && opts.speed <= 1000.0) {
        anyhow::bail!("speed must be within (0, 1000]");
    }
    let seed = opts.seed.unwrap_or(scenario.plant.seed);
    let tick = scenario.tick;
    let truth = truth::Truth::new(opts.truth.as_deref(), now_ms(), tick).with_context(|| {
        format!(
            "cannot create ground-truth file {}",
            opts.truth
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    })?;
    let mut plant = Plant::new(scenario.clone(), seed);
    // Step once so every register has a value before the first client connects.
    let first = plant.step();
    truth.record(&scenario, &first);
    let plant: SharedPlant = Arc::new(RwLock::new(plant));

    // Group devices by listener (several groups may share a gateway).
    let mut by_listen: BTreeMap<String, UnitMap> = BTreeMap::new();
    for (i, d) in scenario.devices.iter().enumerate() {
        let m = by_listen.entry(d.listen.clone()).or_default();
        if d.own_port {
            m.any = Some(i);
        } else {
            m.units.insert(d.unit, i);
        }
    }
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut bound: BTreeMap<String, SocketAddr> = BTreeMap::new();
    let mut listeners = Vec::new();
    for (key, units) in by_listen {
        let addr = with_host(&key, opts.listen_host.as_deref(), opts.ephemeral_ports);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (scenario address {key})"))?;
        let local = listener.local_addr()?;
        bound.insert(key.clone(), local);
        listeners.push((key, local));
        tasks.spawn(server::serve_tcp(
            listener,
            plant.clone(),
            Arc::new(units),
            cancel.clone(),
        ));
    }
    // RTU lines: the same devices, same unit ids, on a serial device.
    for g in scenario.groups.iter() {
        let Some(path) = &g.serial else { continue };
        let mut units = UnitMap::default();
        for (i, d) in scenario.devices.iter().enumerate() {
            if scenario.groups[d.group].id == g.id {
                units.units.insert(d.unit, i);
            }
        }
        let builder = tokio_serial::new(path, g.baud.unwrap_or(19_200));
        let serial = tokio_serial::SerialStream::open(&builder)
            .with_context(|| format!("cannot open serial line {path} for group {}", g.id))?;
        let service = server::RtuService {
            plant: plant.clone(),
            units: Arc::new(units),
        };
        let cancel = cancel.clone();
        let path = path.clone();
        tasks.spawn(async move {
            let srv = tokio_modbus::server::rtu::Server::new(serial);
            if let Err(e) = srv.serve_until(service, cancel.cancelled_owned()).await {
                tracing::warn!("RTU server on {path} stopped: {e}");
            }
        });
    }
    let endpoints = scenario
        .devices
        .iter()
        .map(|d| DeviceEndpoint {
            name: d.name.clone(),
            kind: d.kind,
            group: scenario.groups[d.group].id.clone(),
            addr: bound
                .get(&d.listen)
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            unit: d.unit,
            serial: scenario.groups[d.group].serial.clone(),
        })
        .collect();

    let (tick_tx, ticks) = watch::channel(1u64);
    {
        let plant = plant.clone();
        let truth = truth.clone();
        let cancel = cancel.clone();
        let period = tick.div_f64(opts.speed);
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(period);
            // The first step one period after start, not at once.
            iv.reset();
            // Catch up after a stall: values depend on the step index, never on timing.
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = iv.tick() => {}
                    () = cancel.cancelled() => return,
                }
                let (n, transitions) = match plant.write() {
                    Ok(mut p) => {
                        let tr = p.step();
                        (p.tick(), tr)
                    }
                    Err(_) => return,
                };
                truth.record(&scenario, &transitions);
                let _ = tick_tx.send(n);
            }
        });
    }
    Ok(SimHandle {
        endpoints,
        listeners,
        plant,
        truth,
        ticks,
        cancel,
        tasks,
        seed,
        tick,
    })
}

/// Summaries like "pot-001..pot-008 (8 cell) on 127.0.0.1:5020 units 1-8".
fn describe(handle: &SimHandle, scenario: &Scenario) -> Vec<String> {
    let mut out = Vec::new();
    for g in &scenario.groups {
        let eps: Vec<&DeviceEndpoint> = handle
            .endpoints
            .iter()
            .filter(|e| e.group == g.id)
            .collect();
        let (Some(first), Some(last)) = (eps.first(), eps.last()) else {
            continue;
        };
        let names = if eps.len() == 1 {
            first.name.clone()
        } else {
            format!("{}..{}", first.name, last.name)
        };
        let place = if g.ports.is_some() {
            format!(
                "{}:{}-{} (one port each, unit {})",
                first.addr.ip(),
                first.addr.port(),
                last.addr.port(),
                first.unit
            )
        } else if eps.len() == 1 {
            format!("{} unit {}", first.addr, first.unit)
        } else {
            format!("{} units {}-{}", first.addr, first.unit, last.unit)
        };
        let mut line = format!(
            "group {}: {} {} {names} on {place}",
            g.id,
            eps.len(),
            g.kind.as_str(),
        );
        if let Some(s) = &g.serial {
            line.push_str(&format!(", RTU on {s} @ {} baud", g.baud.unwrap_or(19_200)));
        }
        out.push(line);
    }
    out
}

/// `alsentry sim`: run until Ctrl-C (or `--run-for`).
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let scenario = Scenario::from_file(&args.scenario)?;
    let opts = StartOptions {
        seed: args.seed,
        truth: args.truth.clone(),
        listen_host: args.listen_host.clone(),
        ephemeral_ports: false,
        speed: args.speed,
    };
    let handle = start(scenario.clone(), opts).await?;
    println!(
        "alsentry sim: scenario {} (seed {}, tick {}, speed {}x, {} devices, {} faults)",
        args.scenario.display(),
        handle.seed(),
        humantime::format_duration(scenario.tick),
        args.speed,
        scenario.devices.len(),
        // Scripted and scheduled: what this seed's ground truth will hold (beam moves aside).
        scenario.faults_for_seed(handle.seed()).len()
    );
    for line in describe(&handle, &scenario) {
        println!("  {line}");
    }
    match &args.truth {
        Some(p) => println!("  ground truth -> {}", p.display()),
        None => println!("  ground truth not written (use --truth FILE)"),
    }
    match args.run_for {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            }
        }
        None => tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?,
    }
    handle.stop().await;
    Ok(())
}
