//! Outbox append + hand-out + ack round trips with 300-byte payloads, per fsync policy.
//!
//! Runs on whatever filesystem holds the temp dir (`TMPDIR`); fsync cost depends on it.

use alsentry::outbox::{Class, FsyncPolicy, NewRecord, Outbox, OutboxOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const T0: i64 = 1_700_000_000_000;

fn round_trips(c: &mut Criterion) {
    let payload = [0x42u8; 300];
    let topic = "acme/smelter1/potroom2/potline1/pot117/data";
    let cases: [(&str, FsyncPolicy, u64); 3] = [
        ("fsync_never/data", FsyncPolicy::Never, 0),
        // One alarm in ten: the policy's intended traffic.
        ("fsync_alarms/10pct_alarms", FsyncPolicy::Alarms, 10),
        // Every record an alarm: one fsync per append (worst case).
        ("fsync_alarms/all_alarms", FsyncPolicy::Alarms, 1),
    ];
    let mut group = c.benchmark_group("outbox_append_ack_300B");
    group.throughput(Throughput::Elements(1));
    for (name, fsync, alarm_every) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = OutboxOptions {
            fsync,
            ..OutboxOptions::default()
        };
        let (mut outbox, _) = Outbox::open(dir.path(), opts, T0).expect("open outbox");
        let mut n: u64 = 0;
        if alarm_every == 1 {
            group.sample_size(20);
        } else {
            group.sample_size(50);
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let class = if alarm_every != 0 && n.is_multiple_of(alarm_every) {
                    Class::Alarm
                } else {
                    Class::Data
                };
                let record = NewRecord {
                    class,
                    topic,
                    payload: &payload,
                    retain: false,
                    qos: 1,
                };
                let id = outbox.append(record, T0).expect("append");
                let sent = outbox.next_unsent(1).expect("next_unsent");
                assert_eq!(sent.len(), 1);
                outbox.ack(id).expect("ack");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
