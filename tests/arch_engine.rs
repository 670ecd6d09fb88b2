//! The engine side of the agent end to end: what leaves it, per sink.

mod support;

use std::time::Duration;

use alsentry::broker::EmbeddedBroker;
use alsentry::clock::SystemClock;
use alsentry::config::Config;
use support::modbus::{f32_words, Device, Served};
use support::mqtt::Subscriber;

async fn broker() -> EmbeddedBroker {
    tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap()
}

/// Regression: raw data went out under the first sink's `topic_root` on every sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_data_reaches_each_sink_under_its_own_topic_root() {
    let cells = Served::start(Device::default()).await;
    cells.device.set_input(1, 0, &f32_words(4.25, "ABCD"));
    let (plant, province) = (broker().await, broker().await);
    let mut plant_sub = Subscriber::connect("127.0.0.1", plant.addr.port(), "plant-sub", "#").await;
    let mut province_sub =
        Subscriber::connect("127.0.0.1", province.addr.port(), "prov-sub", "#").await;
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[[mqtt]]
name = "plant"
url = "{plant}"
topic_root = "plant"

[[mqtt]]
name = "province"
url = "{province}"
topic_root = "province"

[data]
mode = "poll"

[[devices]]
name = "pot-001"
endpoint = "tcp://{cells}"
unit = 1
poll = "100ms"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", unit = "V" }} ]
"#,
        state = state.path().display(),
        plant = plant.url(),
        province = province.url(),
        cells = cells.addr,
    );
    let cfg = Config::from_str(std::path::Path::new("two-roots.toml"), &text).unwrap();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let w = Duration::from_secs(10);
    let is_data = |m: &support::mqtt::Msg| m.topic.ends_with("/pot-001/data");
    let on_plant = plant_sub.wait_for(w, is_data).await.expect("data on plant");
    let on_province = province_sub
        .wait_for(w, is_data)
        .await
        .expect("data on province");
    running.stop().await;
    assert_eq!(on_plant.topic, "plant/s/a/pot-001/data");
    assert_eq!(on_province.topic, "province/s/a/pot-001/data");
    for m in [&on_plant, &on_province] {
        assert_eq!(m.json()["values"]["voltage"]["v"], 4.25, "{}", m.topic);
    }
}
