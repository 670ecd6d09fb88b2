//! Micro benches of the per-poll building blocks: register decoding (every type and word
//! order), request planning for a 400-tag device, one window update with a rule cursor, and
//! payload building (alarm, summary, raw data).

use std::hint::black_box;
use std::sync::Arc;

use alsentry::core::alarm::{Cause, Transition};
use alsentry::core::decode::{decode_bit, decode_registers, DataType, Encoding, Table, WordOrder};
use alsentry::core::engine::{AlarmEvent, DeviceSummary, SampleBatch, TagSummary};
use alsentry::core::model::{Priority, Quality, Ts};
use alsentry::core::payload::{alarm_payload, summary_payload, DataFilter, DataTags, Identity};
use alsentry::core::plan::{Limits, Planner, TagSpan};
use alsentry::core::window::{Accumulate, Point, SpanCursor, Window};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const EPOCH: Ts = 1_764_000_000_000;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let regs: [u16; 4] = [0x4083, 0x3333, 0x1234, 0x5678];
    let types = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::I64,
        DataType::F64,
    ];
    let orders = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];
    for dtype in types {
        for order in orders {
            // 16-bit types ignore the order: one case each.
            if dtype.registers() == 1 && order != WordOrder::Abcd {
                continue;
            }
            let enc = Encoding {
                table: Table::Input,
                dtype,
                order,
                bit: None,
                scale: 0.1,
                offset: 0.0,
            };
            let id = format!("{}_{}", dtype.as_str(), order.as_str());
            g.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| decode_registers(black_box(&enc), black_box(&regs)))
            });
        }
    }
    let bit_in_register = Encoding {
        table: Table::Input,
        dtype: DataType::Bool,
        order: WordOrder::Abcd,
        bit: Some(3),
        scale: 1.0,
        offset: 0.0,
    };
    g.bench_function(BenchmarkId::from_parameter("bool_bit_of_register"), |b| {
        b.iter(|| decode_registers(black_box(&bit_in_register), black_box(&regs)))
    });
    let coil = Encoding {
        table: Table::Coil,
        ..bit_in_register
    };
    g.bench_function(BenchmarkId::from_parameter("bool_coil"), |b| {
        b.iter(|| decode_bit(black_box(&coil), black_box(true)))
    });
    g.finish();
}

/// 400 tags: 300 input registers (mixed widths, small holes) and 100 holding registers.
fn spans_400() -> Vec<TagSpan> {
    let mut spans = Vec::with_capacity(400);
    let mut addr = 0u16;
    for i in 0..300u16 {
        let width = [1, 2, 1, 4][usize::from(i % 4)];
        spans.push(TagSpan {
            table: Table::Input,
            start: addr,
            width,
        });
        addr += width + u16::from(i % 10 == 9) * 3;
    }
    for i in 0..100u16 {
        spans.push(TagSpan {
            table: Table::Holding,
            start: 1000 + i * 2,
            width: 2,
        });
    }
    spans
}

fn plan(c: &mut Criterion) {
    let spans = spans_400();
    let limits = Limits {
        max_gap: 16,
        max_registers: 125,
        max_bits: 2000,
    };
    let blocks = Planner::new(spans.clone(), limits).blocks().len();
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(400));
    g.bench_function(format!("400_tags_to_{blocks}_reads"), |b| {
        b.iter(|| Planner::new(black_box(spans.clone()), limits))
    });
    // The split after an exception 02 on the first read.
    g.bench_function("split_first_read", |b| {
        b.iter_batched(
            || Planner::new(spans.clone(), limits),
            |mut p| {
                let first = p.blocks()[0].clone();
                p.split(&first)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

#[derive(Default)]
struct Sums {
    n: u64,
    sum: f64,
    sum_sq: f64,
}

impl Accumulate for Sums {
    fn add(&mut self, p: Point) {
        self.n += 1;
        self.sum += p.v;
        self.sum_sq += p.v * p.v;
    }
    fn remove(&mut self, p: Point) {
        self.n -= 1;
        self.sum -= p.v;
        self.sum_sq -= p.v * p.v;
    }
}

fn window(c: &mut Criterion) {
    // A 600-sample span (600 s at 1 s) over a ring sized like the engine sizes it (754).
    let mut w = Window::new(alsentry::core::window::capacity_for(600_000, 1_000));
    let mut cursor = SpanCursor::new(600_000, &w);
    let mut acc = Sums::default();
    let mut t: Ts = EPOCH;
    let mut push = move |w: &mut Window, cursor: &mut SpanCursor, acc: &mut Sums| {
        t += 1_000;
        let p = Point {
            ts: t,
            v: (t % 977) as f64,
        };
        if let Some((seq, old)) = w.push(p) {
            cursor.evicted(seq, old, acc);
        }
        cursor.advance(w, t, acc);
    };
    for _ in 0..2_000 {
        push(&mut w, &mut cursor, &mut acc);
    }
    c.bench_function("window_push_and_cursor_600", |b| {
        b.iter(|| push(&mut w, &mut cursor, &mut acc))
    });
    black_box(acc.sum);
}

fn identity() -> Identity {
    Identity {
        topic_root: "alsentry".into(),
        agent: "gw-qz-01".into(),
        site: "qingzhen".into(),
        area: "potline-1".into(),
    }
}

fn payloads(c: &mut Criterion) {
    let who = identity();
    let ev = AlarmEvent {
        device: Arc::from("pot-017"),
        rule: Arc::from("anode_effect"),
        tag: Arc::from("voltage"),
        unit: Arc::from("V"),
        priority: Priority::Critical,
        transition: Transition {
            from: "NORMAL",
            to: "UNACK",
            at: EPOCH,
            cause: Cause::Condition,
            by: None,
            note: None,
        },
        value: Some(23.4),
        limit: Some(8.0),
        quality: Quality::Good,
        message: "Anode effect on pot-017: 23.4 V".into(),
        since: EPOCH,
        active_since: Some(EPOCH),
        acked_by: None,
        shelved_until: None,
    };
    let mut g = c.benchmark_group("payload");
    g.bench_function("alarm_payload", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            alarm_payload(black_box(&who), seq, black_box(&ev))
        })
    });
    g.bench_function("alarm_topic", |b| {
        b.iter(|| who.alarm_topic(black_box("pot-017"), black_box("anode_effect")))
    });

    // A cell summary: 22 tags, with the cell KPI block.
    let names = [
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
    let tags: Vec<(Arc<str>, Arc<str>, TagSummary)> = names
        .iter()
        .enumerate()
        .map(|(i, (n, u))| {
            let v = 4.0 + i as f64;
            (
                Arc::from(*n),
                Arc::from(*u),
                TagSummary {
                    count: 60,
                    good: 60,
                    min: v - 0.1,
                    max: v + 0.1,
                    sum: v * 60.0,
                    sum_sq: v * v * 60.0 + 0.01,
                    last: Some(v),
                },
            )
        })
        .collect();
    let summary = DeviceSummary {
        device: Arc::from("pot-017"),
        from: EPOCH,
        to: EPOCH + 60_000,
        tags,
    };
    g.bench_function("summary_payload_22_tags", |b| {
        b.iter(|| summary_payload(black_box(&who), black_box(&summary), 0.93, 0.98))
    });

    // Raw data per poll ([data] mode = "poll"): one batch of 22 values.
    let names_owned: Vec<(String, String)> = names
        .iter()
        .map(|(n, u)| (n.to_string(), u.to_string()))
        .collect();
    let batch = SampleBatch {
        device: 16,
        ts: EPOCH,
        values: (0..22u16)
            .map(|t| (t, 4.0 + f64::from(t) * 0.37, Quality::Good))
            .collect(),
    };
    let tags = DataTags::new("pot-017", &names_owned);
    let mut filter = DataFilter::default();
    g.bench_function("data_payload_22_tags", |b| {
        b.iter(|| {
            filter.payload(
                black_box(&who.agent),
                black_box(&tags),
                black_box(&batch),
                None,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, decode, plan, window, payloads);
criterion_main!(benches);
