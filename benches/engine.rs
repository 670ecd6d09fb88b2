//! Throughput of the rule engine: `Engine::on_batch` over a potline of simulated cells, each
//! batch carrying one poll of every tag of the cell template (22 tags), with 4 rules on each
//! watched tag and a 600-sample window (600 s at 1 s polling). Criterion reports tag samples
//! per second (one element = one tag value of one batch).

use std::hint::black_box;

use alsentry::core::engine::{AlarmEvent, Engine, SampleBatch};
use alsentry::core::model::{Quality, Ts};
use alsentry::core::rule::{Direction, RuleKind};
use alsentry::core::spec::{Draft, RuleDraft, Spec};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const EPOCH: Ts = 1_764_000_000_000;
const POLL_MS: Ts = 1_000;

/// The simulator's cell tags (config/templates/cell.toml) as (name, unit), in register-map
/// order: a batch's tag index is the position here.
const CELL_TAGS: [(&str, &str); TAGS_PER_CELL] = [
    ("voltage", "V"),
    ("current", "kA"),
    ("bath_temp", "degC"),
    ("alumina", "wt%"),
    ("resistance", "uOhm"),
    ("status", ""),
    ("feeding", ""),
    ("ae_active", ""),
    ("overfeed", ""),
    ("underfeed", ""),
    ("line_low", ""),
    ("heartbeat", ""),
    ("voltage_mv", "V"),
    ("line_current", "kA"),
    ("voltage_badc", "V"),
    ("resistance_dcba", "uOhm"),
    ("line_current_int", "kA"),
    ("voltage_target", "V"),
    ("line_setpoint", "kA"),
    ("feed_count", ""),
    ("ae_count", ""),
    ("uptime", "s"),
];

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

/// A potline of `cells` cells and, on each of the first `watched` analog tags, four rules:
/// high, slope over 600 s, noise over 600 s, and frozen (variant "frozen") or predict. Built
/// as a spec directly: the bench measures the engine, not the config reader.
fn spec(cells: usize, watched: usize, fourth: &str) -> Spec {
    let mut d = Draft::new("potline-1");
    let cell = d.table(&CELL_TAGS, &[]);
    for i in 0..cells {
        d.device(&format!("pot-{:03}", i + 1), cell, POLL_MS);
    }
    const WINDOW_MS: i64 = 600_000;
    for tag in WATCHED.iter().take(watched) {
        let i = tag_index(tag);
        let (base, spread) = (BASE[i], BASE[i].abs() * 0.01 + 0.01);
        d.rule_on_all(RuleDraft::new(
            &format!("{tag}_high"),
            tag,
            RuleKind::High {
                limit: base + 3.0 * spread,
                deadband: spread * 0.5,
            },
        ));
        d.rule_on_all(RuleDraft::new(
            &format!("{tag}_slope"),
            tag,
            RuleKind::Slope {
                window_ms: WINDOW_MS,
                per_ms: 60_000,
                limit: spread,
                deadband: 0.0,
                direction: Direction::Above,
            },
        ));
        d.rule_on_all(RuleDraft::new(
            &format!("{tag}_noise"),
            tag,
            RuleKind::Noise {
                window_ms: WINDOW_MS,
                limit: spread * 2.0,
                deadband: 0.0,
            },
        ));
        if fourth == "frozen" {
            d.rule_on_all(RuleDraft::new(
                &format!("{tag}_frozen"),
                tag,
                RuleKind::Frozen {
                    window_ms: WINDOW_MS,
                },
            ));
        } else {
            d.rule_on_all(RuleDraft::new(
                &format!("{tag}_predict"),
                tag,
                RuleKind::Predict {
                    window_ms: WINDOW_MS,
                    limit: base + 10.0 * spread,
                    horizon_ms: 1_800_000,
                },
            ));
        }
    }
    match d.compile() {
        Ok(s) => s,
        Err(e) => panic!("bench spec does not compile: {e:?}"),
    }
}

fn tag_index(name: &str) -> usize {
    CELL_TAGS
        .iter()
        .position(|(n, _)| *n == name)
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
    fn new(spec: &Spec, cells: usize) -> Driver {
        let engine = Engine::new(spec);
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
        let spec = spec(cells, watched, fourth);
        let mut d = Driver::new(&spec, cells);
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
