//! The cell of issue 22's harness: a Modbus TCP server per cell on consecutive ports, each
//! serving 16 float32 values (big-endian, ABCD) in input registers 0-31, read in one request.
//! Every value drifts a little each tick, so a deadband or frozen rule sees a live signal, and
//! prints with float32 noise like a real meter's. Anything outside input 0-31 answers
//! exception 02. bench/e2e.py (`--cell flat16`) starts it; `alsentry sim` plays the full cell.
//!
//! `cargo run --release --example flat_cells -- --first-port 25100 --cells 400`
//! Prints `{"ready":true,"first_port":..,"cells":..}` once every port listens, then serves
//! until killed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;

/// Values per cell (two registers each).
const VALUES: u16 = 16;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the first cell; cell i listens on first_port + i.
    #[arg(long, default_value_t = 25100)]
    first_port: u16,
    #[arg(long, default_value_t = 400)]
    cells: u16,
    /// How often the values move.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The value of tag `tag` of cell `cell` at tick `tick`: a base per tag plus a slow wave and
/// a little jitter, so consecutive polls differ in the last digits.
fn value(cell: u16, tag: u16, tick: u64) -> f32 {
    let base = 100.0 + 25.0 * f64::from(tag) + 0.5 * f64::from(cell % 20);
    let phase = f64::from(cell) * 0.37 + f64::from(tag) * 1.3;
    let wave = (tick as f64 * 0.05 + phase).sin();
    let jitter = ((tick
        .wrapping_mul(2_654_435_761)
        .wrapping_add(u64::from(cell) * 97 + u64::from(tag))
        % 1000) as f64
        - 500.0)
        * 1e-4;
    (base + wave + jitter) as f32
}

#[derive(Clone)]
struct Cell {
    index: u16,
    tick: Arc<AtomicU64>,
}

impl Service for Cell {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let answer = match req.request {
            Request::ReadInputRegisters(start, count)
                if u32::from(start) + u32::from(count) <= u32::from(2 * VALUES) =>
            {
                let tick = self.tick.load(Ordering::Relaxed);
                let words: Vec<u16> = (start..start + count)
                    .map(|a| {
                        let bits = value(self.index, a / 2, tick).to_bits();
                        if a % 2 == 0 {
                            (bits >> 16) as u16
                        } else {
                            bits as u16
                        }
                    })
                    .collect();
                Ok(Response::ReadInputRegisters(words))
            }
            Request::ReadInputRegisters(..)
            | Request::ReadHoldingRegisters(..)
            | Request::ReadCoils(..)
            | Request::ReadDiscreteInputs(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(std::future::ready(answer))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tick = Arc::new(AtomicU64::new(0));
    // Bind every port before saying ready, so the harness can start polling at once.
    let mut listeners = Vec::with_capacity(usize::from(args.cells));
    for i in 0..args.cells {
        let port = args
            .first_port
            .checked_add(i)
            .ok_or_else(|| anyhow::anyhow!("port range passes 65535"))?;
        let addr: SocketAddr = format!("{}:{port}", args.host).parse()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        listeners.push((i, listener));
    }
    for (index, listener) in listeners {
        let cell = Cell {
            index,
            tick: tick.clone(),
        };
        tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = move |stream, addr| {
                let cell = cell.clone();
                async move { accept_tcp_connection(stream, addr, |_| Ok(Some(cell.clone()))) }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
    }
    println!(
        "{{\"ready\":true,\"first_port\":{},\"cells\":{}}}",
        args.first_port, args.cells
    );
    let mut ticker = tokio::time::interval(args.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        tick.fetch_add(1, Ordering::Relaxed);
    }
}
