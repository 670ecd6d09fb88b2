//! A small HTTP/1.1 client over raw sockets for the operator station tests and for talking to
//! chromedriver (WebDriver is JSON over HTTP): one request per connection, chunked bodies
//! decoded, a session cookie kept, server-sent events read frame by frame.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends one request and reads the whole reply (the server closes after it).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    if let Some(b) = body {
        s.write_all(b.as_bytes()).await.unwrap();
    }
    // Read until the body is complete: some servers (chromedriver) keep the connection open.
    let mut raw = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
            if complete(&raw) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("a reply in time");
    parse(&raw)
}

/// Whether `raw` holds a whole response (by Content-Length or the last chunk).
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A browser-like client of the station: keeps the session cookie and the CSRF token.
#[derive(Debug, Clone)]
pub struct Station {
    pub addr: SocketAddr,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl Station {
    pub fn new(addr: SocketAddr) -> Station {
        Station {
            addr,
            cookie: None,
            csrf: None,
        }
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = Vec::new();
        if let Some(c) = &self.cookie {
            h.push(("Cookie", c.as_str()));
        }
        if let Some(t) = &self.csrf {
            h.push(("X-CSRF-Token", t.as_str()));
        }
        h
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &self.headers(), None).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        request(
            self.addr,
            "POST",
            path,
            &self.headers(),
            Some(&body.to_string()),
        )
        .await
    }

    /// Logs in; on success keeps the cookie and the CSRF token.
    pub async fn login(&mut self, user: &str, password: &str) -> Reply {
        let r = self
            .post(
                "/api/login",
                &serde_json::json!({ "username": user, "password": password }),
            )
            .await;
        if r.status == 200 {
            let c = r.headers.get("set-cookie").expect("a session cookie");
            self.cookie = Some(c.split(';').next().unwrap_or_default().to_string());
            self.csrf = r.json()["csrf"].as_str().map(str::to_string);
        }
        r
    }

    pub async fn act(&self, op: &str, device: &str, rule: &str, extra: serde_json::Value) -> Reply {
        let mut body = serde_json::json!({ "op": op, "device": device, "rule": rule });
        if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        self.post("/api/command", &body).await
    }

    /// Opens the event stream.
    pub async fn events(&self) -> Events {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(c) = &self.cookie {
            head.push_str(&format!("Cookie: {c}\r\n"));
        }
        head.push_str("Accept: text/event-stream\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        Events {
            s,
            buf: String::new(),
            head_done: false,
        }
    }
}

/// Server-sent events, parsed from the raw (chunked) stream.
pub struct Events {
    s: TcpStream,
    buf: String,
    head_done: bool,
}

impl Events {
    /// The next `alarms` event's data, or None at `deadline`.
    pub async fn next(&mut self, within: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if !self.head_done {
                if let Some(i) = self.buf.find("\n\n") {
                    assert!(self.buf.starts_with("HTTP/1.1 200"), "{}", self.buf);
                    self.buf.drain(..i + 2);
                    self.head_done = true;
                }
            }
            if self.head_done {
                // Chunk-size lines never start with "data:"; events end with a blank line.
                if let Some(i) = self.buf.find("\n\n") {
                    let frame: String = self.buf.drain(..i + 2).collect();
                    let data: String = frame
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if frame.contains("event: alarms") && !data.is_empty() {
                        return serde_json::from_str(&data).ok();
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n"));
        }
    }
}
