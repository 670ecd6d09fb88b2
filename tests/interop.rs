//! Interop against peers nobody here wrote: a pymodbus server and a Mosquitto broker, with the
//! `alsentry` binary running the shipped example config (ports changed). Runs when
//! `ALSENTRY_INTEROP=1` (CI sets it after installing pymodbus and mosquitto); skipped otherwise.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use support::modbus::f32_words;
use support::mqtt::Subscriber;

fn enabled() -> bool {
    if std::env::var("ALSENTRY_INTEROP").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set ALSENTRY_INTEROP=1 (needs python3 with pymodbus 3.6 and mosquitto)");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, even on panic.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mosquitto(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto installed");
    wait_port(port);
    (Proc(child), port)
}

struct PyServer {
    _proc: Proc,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
}

impl PyServer {
    fn start(port: u16, units: u8) -> PyServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pymodbus_server.py");
        let mut child = Command::new("python3")
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

    fn set(&mut self, unit: u8, table: &str, addr: u16, words: &[u16]) {
        let ws: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        writeln!(self.stdin, "set {unit} {table} {addr} {}", ws.join(" ")).unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "OK");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_config_against_pymodbus_and_mosquitto() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mport) = mosquitto(dir.path());
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
    let cfg_path = support::write_config(dir.path(), &cfg);
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
fn mbpoll_reads_what_alsentry_decodes() {
    if !enabled() {
        return;
    }
    // mbpoll (an independent client) and alsentry's decoder must agree on the test vector.
    let port = free_port();
    let mut srv = PyServer::start(port, 1);
    srv.set(1, "holding", 0, &[0x47F1, 0x2000]);
    let out = Command::new("mbpoll")
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
