//! Recordings of the simulated potline with anode effects, as `[record]` writes them: polled
//! every second and decoded as the pollers do, for `tune` (tests/it/tune.rs and the Chromium
//! check of its report in tests/interop/).

use std::path::{Path, PathBuf};

use alsentry::config::record::RecordConfig;
use alsentry::config::Config;
use alsentry::core::decode::{decode_at, Image, Table};
use alsentry::core::driver::sample_of;
use alsentry::core::engine::SampleBatch;
use alsentry::core::model::{BadReason, Quality, Ts};
use alsentry::io::record::recorder;
use alsentry::sim::{Plant, Scenario};

/// 6 cells with the shipped cell template and presets (copied, so a test can edit the rules).
pub fn config(dir: &Path) -> PathBuf {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
    for f in ["cell.toml", "cell-rules.toml"] {
        std::fs::copy(templates.join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("plant.toml");
    std::fs::write(
        &path,
        r#"include = ["cell.toml", "cell-rules.toml"]
[agent]
id = "gw-tune"
site = "s"
area = "potline-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "pot-{unit:03}"
template = "cell"
endpoint = "tcp://127.0.0.1:5020"
units = "1-6"
poll = "1s"
"#,
    )
    .unwrap();
    path
}

/// Anode effects from underfeeding (10 min precursor, then the voltage jump) on the given
/// cells at the given minutes.
pub fn scenario(seed: u64, effects: &[(u32, u32)]) -> Scenario {
    let mut s = format!(
        r#"[plant]
name = "tune"
seed = {seed}
tick = "100ms"
line_current_ka = 500.0
[[groups]]
id = "potline"
kind = "cell"
name = "pot-{{unit:03}}"
listen = "127.0.0.1:5020"
units = "1-6"
"#
    );
    for (cell, minute) in effects {
        s.push_str(&format!(
            "[[faults]]\nkind = \"anode_effect\"\ndevices = [\"pot-{cell:03}\"]\nat = \"{minute}m\"\nduration = \"10m45s\"\nparams = {{ precursor = \"10m\", v_min = 10.0, v_max = 40.0 }}\n"
        ));
    }
    Scenario::from_str(&s).unwrap()
}

/// The tags the presets read, and the anode-effect register.
pub const RECORDED: [&str; 7] = [
    "voltage",
    "current",
    "resistance",
    "line_current",
    "line_setpoint",
    "bath_temp",
    "ae_active",
];

/// Polls the simulated plant every second for `minutes`, decoding as the pollers do, into a
/// `[record]` directory.
pub fn record(cfg: &Config, scenario: Scenario, seed: u64, minutes: i64, dir: &Path) {
    let rc = RecordConfig {
        dir: dir.to_path_buf(),
        max_size: 4 << 20,
        max_files: 1000,
        tags: Some(RECORDED.iter().map(|t| t.to_string()).collect()),
    };
    let (rec, writer) = recorder(&rc, cfg, 1 << 20);
    let thread = std::thread::spawn(move || writer.run());
    let epoch: Ts = 1_795_824_000_000;
    let tick_ms = scenario.tick.as_millis() as i64;
    let mut plant = Plant::new(scenario.clone(), seed);
    let map: Vec<usize> = cfg
        .devices
        .iter()
        .map(|d| {
            scenario
                .devices
                .iter()
                .position(|s| s.name == d.name)
                .unwrap()
        })
        .collect();
    for _ in 0..(minutes * 60_000 / tick_ms) {
        plant.step();
        let rel = plant.tick() as i64 * tick_ms;
        if rel % 1000 != 0 {
            continue;
        }
        for (di, d) in cfg.devices.iter().enumerate() {
            let image = plant.image(map[di]).unwrap();
            let values = d
                .tags
                .iter()
                .enumerate()
                .map(|(ti, t)| {
                    let table = match t.encoding.table {
                        Table::Input => Image::Registers {
                            start: 0,
                            words: &image.input,
                        },
                        Table::Holding => Image::Registers {
                            start: 0,
                            words: &image.holding,
                        },
                        Table::Discrete => Image::Bits {
                            start: 0,
                            bits: &image.discrete,
                        },
                        Table::Coil => {
                            return (ti as u16, f64::NAN, Quality::Bad(BadReason::Exception(2)))
                        }
                    };
                    let (v, q) = sample_of(decode_at(&t.encoding, t.address, table));
                    (ti as u16, v, q)
                })
                .collect();
            // Each cell polled at its own millisecond, as live.
            rec.offer(&SampleBatch {
                device: di as u32,
                ts: epoch + rel + di as i64 * 7,
                values,
            });
        }
    }
    drop(rec);
    thread.join().unwrap();
}
