//! The operator station in headless Chromium over WebDriver, against Mosquitto, with the
//! `data-testid`s docs/OPERATOR.md lists: log in as an operator, see an alarm within 2 s,
//! acknowledge it (the retained MQTT state changes), shelve it for a minute and see it come
//! back, keep working with the broker stopped, be refused as a viewer. The screenshots in
//! docs/screenshots/ come from this test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alsentry::clock::SystemClock;
use alsentry::config::Config;
use alsentry::io::web::auth::{set_user, Role};

use crate::support::agent::{Agent, Dev};
use crate::support::modbus::{f32_words, Device, Served};
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Subscriber;
use crate::support::webdriver::Browser;

const TWO_S: Duration = Duration::from_secs(2);
const W: Duration = Duration::from_secs(10);

fn shots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn row(id: &str) -> String {
    format!("[data-testid=\"alarm-row\"][data-alarm-id=\"{id}\"]")
}

async fn login(b: &Browser, user: &str, password: &str) {
    b.wait("[data-testid=\"login-form\"]", W).await;
    b.type_into("[data-testid=\"login-username\"]", user).await;
    b.type_into("[data-testid=\"login-password\"]", password)
        .await;
    b.click("[data-testid=\"login-submit\"]").await;
    b.wait("[data-testid=\"alarm-list\"]", W).await;
    // Live once the first snapshot has arrived.
    let t0 = Instant::now();
    while !b
        .text_of("[data-testid=\"live-status\"]")
        .await
        .contains('●')
    {
        assert!(t0.elapsed() < W, "the event stream never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and mosquitto; .ci/run runs it"]
async fn an_operator_works_the_alarm_list_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut mosq = Mosquitto::private(dir.path());
    let mut sub = Subscriber::connect("127.0.0.1", mosq.port, "st-chromium", "alsentry/#").await;
    let pot1 = Served::start(Device::default()).await;
    let pot2 = Served::start(Device::default()).await;
    pot1.device.set_input(1, 0, &f32_words(7.0, "CDAB"));
    pot2.device.set_input(1, 0, &f32_words(7.0, "CDAB"));
    let users = dir.path().join("users");
    set_user(&users, "li.wei", Some(Role::Operator), "potline-op-1").unwrap();
    set_user(&users, "zhang.min", Some(Role::Viewer), "potline-view-1").unwrap();
    let tags = r#"[ { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" } ]"#;
    let cfg = Agent::new("gw-st")
        .state_dir(dir.path())
        .sinks(&format!(
            "[mqtt]\nurl = \"{}\"\nreconnect_max = \"1s\"\n",
            mosq.url()
        ))
        .section(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nusers = \"{}\"",
            users.display()
        ))
        .device(Dev::tcp("pot-1", pot1.addr).poll("100ms").tags(tags))
        .device(Dev::tcp("pot-2", pot2.addr).poll("100ms").tags(tags))
        .rule("[[rules]]\nname = \"anode_effect\"\ndevices = [\"pot-*\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\ndeadband = 0.5\npriority = \"critical\"\nmessage = \"Anode effect on {device}: {value} V\"");
    // Times on the page in the plant's zone.
    let text = cfg
        .text()
        .replacen("[agent]\n", "[agent]\ntimezone = \"Asia/Shanghai\"\n", 1);
    let path = crate::support::write_config(dir.path(), &text);
    let running = alsentry::app::start(Config::load(&path).unwrap(), SystemClock::new())
        .await
        .unwrap();
    let url = format!("http://{}/", running.http.unwrap());
    let b = Browser::start().await;
    b.goto(&url).await;
    b.screenshot(&shots().join("operator-login.png")).await;
    login(&b, "li.wei", "potline-op-1").await;

    // An alarm appears within 2 s of its activation.
    pot1.device.set_input(1, 0, &f32_words(9.0, "CDAB"));
    let (_, took) = b.wait(&row("pot-1/anode_effect"), TWO_S).await;
    println!("alarm row shown {took:?} after the value was set");
    assert_eq!(
        b.attribute(&row("pot-1/anode_effect"), "data-state")
            .await
            .as_deref(),
        Some("active_unacked")
    );
    b.screenshot(&shots().join("operator-alarms.png")).await;

    // Acknowledge: the retained MQTT state says who.
    b.click(&format!(
        "{} [data-testid=\"ack\"]",
        row("pot-1/anode_effect")
    ))
    .await;
    let m = sub
        .wait_for(W, |m| {
            m.topic.ends_with("pot-1/alarm/anode_effect") && m.json()["state"] == "active_acked"
        })
        .await
        .expect("the acknowledged state on MQTT");
    assert_eq!(m.json()["acked_by"], "li.wei");
    b.wait(
        &format!("{}[data-state=\"active_acked\"]", row("pot-1/anode_effect")),
        W,
    )
    .await;

    // Shelve for one minute, with a reason.
    b.click(&format!(
        "{} [data-testid=\"shelve\"]",
        row("pot-1/anode_effect")
    ))
    .await;
    b.click("[data-testid=\"shelve-duration\"] option[value=\"1m\"]")
        .await;
    b.type_into("[data-testid=\"shelve-reason\"]", "anode change")
        .await;
    b.screenshot(&shots().join("operator-shelve.png")).await;
    b.click("[data-testid=\"shelve-confirm\"]").await;
    let shelved_at = Instant::now();
    b.wait(
        "[data-testid=\"shelved-row\"][data-alarm-id=\"pot-1/anode_effect\"]",
        W,
    )
    .await;
    b.wait_gone(&row("pot-1/anode_effect"), W).await;

    // The broker stops: the page keeps showing and acting (the outbox keeps the messages).
    mosq.kill();
    pot2.device.set_input(1, 0, &f32_words(9.5, "CDAB"));
    b.wait(&row("pot-2/anode_effect"), TWO_S).await;
    b.click(&format!(
        "{} [data-testid=\"ack\"]",
        row("pot-2/anode_effect")
    ))
    .await;
    b.wait(
        &format!("{}[data-state=\"active_acked\"]", row("pot-2/anode_effect")),
        W,
    )
    .await;
    b.click(&format!("{} .device-link", row("pot-2/anode_effect")))
        .await;
    b.wait(
        "[data-testid=\"device-trend\"] [data-testid=\"alarm-span\"]",
        W,
    )
    .await;
    b.screenshot(&shots().join("operator-device.png")).await;
    b.click("[data-testid=\"nav-agent\"]").await;
    b.wait("[data-testid=\"agent-sink\"]", W).await;
    b.screenshot(&shots().join("operator-agent-broker-down.png"))
        .await;
    b.click("[data-testid=\"nav-history\"]").await;
    b.wait("[data-testid=\"history-row\"]", W).await;
    b.screenshot(&shots().join("operator-history.png")).await;
    b.click("[data-testid=\"nav-alarms\"]").await;

    // A viewer is refused, with the reason on the page.
    b.click("[data-testid=\"logout\"]").await;
    login(&b, "zhang.min", "potline-view-1").await;
    b.click(&format!(
        "{} [data-testid=\"ack\"]",
        row("pot-2/anode_effect")
    ))
    .await;
    b.wait("[data-testid=\"message\"]:not([hidden])", W).await;
    let msg = b.text_of("[data-testid=\"message\"]").await;
    assert!(
        msg.contains(
            "Refused (403): forbidden: zhang.min (viewer) may not ack: it needs the operator role"
        ),
        "{msg}"
    );
    b.screenshot(&shots().join("operator-viewer-refused.png"))
        .await;

    // The shelved alarm comes back by itself after its minute (still active, acknowledged).
    let left = Duration::from_secs(60).saturating_sub(shelved_at.elapsed());
    b.wait(&row("pot-1/anode_effect"), left + Duration::from_secs(5))
        .await;
    assert!(
        shelved_at.elapsed() >= Duration::from_secs(59),
        "not before its minute"
    );
    b.wait_gone(
        "[data-testid=\"shelved-row\"][data-alarm-id=\"pot-1/anode_effect\"]",
        W,
    )
    .await;

    // On a phone, in Chinese.
    b.click("[data-testid=\"lang-toggle\"]").await;
    b.resize(390, 844).await;
    b.screenshot(&shots().join("operator-phone-zh.png")).await;
    drop(b);
    running.stop().await;
}

/// One request over TLS trusting only `ca`; the raw reply.
async fn https(addr: std::net::SocketAddr, ca: &std::path::Path, req: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = connector.connect(name, tcp).await.expect("TLS handshake");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(W, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs openssl; .ci/run runs it"]
async fn the_station_serves_https_with_a_secure_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::tools::require("openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            "http.key",
            "-out",
            "http.crt",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users = dir.path().join("users");
    set_user(&users, "li.wei", Some(Role::Operator), "potline-op-1").unwrap();
    let dev = Served::start(Device::default()).await;
    let cfg = Agent::new("gw-tls")
        .state_dir(dir.path())
        .mqtt("mqtt://127.0.0.1:1")
        .section(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nusers = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            users.display(),
            dir.path().join("http.crt").display(),
            dir.path().join("http.key").display()
        ))
        .device(Dev::tcp("pot-1", dev.addr).poll("1s").tags(
            r#"[ { name = "voltage", table = "input", address = 0, type = "f32", unit = "V" } ]"#,
        ))
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let addr = running.http.unwrap();
    let ca = dir.path().join("http.crt");
    let r = https(addr, &ca, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok\n"),
        "{r}"
    );
    let body = r#"{"username":"li.wei","password":"potline-op-1"}"#;
    let req = format!(
        "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = https(addr, &ca, &req).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let cookie = r
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a cookie");
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP on the TLS port gets no page, and the server keeps serving.
    let plain = crate::support::web::request(addr, "GET", "/healthz", &[], None).await;
    assert_ne!(plain.status, 200);
    let r = https(addr, &ca, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    running.stop().await;
}
