//! Hot-path costs of the rule engine's building blocks: one sample entering and one leaving a
//! 600-sample window, and one derived-tag evaluation.

use std::hint::black_box;

use alsentry::core::expr::Expr;
use alsentry::core::model::Ts;
use alsentry::core::stats::{Cusum, Ewma, MinMax, Moments, Regression};
use criterion::{criterion_group, criterion_main, Criterion};

const WINDOW: usize = 600;
const STEP_MS: Ts = 500;
const EPOCH: Ts = 1_764_000_000_000;

/// Pre-generated samples (power-of-two ring) so the loop measures only the statistic.
struct Feed {
    values: Vec<f64>,
    next: usize,
}

impl Feed {
    const LEN: usize = 4096;

    fn new() -> Self {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let values = (0..Self::LEN)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let noise = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                4.3 + 0.02 * noise + 1e-5 * i as f64
            })
            .collect();
        Self { values, next: 0 }
    }

    fn at(&self, i: usize) -> (Ts, f64) {
        (EPOCH + i as Ts * STEP_MS, self.values[i & (Self::LEN - 1)])
    }

    /// (entering, leaving) sample for a full sliding window.
    fn step(&mut self) -> ((Ts, f64), (Ts, f64)) {
        let i = self.next;
        self.next += 1;
        (self.at(i + WINDOW), self.at(i))
    }
}

fn bench_window<S>(
    c: &mut Criterion,
    name: &str,
    mut stat: S,
    add: impl Fn(&mut S, Ts, f64),
    remove: impl Fn(&mut S, Ts, f64),
) {
    let mut feed = Feed::new();
    for i in 0..WINDOW {
        let (t, v) = feed.at(i);
        add(&mut stat, t, v);
    }
    c.bench_function(name, |b| {
        b.iter(|| {
            let ((t_in, v_in), (t_out, v_out)) = feed.step();
            add(&mut stat, black_box(t_in), black_box(v_in));
            remove(&mut stat, black_box(t_out), black_box(v_out));
        })
    });
    black_box(&stat);
}

fn stats(c: &mut Criterion) {
    bench_window(
        c,
        "regression_add_remove_600",
        Regression::new(),
        |s, t, v| s.add(t, v),
        |s, t, v| s.remove(t, v),
    );
    bench_window(
        c,
        "moments_add_remove_600",
        Moments::new(),
        |s, t, v| s.add(t, v),
        |s, t, v| s.remove(t, v),
    );
    bench_window(
        c,
        "minmax_add_remove_600",
        MinMax::new(WINDOW),
        |s, t, v| {
            let _ = s.add(t, v);
        },
        |s, t, v| s.remove(t, v),
    );

    let mut fit = Regression::new();
    let feed = Feed::new();
    for i in 0..WINDOW {
        let (t, v) = feed.at(i);
        fit.add(t, v);
    }
    c.bench_function("regression_slope_and_rms", |b| {
        b.iter(|| {
            let f = black_box(&fit);
            (f.slope_per_s(), f.residual_rms())
        })
    });

    let mut ewma = Ewma::new(0.2).unwrap();
    let mut cusum = Cusum::new(0.5, 5.0).unwrap();
    let mut feed = Feed::new();
    c.bench_function("ewma_zscore_cusum_update", |b| {
        b.iter(|| {
            let ((_, v), _) = feed.step();
            let z = ewma.zscore(black_box(v)).unwrap_or(0.0);
            ewma.update(v);
            cusum.update(z)
        })
    });

    // Everything one tag with four rules might touch per sample: slope fit, moments, min/max
    // (frozen check), EWMA + CUSUM on the fit residual, and a slope read.
    let mut fit = Regression::new();
    let mut moments = Moments::new();
    let mut minmax = MinMax::new(WINDOW);
    let mut feed = Feed::new();
    for i in 0..WINDOW {
        let (t, v) = feed.at(i);
        fit.add(t, v);
        moments.add(t, v);
        let _ = minmax.add(t, v);
    }
    c.bench_function("tag_sample_all_stats_600", |b| {
        b.iter(|| {
            let ((t_in, v_in), (t_out, v_out)) = feed.step();
            let (t_in, v_in) = (black_box(t_in), black_box(v_in));
            let predicted = fit.predict_at(t_in).unwrap_or(v_in);
            fit.add(t_in, v_in);
            moments.add(t_in, v_in);
            let _ = minmax.add(t_in, v_in);
            fit.remove(t_out, v_out);
            moments.remove(t_out, v_out);
            minmax.remove(t_out, v_out);
            let residual = v_in - predicted;
            let z = ewma.zscore(residual).unwrap_or(0.0);
            ewma.update(residual);
            let state = cusum.update(z);
            (fit.slope_per_s(), minmax.is_frozen(), state.alarm)
        })
    });
}

fn expressions(c: &mut Criterion) {
    let cases = [
        (
            "eval_pseudo_resistance",
            "(voltage - 1.65) / current * 1000",
        ),
        ("eval_power", "voltage * current"),
        (
            "eval_guarded_clamp",
            "if(current > 1, clamp((voltage - 1.65) / current * 1000, 0, 20), 0)",
        ),
    ];
    for (name, src) in cases {
        let expr = Expr::parse(src).unwrap();
        let compiled = expr
            .compile(|n| match n {
                "voltage" => Some(0),
                "current" => Some(1),
                _ => None,
            })
            .unwrap();
        let slots = [4.0, 500.0];
        c.bench_function(name, |b| b.iter(|| compiled.eval(black_box(&slots))));
    }
    c.bench_function("parse_and_compile_pseudo_resistance", |b| {
        b.iter(|| {
            Expr::parse(black_box("(voltage - 1.65) / current * 1000"))
                .and_then(|e| e.compile(|n| if n == "voltage" { Some(0) } else { Some(1) }))
        })
    });
}

criterion_group!(benches, stats, expressions);
criterion_main!(benches);
