//! What `alsentry check` costs on a large plant: reading and validating 10,000 devices, each
//! written as its own `[[devices]]` entry (the worst case: 10,000 tag tables), and one entry
//! expanded over every TCP port (`ports = "1-65535"`). Issue 15: both grew with the square of
//! the device count (7 s for 10,000; 65,535 ports never finished).

use std::hint::black_box;
use std::path::Path;

use alsentry::config::Config;
use criterion::{criterion_group, criterion_main, Criterion};

const HEAD: &str = r#"[agent]
id = "gw"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;
const TAGS: &str = r#"tags = [ { name = "v", table = "input", address = 0, type = "u16" }, { name = "w", table = "input", address = 1, type = "f32" } ]
"#;
const RULE: &str = r#"[[rules]]
name = "high"
devices = ["*"]
tag = "v"
type = "high"
limit = 8.0
"#;

/// 10,000 entries of one device each, on 10,000 endpoints.
pub fn ten_thousand_entries() -> String {
    let mut s = HEAD.to_string();
    for i in 0..10_000 {
        s.push_str(&format!(
            "[[devices]]\nname = \"d{i}\"\nendpoint = \"tcp://10.0.{}.{}:502\"\n{TAGS}",
            i / 250,
            i % 250
        ));
    }
    s + RULE
}

/// One entry over every TCP port.
pub fn every_port() -> String {
    format!("{HEAD}[[devices]]\nname = \"p{{port}}\"\nendpoint = \"tcp://127.0.0.1:{{port}}\"\nports = \"1-65535\"\n{TAGS}{RULE}")
}

fn check(c: &mut Criterion) {
    let mut g = c.benchmark_group("check");
    g.sample_size(10);
    for (name, text) in [
        ("10000_entries", ten_thousand_entries()),
        ("ports_1_65535", every_port()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let cfg = Config::from_str(Path::new("bench.toml"), black_box(&text));
                black_box(cfg.map(|c| c.devices.len()).unwrap_or(0))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
