//! Throughput of the rule engine: `Engine::on_batch` over a potline of simulated cells, each
//! batch carrying one poll of every tag of the cell template (22 tags), with 4 rules on each
//! watched tag and a 600-sample window (600 s at 1 s polling). Criterion reports tag samples
//! per second (one element = one tag value of one batch).

use std::hint::black_box;
use std::path::Path;

use alsentry::config::Config;
use alsentry::core::engine::{AlarmEvent, Engine, SampleBatch};
use alsentry::core::model::{Quality, Ts};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const EPOCH: Ts = 1_764_000_000_000;
const POLL_MS: Ts = 1_000;

/// The simulator's cell register map (config/templates/cell.toml), inlined so the bench does
/// not depend on the working directory.
const CELL_TAGS: &str = r#"
[templates.cell]
tags = [
  { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" },
  { name = "current", table = "input", address = 2, type = "f32", order = "CDAB", unit = "kA" },
  { name = "bath_temp", table = "input", address = 4, type = "i16", scale = 0.1, unit = "degC" },
  { name = "alumina", table = "input", address = 5, type = "u16", scale = 0.01, unit = "wt%" },
  { name = "resistance", table = "input", address = 6, type = "u16", scale = 0.001, unit = "uOhm" },
  { name = "status", table = "input", address = 7, type = "u16" },
  { name = "feeding", table = "input", address = 7, type = "bool", bit = 0 },
  { name = "ae_active", table = "input", address = 7, type = "bool", bit = 1 },
  { name = "overfeed", table = "input", address = 7, type = "bool", bit = 2 },
  { name = "underfeed", table = "input", address = 7, type = "bool", bit = 3 },
  { name = "line_low", table = "input", address = 7, type = "bool", bit = 4 },
  { name = "heartbeat", table = "input", address = 8, type = "u16" },
  { name = "voltage_mv", table = "input", address = 9, type = "u16", scale = 0.001, unit = "V" },
  { name = "line_current", table = "input", address = 10, type = "f32", order = "ABCD", unit = "kA" },
  { name = "voltage_badc", table = "input", address = 12, type = "f32", order = "BADC", unit = "V" },
  { name = "resistance_dcba", table = "input", address = 14, type = "f32", order = "DCBA", unit = "uOhm" },
  { name = "line_current_int", table = "input", address = 20, type = "u16", scale = 0.1, unit = "kA" },
  { name = "voltage_target", table = "holding", address = 0, type = "u16", scale = 0.001, unit = "V" },
  { name = "line_setpoint", table = "holding", address = 1, type = "u16", scale = 0.1, unit = "kA" },
  { name = "feed_count", table = "holding", address = 10, type = "u32", order = "ABCD" },
  { name = "ae_count", table = "holding", address = 12, type = "u16" },
  { name = "uptime", table = "holding", address = 13, type = "u32", order = "CDAB", unit = "s" },
]
"#;

const TAGS_PER_CELL: usize = 22;

/// Tags in order of interest: the analog tags a plant would actually watch come first; the
/// 22-tag case watches everything, so every sample goes through exactly 4 rules.
const WATCHED: [&str; TAGS_PER_CELL] = [
    "voltage",
    "current",
    "bath_temp",
    "alumina",
    "resistance",
    "line_current",
    "voltage_mv",
    "resistance_dcba",
    "voltage_badc",
    "line_current_int",
    "voltage_target",
    "line_setpoint",
    "status",
    "heartbeat",
    "feed_count",
    "ae_count",
    "uptime",
    "feeding",
    "ae_active",
    "overfeed",
    "underfeed",
    "line_low",
];

/// Baseline value of each of the 22 tags (index = tag index), around which samples wander.
const BASE: [f64; TAGS_PER_CELL] = [
    4.1, 500.0, 955.0, 3.0, 5.0, 5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 100.0, 4.1, 500.0, 4.1, 5.0, 500.0,
    4.1, 500.0, 1000.0, 0.0, 3600.0,
];

/// Agent config with `cells` cells and, on each of the first `watched` analog tags, four rules:
/// high, slope over 600 s, noise over 600 s, and frozen (variant "frozen") or predict.
fn config(cells: usize, watched: usize, fourth: &str) -> Config {
    let mut text = format!(
        r#"
[agent]
id = "bench"
site = "bench-site"
area = "potline-1"

[mqtt]
url = "mqtt://127.0.0.1:1883"
{CELL_TAGS}
[[devices]]
name = "pot-{{index:03}}"
template = "cell"
endpoint = "tcp://127.0.0.1:{{port}}"
ports = "20000-{last}"
unit = 1
poll = "1s"
"#,
        last = 20_000 + cells - 1
    );
    for tag in WATCHED.iter().take(watched) {
        let i = tag_index(tag);
        let (base, spread) = (BASE[i], BASE[i].abs() * 0.01 + 0.01);
        text.push_str(&format!(
            r#"
[[rules]]
name = "{tag}_high"
template = "cell"
tag = "{tag}"
type = "high"
limit = {high}
deadband = {db}

[[rules]]
name = "{tag}_slope"
template = "cell"
tag = "{tag}"
type = "slope"
window = "600s"
per = "min"
limit = {slope}

[[rules]]
name = "{tag}_noise"
template = "cell"
tag = "{tag}"
type = "noise"
window = "600s"
limit = {noise}
"#,
            high = base + 3.0 * spread,
            db = spread * 0.5,
            slope = spread,
            noise = spread * 2.0,
        ));
        if fourth == "frozen" {
            text.push_str(&format!(
                r#"
[[rules]]
name = "{tag}_frozen"
template = "cell"
tag = "{tag}"
type = "frozen"
window = "600s"
"#
            ));
        } else {
            text.push_str(&format!(
                r#"
[[rules]]
name = "{tag}_predict"
template = "cell"
tag = "{tag}"
type = "predict"
window = "600s"
limit = {limit}
horizon = "30m"
"#,
                limit = base + 10.0 * spread
            ));
        }
    }
    match Config::from_str(Path::new("bench.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("bench config does not load: {e}\n{text}"),
    }
}

fn tag_index(name: &str) -> usize {
    CELL_TAGS
        .lines()
        .filter(|l| l.contains("name = "))
        .position(|l| l.contains(&format!("name = \"{name}\"")))
        .unwrap_or_else(|| panic!("no tag {name}"))
}

/// Pre-generated polls: `rounds` rounds of every cell, values wandering around their base with
/// a rare excursion above the high limit so alarms toggle now and then.
struct Feed {
    batches: Vec<SampleBatch>,
    cells: usize,
}

impl Feed {
    const ROUNDS: usize = 64;

    fn new(cells: usize) -> Feed {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut batches = Vec::with_capacity(cells * Self::ROUNDS);
        for round in 0..Self::ROUNDS {
            for cell in 0..cells {
                let values = (0..TAGS_PER_CELL)
                    .map(|t| {
                        let spread = BASE[t].abs() * 0.01 + 0.01;
                        let excursion = if (round * 7 + cell) % 97 == 0 {
                            5.0
                        } else {
                            0.0
                        };
                        let v = BASE[t] + spread * (rnd() + excursion);
                        (t as u16, v, Quality::Good)
                    })
                    .collect();
                batches.push(SampleBatch {
                    device: cell as u32,
                    ts: 0,
                    values,
                });
            }
        }
        Feed { batches, cells }
    }
}

/// Runs `rounds` polls of every cell through the engine, with monotonic timestamps.
struct Driver {
    engine: Engine,
    feed: Feed,
    next: usize,
    out: Vec<AlarmEvent>,
}

impl Driver {
    fn new(cfg: &Config, cells: usize) -> Driver {
        let engine = match Engine::new(cfg) {
            Ok(e) => e,
            Err(e) => panic!("engine does not build: {e}"),
        };
        let mut d = Driver {
            engine,
            feed: Feed::new(cells),
            next: 0,
            out: Vec::new(),
        };
        // Fill every window (600 s) and then some, so removals run as in steady state.
        for _ in 0..(800 * cells) {
            d.step();
        }
        d
    }

    fn step(&mut self) {
        let i = self.next;
        self.next += 1;
        let round = i / self.feed.cells;
        let len = self.feed.batches.len();
        let b = &mut self.feed.batches[i % len];
        let ts = EPOCH + round as Ts * POLL_MS + (i % self.feed.cells) as Ts;
        b.ts = ts;
        self.out.clear();
        self.engine.on_batch(black_box(b), ts, &mut self.out);
    }
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_on_batch");
    // Per iteration: one batch of 22 tag samples.
    g.throughput(Throughput::Elements(TAGS_PER_CELL as u64));
    for (cells, watched, fourth) in [
        (100, 22, "frozen"),
        (100, 22, "predict"),
        (100, 4, "frozen"),
        (100, 8, "frozen"),
        (100, 8, "predict"),
        (400, 8, "frozen"),
        (100, 0, "frozen"),
    ] {
        let cfg = config(cells, watched, fourth);
        let mut d = Driver::new(&cfg, cells);
        let id = format!(
            "{cells}cells_{watched}x4rules_{fourth}_{}rules_per_batch",
            watched * 4
        );
        g.bench_function(BenchmarkId::from_parameter(id), |b| b.iter(|| d.step()));
    }
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
