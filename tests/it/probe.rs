//! `alsentry probe` over real Modbus on loopback: the built-in simulator read as `run` reads
//! it, the served values of every type and word order (table and JSON), and devices that do
//! not answer (exit 69, the device and endpoint named).

use std::path::{Path, PathBuf};
use std::time::Duration;

use alsentry::config::Config;
use alsentry::probe::{read_device, EXIT_NO_ANSWER};
use alsentry::sim::cell::sig;
use alsentry::sim::{Scenario, StartOptions};

use crate::support::modbus::{f32_words, Device, Served};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

const HEAD: &str = r#"
[agent]
id = "gw"
site = "s"
area = "a"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

/// Runs the binary; (exit code, stdout, stderr).
async fn probe(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_alsentry"))
            .arg("probe")
            .args(args)
            .output(),
    )
    .await
    .expect("probe finishes")
    .expect("probe runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped cell template against the simulator's cell: every value is the model's signal
/// as the simulator encoded it, through the same plan, client and decoder as `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_the_simulated_cell_as_the_model_holds_it() {
    let scn = Scenario::from_file(repo("config/scenarios/normal.toml")).unwrap();
    // One model step every 100 s: the registers hold still while they are read.
    let sim = alsentry::sim::start(
        scn,
        StartOptions {
            ephemeral_ports: true,
            speed: 0.001,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let ep = sim.endpoint("pot-001").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_text = format!(
        "include = [\"{}\"]\n{HEAD}\n[[devices]]\nname = \"pot-001\"\ntemplate = \"cell\"\nendpoint = \"tcp://{}\"\nunit = {}\ntags = [{{ name = \"ae_di\", table = \"discrete\", address = 1 }}]\n",
        repo("config/templates/cell.toml").display(),
        ep.addr,
        ep.unit
    );
    let path = crate::support::write_config(dir.path(), &cfg_text);
    let cfg = Config::load(&path).unwrap();
    let s = sim.signals("pot-001").unwrap();
    let r = read_device(&cfg.devices[0]).await;
    assert!(r.answered(), "{r:?}");
    assert_eq!(sim.tick(), 1, "the model stepped during the read");
    let value = |name: &str| {
        let t = r.tag(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(t.quality, "good", "{t:?}");
        t.value.unwrap().0
    };
    let f32_of = |x: f64| f64::from(x as f32);
    // f32 in all four word orders.
    assert_eq!(value("voltage"), f32_of(s[sig::VOLTAGE]));
    assert_eq!(value("voltage_badc"), f32_of(s[sig::VOLTAGE]));
    assert_eq!(value("line_current"), f32_of(s[sig::CURRENT]));
    assert_eq!(value("current"), f32_of(s[sig::CURRENT]));
    assert_eq!(value("resistance_dcba"), f32_of(s[sig::RESISTANCE]));
    let bits = (s[sig::VOLTAGE] as f32).to_bits();
    let voltage = r.tag("voltage").unwrap();
    assert_eq!(
        voltage.raw.as_deref(),
        Some(format!("0x{:04X} 0x{:04X}", bits & 0xFFFF, bits >> 16).as_str()),
        "CDAB puts the low word first"
    );
    assert_eq!((voltage.modicon.as_str(), voltage.address), ("30001", 0));
    // Scaled integers, a u32, bits of a register and a discrete input.
    assert!((value("bath_temp") - s[sig::BATH_TEMP]).abs() <= 0.05 + 1e-9);
    assert!((value("alumina") - s[sig::ALUMINA]).abs() <= 0.005 + 1e-9);
    assert_eq!(value("feed_count"), s[sig::FEED_COUNT].round());
    assert_eq!(r.tag("feed_count").unwrap().modicon, "40011");
    let status = s[sig::STATUS] as u32;
    for (name, bit) in [
        ("feeding", 0),
        ("ae_active", 1),
        ("overfeed", 2),
        ("line_low", 4),
    ] {
        assert_eq!(value(name), f64::from((status >> bit) & 1), "{name}");
    }
    assert_eq!(value("ae_di"), f64::from((status >> 1) & 1));
    assert_eq!(r.tag("ae_di").unwrap().modicon, "10002");
    // The simulator's deliberate hole (input 16-19) inside the planned read: retried tag by
    // tag, reported, and no tag is lost to it.
    assert!(
        r.notes.iter().any(|n| n.contains("exception 02")),
        "{:?}",
        r.notes
    );
    sim.stop().await;
}

/// A plant serving known words: every type and word order as the table and the JSON show
/// them (f32 in its shortest form, `4.1`), an unmapped register marked bad, the vectors of
/// the config accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_prints_the_served_value_of_every_type_and_word_order() {
    let dev = Device::default();
    for (i, order) in ["ABCD", "CDAB", "BADC", "DCBA"].iter().enumerate() {
        dev.set_holding(1, 2 * i as u16, &f32_words(4.1, order));
    }
    dev.set_input(1, 0, &[(-250i16) as u16]);
    dev.set_input(1, 1, &[0x0001, 0x0002]);
    dev.set_input(1, 3, &[0b1000]);
    dev.set_coil(1, 5, true);
    dev.unmap(1, 9);
    let served = Served::start(dev).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{HEAD}
[[devices]]
name = "vendor-plc"
endpoint = "tcp://{}"
tags = [
  {{ name = "f_abcd", address = "40001", type = "f32", order = "ABCD", unit = "V" }},
  {{ name = "f_cdab", address = "40003", type = "f32", order = "CDAB", unit = "V",
     expect = [{{ raw = "0x3333 0x4083", value = 4.1 }}] }},
  {{ name = "f_badc", address = "40005", type = "f32", order = "BADC", unit = "V" }},
  {{ name = "f_dcba", address = "40007", type = "f32", order = "DCBA", unit = "V" }},
  {{ name = "unmapped", address = "40010", type = "u16" }},
  {{ name = "temp", address = "30001", type = "i16", scale = 0.1, unit = "degC",
     expect = [{{ raw = "0xFF06", value = -25 }}] }},
  {{ name = "count", address = "30002", type = "u32", expect = [{{ raw = [1, 2], value = 65538 }}] }},
  {{ name = "running", address = "30004", type = "bool", bit = 3 }},
  {{ name = "pump", address = "00006" }},
]
"#,
        served.addr
    );
    let path = crate::support::write_config(dir.path(), &cfg);
    let p = path.to_str().unwrap();

    let (code, out, err) = probe(&["-c", p, "--device", "vendor-plc", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    // The f32 is published as the float32 it is, not widened.
    assert!(out.contains("\"value\": 4.1,"), "{out}");
    assert!(!out.contains("4.0999999"), "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = &doc["devices"][0];
    assert_eq!(d["device"], "vendor-plc");
    assert_eq!(d["error"], serde_json::Value::Null);
    let tag = |name: &str| {
        d["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == name)
            .unwrap_or_else(|| panic!("{name}: {d}"))
            .clone()
    };
    for (name, raw) in [
        ("f_abcd", "0x4083 0x3333"),
        ("f_cdab", "0x3333 0x4083"),
        ("f_badc", "0x8340 0x3333"),
        ("f_dcba", "0x3333 0x8340"),
    ] {
        let t = tag(name);
        assert_eq!(t["value"].as_f64(), Some(4.1), "{t}");
        assert_eq!(t["raw"], raw, "{t}");
        assert_eq!(t["quality"], "good");
        assert_eq!(t["unit"], "V");
    }
    assert_eq!(tag("f_cdab")["modicon"], "40003");
    assert_eq!(tag("f_cdab")["address"], 2);
    assert_eq!(tag("temp")["value"].as_f64(), Some(-25.0));
    assert_eq!(tag("temp")["raw"], "0xFF06");
    assert_eq!(tag("count")["value"].as_f64(), Some(65538.0));
    assert_eq!(tag("running")["value"].as_f64(), Some(1.0));
    assert_eq!(tag("pump")["value"].as_f64(), Some(1.0));
    assert_eq!(tag("pump")["raw"], "1");
    assert_eq!(tag("pump")["modicon"], "00006");
    assert_eq!(tag("unmapped")["quality"], "bad:exception_02");
    assert_eq!(tag("unmapped")["value"], serde_json::Value::Null);

    let (code, out, err) = probe(&["--config", p, "--device", "vendor-plc"]).await;
    assert_eq!(code, 0, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name}: {out}"))
            .to_string()
    };
    let cdab = line("f_cdab")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        cdab,
        "f_cdab holding 2 40003 f32 CDAB 0x3333 0x4083 4.1 V good"
    );
    assert!(line("temp").contains("-25 degC"), "{out}");
    assert!(line("unmapped").ends_with("bad:exception_02"), "{out}");
}

/// A device that does not answer: the device and its endpoint named, exit 69; the others of
/// `--all` are still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_of_a_device_that_does_not_answer_names_it_and_exits_69() {
    let dev = Device::default();
    dev.set_holding(1, 0, &[42]);
    dev.silence(2, true);
    let served = Served::start(dev).await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{HEAD}
[templates.t]
tags = [{{ name = "level", table = "holding", address = 0 }}]

[[devices]]
name = "ok"
template = "t"
endpoint = "tcp://{a}"

[[devices]]
name = "silent"
template = "t"
endpoint = "tcp://{a}"
unit = 2
timeout = "300ms"

[[devices]]
name = "gone"
template = "t"
endpoint = "tcp://{closed}"
"#,
        a = served.addr
    );
    let path = crate::support::write_config(dir.path(), &cfg);
    let p = path.to_str().unwrap();

    let (code, _, err) = probe(&["-c", p, "--device", "gone"]).await;
    assert_eq!(code, i32::from(EXIT_NO_ANSWER), "{err}");
    assert!(
        err.contains(&format!("device \"gone\" at tcp://{closed}")),
        "{err}"
    );
    let (code, _, err) = probe(&["-c", p, "-d", "silent", "--json"]).await;
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains(&format!(
            "device \"silent\" at tcp://{} (unit 2)",
            served.addr
        )),
        "{err}"
    );
    let (code, out, err) = probe(&["-c", p, "--all"]).await;
    assert_eq!(code, 69, "{err}");
    assert!(out.contains("level") && out.contains("42"), "{out}");
    assert!(
        err.contains("\"silent\"") && err.contains("\"gone\""),
        "{err}"
    );
    // An unknown name is a usage error, not a silent success.
    let (code, _, err) = probe(&["-c", p, "--device", "nope"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("no device \"nope\"") && err.contains("ok, silent, gone"),
        "{err}"
    );
}
