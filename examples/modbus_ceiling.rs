//! Transport ceiling for the end-to-end bench: a bare tokio-modbus client polling simulated
//! cells back to back, as fast as they answer. `--client alsentry` runs the same loop on
//! alsentry's own Modbus TCP client (`io/modbus.rs`) instead: the ceiling of the agent's own
//! transport, so that the agent's share of it is the cost of everything else it does. `--plan alsentry` (default) issues the 4 reads per
//! poll alsentry's planner settles on for the cell template once it has probed the simulator's
//! unmapped registers (input 18-19, holding 2-9: exception 02) out of its first plan (input 0-20,
//! holding 0-16): input 0-17, 20 and holding 0-1, 10-16, the same 4 reads a hand-written client
//! needs (`--plan minimal`, kept as an alias). `--plan flat16` is the one read (input 0-31) of
//! issue 22's 16-float32 cell (`examples/flat_cells.rs`). No decoding, no rules, no MQTT:
//! what is left is the cost of Modbus TCP on this machine, simulator included.
//!
//! `cargo run --release --example modbus_ceiling -- --cells 100 --seconds 20`
//! Prints one JSON line: {"cells":..,"seconds":..,"polls":..,"polls_per_s":..,"errors":..}.
//! `--seconds 0` runs until SIGTERM or SIGINT, with no warm-up, and its last line holds the
//! counters since start: {"polls":..,"errors":..,"final":true}. `--progress` prints the same
//! cumulative counters ("final":false) at once on each SIGUSR1, in either mode: bench/e2e.py
//! reads them to alternate this loop and the agent in short slices on the same simulator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alsentry::core::decode::Table;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_modbus::client::Reader;
use tokio_modbus::Slave;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the first cell; cell i listens on first_port + i.
    #[arg(long, default_value_t = 15100)]
    first_port: u16,
    #[arg(long, default_value_t = 100)]
    cells: u16,
    /// Seconds counted; 0: run until SIGTERM or SIGINT.
    #[arg(long, default_value_t = 20.0, value_parser = seconds)]
    seconds: f64,
    /// Seconds polled before counting starts (connections open, caches warm).
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    warmup: f64,
    /// Reads per poll: "alsentry" (the agent's learned plan for the simulated cell, 4 reads),
    /// "minimal" (the same) or "flat16" (issue 22's cell: input 0-31 in one read).
    #[arg(long, default_value = "alsentry")]
    plan: String,
    /// Print the cumulative counters on each SIGUSR1.
    #[arg(long)]
    progress: bool,
    /// Worker threads of the runtime (default: one per core, tokio's default).
    #[arg(long)]
    threads: Option<usize>,
    /// The Modbus client: "tokio-modbus" or "alsentry" (the agent's own TCP client).
    #[arg(long, default_value = "tokio-modbus", value_parser = ["tokio-modbus", "alsentry"])]
    client: String,
}

/// One connection of either client.
enum Client {
    TokioModbus(tokio_modbus::client::Context),
    Alsentry(alsentry::io::modbus::Connection),
}

impl Client {
    async fn connect(alsentry: bool, host: &str, port: u16) -> anyhow::Result<Client> {
        if alsentry {
            let ep = alsentry::config::Endpoint::Tcp {
                host: host.to_string(),
                port,
            };
            let c = alsentry::io::modbus::Connection::open(&ep, TIMEOUT).await?;
            return Ok(Client::Alsentry(c));
        }
        let addr = format!("{host}:{port}").parse()?;
        Ok(Client::TokioModbus(
            tokio_modbus::client::tcp::connect_slave(addr, Slave(1)).await?,
        ))
    }

    async fn read(&mut self, input: bool, start: u16, count: u16) -> bool {
        match self {
            Client::TokioModbus(ctx) => {
                let r = if input {
                    ctx.read_input_registers(start, count).await
                } else {
                    ctx.read_holding_registers(start, count).await
                };
                matches!(r, Ok(Ok(_)))
            }
            Client::Alsentry(c) => {
                let table = if input { Table::Input } else { Table::Holding };
                c.read(1, table, start, count, TIMEOUT).await.is_ok()
            }
        }
    }
}

/// The alsentry client's per-request timeout. The tokio-modbus loop has none, and the bench
/// stops these loops (SIGSTOP) for seconds at a time: a shorter one would time out requests
/// whose replies are waiting, and a timed-out connection is out of step for good.
const TIMEOUT: Duration = Duration::from_secs(3600);

/// A finite, non-negative number of seconds.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds >= 0")),
    }
}

/// (input register?, start, count) of each read of one poll.
fn reads(plan: &str) -> anyhow::Result<Vec<(bool, u16, u16)>> {
    Ok(match plan {
        "alsentry" | "minimal" => vec![(true, 0, 18), (true, 20, 1), (false, 0, 2), (false, 10, 7)],
        "flat16" => vec![(true, 0, 32)],
        other => anyhow::bail!("unknown plan {other:?}: alsentry, minimal or flat16"),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let polls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Arc::new(reads(&args.plan)?);
    // Installed before any poll starts: SIGUSR1's default action ends the process.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tasks = Vec::new();
    for i in 0..args.cells {
        let port = args
            .first_port
            .checked_add(i)
            .ok_or_else(|| anyhow::anyhow!("port range passes 65535"))?;
        let (polls, errors, stop, plan) =
            (polls.clone(), errors.clone(), stop.clone(), plan.clone());
        let (host, alsentry) = (args.host.clone(), args.client == "alsentry");
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect(alsentry, &host, port).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                let mut ok = true;
                for &(input, start, count) in plan.iter() {
                    ok &= client.read(input, start, count).await;
                }
                if ok {
                    polls.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let counters = |last: bool| {
        format!(
            "{{\"polls\":{},\"errors\":{},\"final\":{last}}}",
            polls.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        )
    };
    // SIGUSR1 is answered in both modes; the timed mode ends after its window, the other on
    // SIGTERM or SIGINT.
    let progress = async {
        while usr1.recv().await.is_some() {
            if args.progress {
                println!("{}", counters(false));
            }
        }
    };
    if args.seconds <= 0.0 {
        tokio::select! {
            _ = progress => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stop.store(true, Ordering::Relaxed);
        println!("{}", counters(true));
        return Ok(());
    }
    let window = async {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        let (p0, t0) = (
            polls.load(Ordering::Relaxed),
            alsentry::clock::Stopwatch::start(),
        );
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        (
            polls.load(Ordering::Relaxed) - p0,
            t0.elapsed().as_secs_f64(),
        )
    };
    let (n, dt) = tokio::select! {
        w = window => w,
        _ = progress => anyhow::bail!("the SIGUSR1 stream ended"),
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{{\"client\":\"{}\",\"plan\":\"{}\",\"reads_per_poll\":{},\"cells\":{},\"seconds\":{:.3},\"polls\":{},\"polls_per_s\":{:.1},\"errors\":{}}}",
        args.client,
        args.plan,
        plan.len(),
        args.cells,
        dt,
        n,
        n as f64 / dt,
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
