//! A Sparkplug sink's CPU cost per raw-data message: the JSON data payload of one cell (8
//! tags) read into the last-value cache when stored, then turned into a DDATA (protobuf) when
//! sent. The sink does both for every data message (docs/SPARKPLUG.md).

use alsentry::io::sparkplug::{DeviceModel, Model, Session};
use alsentry::outbox::Class;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const T0: i64 = 1_796_551_200_000;

fn observe_and_encode(c: &mut Criterion) {
    let tags: Vec<(String, u32)> = (0..8).map(|i| (format!("tag{i}"), 10)).collect();
    let model = Model {
        node: Vec::new(),
        devices: vec![DeviceModel {
            name: "pot-117".into(),
            tags: tags.clone(),
            alarms: vec!["high".into(), "low".into()],
            figures: Vec::new(),
        }],
    };
    let mut session = Session::new("plant", "gw", None, &model);
    session.connected(0, T0);
    let values: Vec<String> = tags
        .iter()
        .enumerate()
        .map(|(i, (t, _))| format!(r#""{t}":{{"v":{}.25,"q":"good","unit":"V"}}"#, 4 + i))
        .collect();
    let payload = format!(
        r#"{{"schema":"alsentry/data/1","agent":"gw","device":"pot-117","ts":"2026-12-06T10:00:00.100Z","values":{{{}}}}}"#,
        values.join(",")
    )
    .into_bytes();
    // Born once, so that every iteration is a plain DDATA.
    session.observe(Class::Data, &payload);
    session.encode(Class::Data, "t", &payload, T0 + 1, 0, T0 + 1);
    let mut group = c.benchmark_group("sparkplug");
    group.throughput(Throughput::Elements(1));
    group.bench_function("observe_and_encode_ddata_8_tags", |b| {
        b.iter(|| {
            session.observe(Class::Data, &payload);
            let enc = session.encode(Class::Data, "t", &payload, T0 + 2, 0, T0 + 2);
            std::hint::black_box(enc.own)
        })
    });
    group.finish();
}

criterion_group!(benches, observe_and_encode);
criterion_main!(benches);
