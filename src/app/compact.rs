//! The compact data form (`[[mqtt]] data_payload = "compact"`, docs/MQTT.md): which sinks
//! take it and each device's layout, from the configuration. The payloads themselves are
//! written in `core::compact`.

use std::sync::Arc;

use crate::config::mqtt::DataPayload;
use crate::config::{Config, MqttSink};
use crate::core::compact::{CompactData, Layout, MetaTag};
use crate::core::outbound::Class;

/// Whether `sink` gets raw data in the compact form.
pub fn takes_compact(sink: &MqttSink) -> bool {
    sink.data_payload == DataPayload::Compact
}

/// The layouts of every device, in the configuration's device order; None when no sink
/// carries compact data (then nothing of it is written).
pub fn build(cfg: &Config) -> Option<CompactData> {
    let wanted = cfg
        .sinks
        .iter()
        .any(|s| takes_compact(s) && s.carries(Class::Data, None));
    if !wanted {
        return None;
    }
    // Devices expanded from one entry share their tag list, and so their layout.
    let mut shared: Vec<(*const crate::config::Tag, Arc<Layout>)> = Vec::new();
    let devices = cfg
        .devices
        .iter()
        .map(|d| {
            let key = d.tags.as_ptr();
            let layout = match shared.iter().find(|(k, _)| *k == key) {
                Some((_, l)) => l.clone(),
                None => {
                    let tags = d
                        .tags
                        .iter()
                        .map(|t| MetaTag {
                            name: t.name.clone(),
                            unit: t.unit.clone(),
                            dtype: t.encoding.dtype.as_str().to_string(),
                        })
                        .collect();
                    let l = Arc::new(Layout::new(tags));
                    shared.push((key, l.clone()));
                    l
                }
            };
            (d.name.clone(), layout)
        })
        .collect();
    Some(CompactData::new(devices))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot, watch};
    use tokio_util::sync::CancellationToken;

    use super::super::engine::{Control, EngineTask, Inputs, Outlets, Shared};
    use crate::clock::{Clock, ManualClock};
    use crate::config::Config;
    use crate::core::engine::{Engine, SampleBatch};
    use crate::core::model::Quality;
    use crate::core::outbound::Message;
    use crate::io::http::AlarmSnapshot;
    use crate::io::seq::SeqLease;
    use crate::metrics::Metrics;

    const T0: i64 = 1_767_225_600_000;

    fn config(state: &std::path::Path, devices: &str) -> Config {
        Config::from_str(
            std::path::Path::new("t.toml"),
            &format!(
                r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{}"
[[mqtt]]
name = "plant"
url = "mqtt://127.0.0.1:1883"
[[mqtt]]
name = "province"
url = "mqtt://127.0.0.2:1883"
data_payload = "compact"
[data]
mode = "change"
deadband = 0.1
{devices}
"#,
                state.display()
            ),
        )
        .unwrap()
    }

    fn device(name: &str, voltage_unit: &str) -> String {
        let port = 5020 + name.len() as u16 * 10 + u16::from(name.as_bytes()[name.len() - 1]);
        format!(
            "[[devices]]\nname = \"{name}\"\nendpoint = \"tcp://127.0.0.1:{port}\"\ntags = [ {{ name = \"voltage\", table = \"input\", address = 0, type = \"f32\", unit = \"{voltage_unit}\" }}, {{ name = \"current\", table = \"input\", address = 2, type = \"f32\", unit = \"kA\" }} ]\n"
        )
    }

    async fn next(rx: &mut mpsc::Receiver<Arc<Message>>) -> Arc<Message> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("the engine task is running")
    }

    fn json(m: &Message) -> serde_json::Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    /// The engine task writes each sink's form only, the metas at start, and after a reload
    /// the changed metas, an empty one for a removed device, and every value again under the
    /// new layout.
    #[tokio::test]
    async fn each_sink_gets_its_form_and_a_reload_republishes_the_metas() {
        let state = tempfile::tempdir().unwrap();
        let cfg = config(state.path(), &device("pot-001", "V"));
        let clock = ManualClock::new(T0);
        let (sink_txs, mut sinks): (Vec<_>, Vec<_>) =
            (0..2).map(|_| mpsc::channel::<Arc<Message>>(64)).unzip();
        let (batches, batch_rx) = mpsc::channel(16);
        let (control, control_rx) = mpsc::channel(4);
        let task = EngineTask::new(
            &cfg,
            Engine::new(&cfg.spec),
            SeqLease::open(state.path(), Default::default(), T0).unwrap(),
            Outlets::new(&cfg, sink_txs),
            Shared {
                clock: clock.clone(),
                metrics: Metrics::new(["pot-001".to_string()], []),
                alarms: watch::channel(AlarmSnapshot::default()).0,
                recorder: None,
                reloads: mpsc::channel(1).0,
                history: None,
                pulse: crate::io::health::Pulse::new(Default::default(), clock.mono()),
                report: None,
            },
        );
        let inputs = Inputs {
            batches: batch_rx,
            commands: mpsc::channel(1).1,
            control: control_rx,
            queries: mpsc::channel(1).1,
        };
        tokio::spawn(task.run(inputs, CancellationToken::new()));
        let batch = |device: u32, v: f64| SampleBatch {
            device,
            ts: T0,
            values: vec![(0, v, Quality::Good), (1, 500.0, Quality::Good)],
        };

        let meta = next(&mut sinks[1]).await;
        assert_eq!(meta.topic, "alsentry/s/a/pot-001/data/meta");
        assert!(meta.retain);
        let layout = json(&meta)["layout"].clone();
        batches.send(batch(0, 4.2)).await.unwrap();
        let full = next(&mut sinks[0]).await;
        assert_eq!(full.topic, "alsentry/s/a/pot-001/data");
        let compact = next(&mut sinks[1]).await;
        assert_eq!(compact.topic, "alsentry/s/a/pot-001/data/compact");
        assert_eq!(json(&compact)["m"], layout);
        assert_eq!(json(&compact)["v"], serde_json::json!([4.2, 500]));
        // Within the deadband: nothing in either form.
        batches.send(batch(0, 4.25)).await.unwrap();

        // A reload: pot-001's voltage now in mV (a new layout), pot-002 added.
        let swap = |cfg: Config| {
            let control = control.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                control
                    .send(Control::Swap(Box::new(cfg), tx))
                    .await
                    .unwrap();
                rx.await.unwrap().unwrap();
            }
        };
        let two = device("pot-001", "mV") + &device("pot-002", "V");
        swap(config(state.path(), &two)).await;
        let m1 = next(&mut sinks[1]).await;
        let m2 = next(&mut sinks[1]).await;
        assert_eq!(
            (m1.topic.as_str(), m2.topic.as_str()),
            (
                "alsentry/s/a/pot-001/data/meta",
                "alsentry/s/a/pot-002/data/meta"
            )
        );
        assert_ne!(json(&m1)["layout"], layout, "the unit changed");
        assert_eq!(json(&m1)["tags"][0]["unit"], "mV");
        // Every value again under the new layout, though none moved.
        batches.send(batch(0, 4.25)).await.unwrap();
        let compact = next(&mut sinks[1]).await;
        assert_eq!(json(&compact)["m"], json(&m1)["layout"]);
        assert_eq!(json(&compact)["v"], serde_json::json!([4.25, 500]));

        // pot-002 removed: its meta cleared.
        swap(config(state.path(), &device("pot-001", "mV"))).await;
        let kept = next(&mut sinks[1]).await;
        assert_eq!(kept.topic, "alsentry/s/a/pot-001/data/meta");
        let cleared = next(&mut sinks[1]).await;
        assert_eq!(cleared.topic, "alsentry/s/a/pot-002/data/meta");
        assert!(cleared.payload.is_empty() && cleared.retain);
        // The plant sink never saw a compact message or a meta.
        while let Ok(m) = sinks[0].try_recv() {
            assert!(
                m.topic.ends_with("/data") || !m.topic.contains("/data"),
                "{}",
                m.topic
            );
        }
    }
}
