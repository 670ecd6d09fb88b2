//! Headless Chromium over WebDriver (Debian's `chromium` and `chromium-driver`): chromedriver
//! on a loopback port, driven with JSON over HTTP through `web::request`. Killed when dropped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::net::{free_port, wait_port, Proc};
use super::tools;
use super::web::request;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    addr: std::net::SocketAddr,
    session: String,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// chromedriver and a headless Chromium at 1280x800.
    pub async fn start() -> Browser {
        let driver = tools::require("chromedriver");
        let chromium = tools::require("chromium");
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let proc = Proc(child);
        wait_port(port);
        let profile = tempfile::tempdir().unwrap();
        let addr = ([127, 0, 0, 1], port).into();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--lang=en-GB",
                         format!("--user-data-dir={}", profile.path().display())],
            }
        }}});
        let r = request(addr, "POST", "/session", &[], Some(&caps.to_string())).await;
        let session = r.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {}", r.body))
            .to_string();
        Browser {
            addr,
            session,
            _driver: proc,
            _profile: profile,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        let b = body.map(|b| b.to_string());
        let r = request(self.addr, method, &p, &[], b.as_deref()).await;
        let v = r.json();
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {}",
            r.status,
            r.body
        );
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Elements matching a CSS selector now.
    pub async fn all(&self, css: &str) -> Vec<String> {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits up to `within` for an element matching `css`; returns it and how long it took.
    pub async fn wait(&self, css: &str, within: Duration) -> (String, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                return (e, t0.elapsed());
            }
            assert!(
                t0.elapsed() < within,
                "no element {css} within {within:?}; page text: {}",
                self.text_of("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `within` until nothing matches `css`.
    pub async fn wait_gone(&self, css: &str, within: Duration) {
        let t0 = Instant::now();
        while !self.all(css).await.is_empty() {
            assert!(t0.elapsed() < within, "{css} still there after {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        println!("click {css}");
        let (e, _) = self.wait(css, Duration::from_secs(5)).await;
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    /// Clears the field, then types `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let (e, _) = self.wait(css, Duration::from_secs(5)).await;
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .await;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The visible text of the first element matching `css` ("" when there is none).
    pub async fn text_of(&self, css: &str) -> String {
        let Some(e) = self.all(css).await.into_iter().next() else {
            return String::new();
        };
        self.call("GET", &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let e = self.all(css).await.into_iter().next()?;
        self.call("GET", &format!("/element/{e}/attribute/{name}"), None)
            .await
            .as_str()
            .map(str::to_string)
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, to: &Path) {
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64_decode(v.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium with its session; chromedriver is killed by `Proc`.
        let _ = std::net::TcpStream::connect(self.addr).map(|mut s| {
            use std::io::Write as _;
            let _ = write!(
                s,
                // chromedriver refuses a Host other than the local address (DNS-rebinding
                // guard), and Chromium then outlives the test.
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = std::io::Read::read(&mut s, &mut [0u8; 512]);
        });
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
