//! Modbus peers nobody here wrote: the `alsentry` binary running the shipped example config
//! (ports changed) against a pymodbus server and Mosquitto; mbpoll decoding what alsentry
//! decodes; mbpoll and pymodbus reading the simulator's documented registers.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use alsentry::sim::{Scenario, StartOptions};
use tokio::time::timeout;

use crate::support::modbus::f32_words;
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Subscriber;
use crate::support::net::{free_port, Proc};
use crate::support::tools::{require, require_python_module};

/// The pymodbus server of pymodbus_server.py, driven over its stdin.
pub(crate) struct PyServer {
    _proc: Proc,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
}

impl PyServer {
    pub(crate) fn start(port: u16, units: u8) -> PyServer {
        require_python_module("pymodbus");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pymodbus_server.py");
        let mut child = Command::new(require("python3"))
            .arg(script)
            .arg(port.to_string())
            .arg(units.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY");
        PyServer {
            _proc: Proc(child),
            stdin,
            out,
        }
    }

    pub(crate) fn set(&mut self, unit: u8, table: &str, addr: u16, words: &[u16]) {
        let ws: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        writeln!(self.stdin, "set {unit} {table} {addr} {}", ws.join(" ")).unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "OK");
    }

    /// Clients' writes to holding `addr` are acknowledged, not kept.
    pub(crate) fn stick(&mut self, unit: u8, addr: u16) {
        writeln!(self.stdin, "stick {unit} {addr}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "OK");
    }

    /// What the server holds now (bits as 0/1).
    pub(crate) fn get(&mut self, unit: u8, table: &str, addr: u16, count: u16) -> Vec<u16> {
        writeln!(self.stdin, "get {unit} {table} {addr} {count}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let rest = line.trim().strip_prefix("VALUES").expect("VALUES ...");
        rest.split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pymodbus and mosquitto; .ci/run runs it"]
async fn example_config_against_pymodbus_and_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::private(dir.path());
    let mport = broker.port;
    let (cell_port, kiln_port) = (free_port(), free_port());
    let mut cells = PyServer::start(cell_port, 3);
    let mut kiln = PyServer::start(kiln_port, 1);
    for u in 1..=3 {
        cells.set(u, "input", 0, &f32_words(4.25, "CDAB"));
        cells.set(u, "input", 2, &f32_words(498.75, "CDAB"));
        cells.set(u, "input", 4, &[9_573]);
        cells.set(u, "holding", 10, &[0x0001, 0x0002]);
        cells.set(u, "input", 20, &f32_words(123_456.0, "ABCD"));
    }
    kiln.set(1, "holding", 0, &[11_234, (-180i16) as u16]);

    // The shipped example, pointed at these servers, plus probe rules that expose each value
    // in an alarm payload, and one ABCD float.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alsentry.example.toml"),
    )
    .unwrap();
    let cfg = example
        .replace("tcp://127.0.0.1:5020", &format!("tcp://127.0.0.1:{cell_port}"))
        .replace("tcp://127.0.0.1:5021", &format!("tcp://127.0.0.1:{kiln_port}"))
        .replace("mqtt://127.0.0.1:1883", &format!("mqtt://127.0.0.1:{mport}"))
        .replace("[agent]\n", &format!("[agent]\nstate_dir = \"{}\"\n", dir.path().join("state").display()))
        .replace("  { name = \"feed_count\", table = \"holding\", address = 10, type = \"u32\" },\n", "  { name = \"feed_count\", table = \"holding\", address = 10, type = \"u32\" },\n  { name = \"big\", table = \"input\", address = 20, type = \"f32\" },\n")
        + r#"
[[rules]]
name = "probe_current"
template = "cell"
tag = "current"
type = "high"
limit = -1e9
[[rules]]
name = "probe_bath"
template = "cell"
tag = "bath_temp"
type = "high"
limit = -1e9
[[rules]]
name = "probe_feed"
template = "cell"
tag = "feed_count"
type = "high"
limit = -1e9
[[rules]]
name = "probe_big"
template = "cell"
tag = "big"
type = "high"
limit = -1e9
[[rules]]
name = "probe_flue"
devices = ["kiln-1"]
tag = "flue_temp"
type = "high"
limit = -1e9
[[rules]]
name = "probe_draft"
devices = ["kiln-1"]
tag = "draft"
type = "low"
limit = 1e9
"#;
    let cfg_path = crate::support::write_config(dir.path(), &cfg);
    let mut sub = Subscriber::connect("127.0.0.1", mport, "interop-sub", "alsentry/#").await;
    let agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_alsentry"))
            .args(["run", "--config"])
            .arg(&cfg_path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let t = |d: &str, r: &str| format!("alsentry/qingzhen/potline-1/{d}/alarm/{r}");
    let topics = [
        t("pot-001", "probe_current"),
        t("pot-002", "probe_bath"),
        t("pot-003", "probe_feed"),
        t("pot-001", "probe_big"),
        t("kiln-1", "probe_flue"),
        t("kiln-1", "probe_draft"),
    ];
    let got = sub
        .wait_all(
            Duration::from_secs(20),
            &topics.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
    let v = |i: usize| got[&topics[i]].json()["value"].as_f64().unwrap();
    assert_eq!(v(0), 498.75);
    assert!((v(1) - 957.3).abs() < 1e-9, "{}", v(1));
    assert_eq!(v(2), 65_538.0);
    assert_eq!(v(3), 123_456.0);
    assert!((v(4) - 1_123.4).abs() < 1e-9);
    assert_eq!(v(5), -180.0);

    cells.set(2, "input", 0, &f32_words(9.0, "CDAB"));
    let t0 = Instant::now();
    let m = sub
        .wait_for(Duration::from_secs(15), |m| {
            m.topic == t("pot-002", "anode_effect")
        })
        .await
        .expect("anode effect");
    assert!(
        t0.elapsed() >= Duration::from_millis(1_900),
        "on-delay of 2 s not respected: {:?}",
        t0.elapsed()
    );
    assert_eq!(m.json()["state"], "active_unacked");
    cells.set(2, "input", 0, &f32_words(7.7, "CDAB"));
    assert!(sub
        .wait_for(Duration::from_secs(3), |m| m.topic
            == t("pot-002", "anode_effect"))
        .await
        .is_none());
    cells.set(2, "input", 0, &f32_words(7.2, "CDAB"));
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == t("pot-002", "anode_effect")
        })
        .await
        .expect("clear");
    assert_eq!(m.json()["state"], "returned_unacked");
    drop(agent);
}

#[test]
#[ignore = "needs mbpoll and pymodbus; .ci/run runs it"]
fn mbpoll_reads_what_alsentry_decodes() {
    // mbpoll (an independent client) and alsentry's decoder must agree on the test vector.
    let port = free_port();
    let mut srv = PyServer::start(port, 1);
    srv.set(1, "holding", 0, &[0x47F1, 0x2000]);
    let out = Command::new(require("mbpoll"))
        .args([
            "-m", "tcp", "-a", "1", "-r", "1", "-c", "1", "-t", "4:float", "-B", "-1", "-p",
        ])
        .arg(port.to_string())
        .arg("127.0.0.1")
        .output()
        .expect("mbpoll installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("123456"), "mbpoll: {text}");
}

/// The simulator playing config/scenarios/normal.toml (the layout the scripts document) on
/// ephemeral ports: (host, cell port, kiln port).
async fn normal_plant() -> (alsentry::sim::SimHandle, [String; 3]) {
    let scn = Scenario::from_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/normal.toml"),
    )
    .unwrap();
    let h = alsentry::sim::start(
        scn,
        StartOptions {
            ephemeral_ports: true,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let cells = h.group_addrs("potline")[0];
    let kilns = h.group_addrs("furnace")[0];
    let at = [
        cells.ip().to_string(),
        cells.port().to_string(),
        kilns.port().to_string(),
    ];
    (h, at)
}

/// Runs a client script of tests/interop/; it exits 0 when every check passed.
async fn run_client(program: &Path, args: &[String]) {
    let out = tokio::process::Command::new(program).args(args).output();
    let out = timeout(Duration::from_secs(30), out)
        .await
        .expect("client hung")
        .expect("client runs");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}\n{}",
        args[0],
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
        .display()
        .to_string()
}

/// tests/interop/sim_mbpoll.sh against an in-process simulator.
#[tokio::test]
#[ignore = "needs mbpoll; .ci/run runs it"]
async fn independent_clients_read_the_documented_values_mbpoll() {
    require("mbpoll");
    let (h, [host, cells, kilns]) = normal_plant().await;
    run_client(
        &require("sh"),
        &[script("sim_mbpoll.sh"), host, cells, kilns],
    )
    .await;
    h.stop().await;
}

/// tests/interop/sim_pymodbus.py against an in-process simulator.
#[tokio::test]
#[ignore = "needs pymodbus; .ci/run runs it"]
async fn independent_clients_read_the_documented_values_pymodbus() {
    require_python_module("pymodbus");
    let (h, [host, cells, kilns]) = normal_plant().await;
    let args = [
        script("sim_pymodbus.py"),
        "--host".into(),
        host,
        "--cells".into(),
        cells,
        "--kilns".into(),
        kilns,
    ];
    run_client(&require("python3"), &args).await;
    h.stop().await;
}

/// `alsentry probe` against a pymodbus plant mapped like a vendor's controller: f32 in all four
/// word orders, a scaled i16, a big-endian u32, a status bit and a coil, at Modicon addresses,
/// with the register test vectors of the config accepted; a stopped plant exits 69 naming the
/// device and endpoint.
#[test]
#[ignore = "needs pymodbus; .ci/run runs it"]
fn probe_prints_what_a_pymodbus_plant_serves() {
    let port = free_port();
    let mut srv = PyServer::start(port, 1);
    for (i, order) in ["ABCD", "CDAB", "BADC", "DCBA"].iter().enumerate() {
        srv.set(1, "input", 2 * i as u16, &f32_words(4.1, order));
    }
    srv.set(1, "holding", 10, &[(-250i16) as u16]);
    srv.set(1, "holding", 11, &[0x0001, 0x0002]);
    srv.set(1, "holding", 13, &[0b0000_0100]);
    srv.set(1, "coil", 3, &[1]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"[agent]
id = "gw"
site = "s"
area = "a"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[templates.vendor]
tags = [
  {{ name = "v_abcd", address = "30001", type = "f32", order = "ABCD", unit = "V", expect = [{{ raw = "0x4083 0x3333", value = 4.1 }}] }},
  {{ name = "v_cdab", address = "30003", type = "f32", order = "CDAB", unit = "V", expect = [{{ raw = "0x3333 0x4083", value = 4.1 }}] }},
  {{ name = "v_badc", address = "30005", type = "f32", order = "BADC", unit = "V" }},
  {{ name = "v_dcba", address = "30007", type = "f32", order = "DCBA", unit = "V" }},
  {{ name = "temp", address = "40011", type = "i16", scale = 0.1, unit = "degC", expect = [{{ raw = "0xFF06", value = -25 }}] }},
  {{ name = "count", address = "40012", type = "u32", expect = [{{ raw = "1 2", value = 65538 }}] }},
  {{ name = "running", address = "40014", type = "bool", bit = 2 }},
  {{ name = "pump", address = "00004" }},
]

[[devices]]
name = "vendor-1"
template = "vendor"
endpoint = "tcp://127.0.0.1:{port}"
"#
    );
    let path = crate::support::write_config(dir.path(), &cfg);
    let probe = || {
        Command::new(env!("CARGO_BIN_EXE_alsentry"))
            .args(["probe", "--device", "vendor-1", "--json", "-c"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = probe();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tags = doc["devices"][0]["tags"].as_array().unwrap().clone();
    let value = |name: &str| {
        let t = tags.iter().find(|t| t["tag"] == name).unwrap();
        assert_eq!(t["quality"], "good", "{t}");
        t["value"].as_f64().unwrap()
    };
    for name in ["v_abcd", "v_cdab", "v_badc", "v_dcba"] {
        assert_eq!(value(name), 4.1, "{name}");
    }
    assert!(!text.contains("4.0999999"), "{text}");
    assert_eq!(value("temp"), -25.0);
    assert_eq!(value("count"), 65_538.0);
    assert_eq!(value("running"), 1.0);
    assert_eq!(value("pump"), 1.0);

    // Killed and waited for: its port is closed, so the probe cannot connect.
    drop(srv);
    let out = probe();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains(&format!("device \"vendor-1\" at tcp://127.0.0.1:{port}")),
        "{err}"
    );
}
