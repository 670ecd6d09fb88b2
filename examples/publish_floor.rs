//! The publishing floor of issue 22: the cost of alsentry's job itself, done the plain way. A
//! paced bare tokio-modbus client (one connection per cell, a tokio interval per cell with
//! `MissedTickBehavior::Skip`: polls stay on their grid, a late poll goes at once and the
//! slots it passed count as missed, as alsentry's schedule does) that decodes the template's tags and publishes the same
//! JSON data message alsentry publishes per poll (`alsentry/data/1`, topic
//! `{root}/{site}/{area}/{device}/data`, numbers in alsentry's shortest float32/float64 form)
//! through a minimal rumqttc client at QoS 0. No rules, no windows, no summaries, no outbox.
//! `--no-publish` leaves the MQTT part out: the paced bare client.
//!
//! ```sh
//! cargo run --release --example publish_floor -- --template flat16.toml --template-name flat16 \
//!     --first-port 25100 --cells 400 --interval 1s --mqtt 127.0.0.1:1883 --seconds 30
//! ```
//! Prints one JSON line at the end (after `--seconds`, or on SIGTERM/SIGINT):
//! `{"mode":..,"cells":..,"polls":..,"failed":..,"missed":..,"published":..,...}`; with
//! `--progress`, also the same counters (cumulative, `"final":false`) at once on each SIGUSR1,
//! so a harness can read them at the edges of its own measuring window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alsentry::clock::{rfc3339_ms, wall_ms, Stopwatch};
use alsentry::core::payload::Num;
use anyhow::{bail, Context};
use clap::Parser;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::time::MissedTickBehavior;
use tokio_modbus::client::Reader;
use tokio_modbus::Slave;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the first cell; cell i listens on first_port + i.
    #[arg(long, default_value_t = 25100)]
    first_port: u16,
    #[arg(long, default_value_t = 100)]
    cells: u16,
    /// Poll period of every cell.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Timeout of one read, as alsentry's `timeout` (the bench configs use 500ms).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// A TOML file with `[templates.NAME] tags = [...]` in alsentry's syntax (address, table,
    /// type, order, scale, offset, bit, unit).
    #[arg(long)]
    template: std::path::PathBuf,
    #[arg(long, default_value = "cell")]
    template_name: String,
    /// Broker host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Poll only (the paced bare client): decode nothing, publish nothing.
    #[arg(long)]
    no_publish: bool,
    #[arg(long, default_value = "floor")]
    topic_root: String,
    #[arg(long, default_value = "bench")]
    site: String,
    #[arg(long, default_value = "potline")]
    area: String,
    #[arg(long, default_value = "bench")]
    agent: String,
    /// Stop after this many seconds; 0 runs until SIGTERM/SIGINT.
    #[arg(long, default_value_t = 0.0)]
    seconds: f64,
    /// Print the cumulative counters on each SIGUSR1.
    #[arg(long)]
    progress: bool,
    /// TCP_NODELAY on the broker connection (alsentry's MQTT 5 sinks; its 3.1.1 sinks keep
    /// Nagle for QoS 0 data like this floor). Off by default: Nagle then gathers the QoS 0
    /// messages into fewer segments and broker wakes.
    #[arg(long)]
    tcp_nodelay: bool,
    /// Runtime worker threads (alsentry's default `worker_threads` is 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Input,
    Holding,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    U16,
    I16,
    U32,
    I32,
    F32,
    F64,
    Bit(u8),
}

#[derive(Debug, Clone)]
struct Tag {
    table: Table,
    address: u16,
    kind: Kind,
    /// Word order of 32/64-bit values.
    order: [bool; 2],
    scale: f64,
    offset: f64,
    /// `"name":{"v":` as published.
    head: Vec<u8>,
    /// `,"q":"good","unit":"V"}` as published.
    tail: Vec<u8>,
}

impl Tag {
    fn width(&self) -> u16 {
        match self.kind {
            Kind::U16 | Kind::I16 | Kind::Bit(_) => 1,
            Kind::U32 | Kind::I32 | Kind::F32 => 2,
            Kind::F64 => 4,
        }
    }
}

/// One read of a poll: table, first address, count.
type Read = (Table, u16, u16);

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The template's tags, in order, from alsentry's template syntax.
fn load_template(path: &std::path::Path, name: &str) -> anyhow::Result<Vec<Tag>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {path:?}"))?;
    let Some(tags) = doc
        .get("templates")
        .and_then(|t| t.get(name))
        .and_then(|t| t.get("tags"))
        .and_then(|t| t.as_array())
    else {
        bail!("{path:?} has no [templates.{name}] tags");
    };
    let mut out = Vec::new();
    for t in tags {
        let s = |k: &str| t.get(k).and_then(|v| v.as_str());
        let n = |k: &str| {
            t.get(k)
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        };
        let tag_name = s("name").context("a tag without a name")?;
        let table = match s("table").unwrap_or("holding") {
            "input" => Table::Input,
            "holding" => Table::Holding,
            other => bail!("{tag_name}: table {other:?} not supported by the floor"),
        };
        let address = u16::try_from(n("address").context("a tag without an address")? as i64)?;
        let kind = match (s("type").unwrap_or("u16"), n("bit")) {
            (_, Some(bit)) => Kind::Bit(bit as u8),
            ("u16", None) => Kind::U16,
            ("i16", None) => Kind::I16,
            ("u32", None) => Kind::U32,
            ("i32", None) => Kind::I32,
            ("f32", None) => Kind::F32,
            ("f64", None) => Kind::F64,
            (other, None) => bail!("{tag_name}: type {other:?} not supported by the floor"),
        };
        // [words reversed, bytes swapped]
        let order = match s("order").unwrap_or("ABCD") {
            "ABCD" => [false, false],
            "CDAB" => [true, false],
            "BADC" => [false, true],
            "DCBA" => [true, true],
            other => bail!("{tag_name}: order {other:?}"),
        };
        out.push(Tag {
            table,
            address,
            kind,
            order,
            scale: n("scale").unwrap_or(1.0),
            offset: n("offset").unwrap_or(0.0),
            head: format!("{}:{{\"v\":", json_str(tag_name)).into_bytes(),
            tail: format!(
                ",\"q\":\"good\",\"unit\":{}}}",
                json_str(s("unit").unwrap_or(""))
            )
            .into_bytes(),
        });
    }
    Ok(out)
}

/// The reads a hand-written client would make: each run of adjacent addresses in one request.
fn plan(tags: &[Tag]) -> Vec<Read> {
    let mut spans: Vec<Read> = tags
        .iter()
        .map(|t| (t.table, t.address, t.width()))
        .collect();
    spans.sort_by_key(|&(table, a, _)| (table == Table::Holding, a));
    let mut reads: Vec<Read> = Vec::new();
    for (table, a, w) in spans {
        match reads.last_mut() {
            Some((t, start, count)) if *t == table && a <= *start + *count => {
                *count = (*count).max(a + w - *start);
            }
            _ => reads.push((table, a, w)),
        }
    }
    reads
}

fn decode(tag: &Tag, regs: &[u16]) -> f64 {
    let mut w = [0u16; 4];
    let n = usize::from(tag.width());
    w[..n].copy_from_slice(&regs[..n]);
    if tag.order[0] {
        w[..n].reverse();
    }
    if tag.order[1] {
        for x in &mut w[..n] {
            *x = x.swap_bytes();
        }
    }
    let u32v = (u32::from(w[0]) << 16) | u32::from(w[1]);
    let raw = match tag.kind {
        Kind::Bit(b) => f64::from((w[0] >> (b & 15)) & 1),
        Kind::U16 => f64::from(w[0]),
        Kind::I16 => f64::from(w[0] as i16),
        Kind::U32 => f64::from(u32v),
        Kind::I32 => f64::from(u32v as i32),
        Kind::F32 => f64::from(f32::from_bits(u32v)),
        Kind::F64 => f64::from_bits(w.iter().fold(0u64, |acc, x| (acc << 16) | u64::from(*x))),
    };
    raw * tag.scale + tag.offset
}

#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    failed: AtomicU64,
    missed: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    payload_bytes: AtomicU64,
}

struct Job {
    args: Args,
    tags: Vec<Tag>,
    reads: Vec<Read>,
    /// Per tag: (index of its read, offset of its first register in that read).
    places: Vec<(usize, usize)>,
    mqtt: Option<AsyncClient>,
    counters: Counters,
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
    let tags = load_template(&args.template, &args.template_name)?;
    let reads = plan(&tags);
    let places = tags
        .iter()
        .map(|tag| {
            reads
                .iter()
                .position(|&(t, s, n)| {
                    t == tag.table && tag.address >= s && tag.address + tag.width() <= s + n
                })
                .map(|k| (k, usize::from(tag.address - reads[k].1)))
                .context("a tag outside the read plan")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mqtt = if args.no_publish {
        None
    } else {
        let (host, port) = args.mqtt.rsplit_once(':').context("--mqtt is host:port")?;
        let mut opts =
            MqttOptions::new(format!("floor-{}", std::process::id()), host, port.parse()?);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        if args.tcp_nodelay {
            let mut net = eventloop.network_options();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
        }
        tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        Some(client)
    };
    let job = Arc::new(Job {
        args,
        tags,
        reads,
        places,
        mqtt,
        counters: Counters::default(),
    });
    // Installed before any poll starts: SIGUSR1's default action ends the process.
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let watch = Stopwatch::start();
    for i in 0..job.args.cells {
        tokio::spawn(cell(job.clone(), i));
    }
    let report = {
        let job = job.clone();
        async move {
            while usr1.recv().await.is_some() {
                if job.args.progress {
                    println!("{}", summary(&job, watch.elapsed(), false));
                }
            }
            anyhow::Ok(())
        }
    };
    let stop = async {
        if job.args.seconds > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(job.args.seconds)).await;
        } else {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = stop => r?,
        r = report => r?,
    }
    println!("{}", summary(&job, watch.elapsed(), true));
    Ok(())
}

fn summary(job: &Job, elapsed: Duration, last: bool) -> String {
    let c = &job.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let published = get(&c.published);
    format!(
        "{{\"mode\":\"{}\",\"template\":{},\"tags\":{},\"reads_per_poll\":{},\"cells\":{},\"interval_ms\":{},\"seconds\":{:.3},\"polls\":{},\"failed\":{},\"missed\":{},\"published\":{},\"publish_errors\":{},\"payload_bytes_avg\":{:.1},\"final\":{last}}}",
        if job.mqtt.is_some() { "publish" } else { "bare" },
        json_str(&job.args.template_name),
        job.tags.len(),
        job.reads.len(),
        job.args.cells,
        job.args.interval.as_millis(),
        elapsed.as_secs_f64(),
        get(&c.polls),
        get(&c.failed),
        get(&c.missed),
        published,
        get(&c.publish_errors),
        get(&c.payload_bytes) as f64 / published.max(1) as f64,
    )
}

/// One cell: connect, then poll on its own interval until the process ends.
async fn cell(job: Arc<Job>, i: u16) {
    let args = &job.args;
    let c = &job.counters;
    let period = args.interval;
    let device = format!("pot-{:03}", u32::from(i) + 1);
    let topic = format!(
        "{}/{}/{}/{device}/data",
        args.topic_root, args.site, args.area
    );
    let head = format!(
        "{{\"schema\":\"alsentry/data/1\",\"agent\":{},\"device\":{},\"ts\":\"",
        json_str(&args.agent),
        json_str(&device)
    );
    let Ok(addr) = format!(
        "{}:{}",
        args.host,
        u32::from(args.first_port) + u32::from(i)
    )
    .parse() else {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Spread the first polls evenly over 40 % of the period, as alsentry's schedule does (but
    // not on its wake grid: a minimal client wakes for each poll; docs/BENCHMARKING.md).
    let spread = period.mul_f64(0.4 * f64::from(i) / f64::from(args.cells.max(1)));
    tokio::time::sleep(spread).await;
    let mut ticks = tokio::time::interval(period);
    // Skip, not Delay: alsentry keeps each unit on its grid (next slot = last slot + period)
    // unless a whole slot passed; Delay would restart the grid after every tick more than
    // 5 ms late, and on a loaded machine lose polls alsentry does not.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let origin = ticks.tick().await;
    let watch = Stopwatch::start();
    let mut ctx = None;
    let mut regs: Vec<Vec<u16>> = vec![Vec::new(); job.reads.len()];
    let mut len_hint = 256;
    let mut first = true;
    loop {
        if !first {
            let due = ticks.tick().await;
            // Slots that passed while the previous poll ran (alsentry's `missed`).
            let late = watch.elapsed().saturating_sub(due - origin);
            c.missed.fetch_add(
                (late.as_nanos() / period.as_nanos().max(1)) as u64,
                Ordering::Relaxed,
            );
        }
        first = false;
        if ctx.is_none() {
            match tokio::time::timeout(
                args.timeout,
                tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
            )
            .await
            {
                Ok(Ok(x)) => ctx = Some(x),
                _ => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(modbus) = ctx.as_mut() else {
            continue;
        };
        let mut ok = true;
        for (k, &(table, start, count)) in job.reads.iter().enumerate() {
            let r = match table {
                Table::Input => {
                    tokio::time::timeout(args.timeout, modbus.read_input_registers(start, count))
                        .await
                }
                Table::Holding => {
                    tokio::time::timeout(args.timeout, modbus.read_holding_registers(start, count))
                        .await
                }
            };
            match r {
                Ok(Ok(Ok(words))) if words.len() == usize::from(count) => regs[k] = words,
                Ok(Ok(_)) => {
                    ok = false;
                    break;
                }
                // Transport error or timeout: the connection is suspect, open a new one.
                _ => {
                    ok = false;
                    ctx = None;
                    break;
                }
            }
        }
        if !ok {
            c.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        c.polls.fetch_add(1, Ordering::Relaxed);
        let Some(mqtt) = job.mqtt.as_ref() else {
            continue;
        };
        let mut out: Vec<u8> = Vec::with_capacity(len_hint);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(rfc3339_ms(wall_ms()).as_bytes());
        out.extend_from_slice(b"\",\"values\":{");
        for (n, (tag, &(k, off))) in job.tags.iter().zip(&job.places).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let v = decode(tag, &regs[k][off..]);
            out.extend_from_slice(&tag.head);
            if v.is_finite() {
                // alsentry's number form (shortest float32 text for a float32 value).
                let _ = serde_json::to_writer(&mut out, &Num(v));
            } else {
                out.extend_from_slice(b"null");
            }
            out.extend_from_slice(&tag.tail);
        }
        out.extend_from_slice(b"}}");
        len_hint = out.len();
        let bytes = out.len() as u64;
        match mqtt
            .publish(topic.as_str(), QoS::AtMostOnce, false, out)
            .await
        {
            Ok(()) => {
                c.published.fetch_add(1, Ordering::Relaxed);
                c.payload_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => {
                c.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
