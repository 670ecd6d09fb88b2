//! The HTTP listener: the operations endpoints `/metrics` (OpenMetrics text), `/healthz`,
//! `/readyz` and `/alarms`, and the operator station (`io::web`) when it is configured.
//!
//! Our accept loop caps connections; past the cap, as many again are still served but get a
//! short time for their request (so idle or slow clients cannot starve `/healthz`); past both,
//! they are closed. It optionally terminates TLS and reads one request head per connection,
//! bounded in size and time, checking it strictly before anything else sees it: every
//! malformed or oversized request gets a 4xx and the server keeps serving. A head that passes
//! is handed, with the bytes after it, to hyper and routed by axum; the connection closes after
//! the response. What `/healthz` and `/readyz` answer is decided in `health.rs`.
//!
//! Alarm state is owned by the engine task, which publishes an [`AlarmSnapshot`] on a
//! `tokio::sync::watch` channel; this module only reads it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{rfc3339_ms, Clock};
use crate::core::engine::AlarmEvent;
use crate::core::model::{Priority, Ts};
pub use crate::io::health::Readiness;
use crate::io::health::{self, DeviceHealth, Pulse};
use crate::metrics::{AlarmCounts, Metrics};
use crate::telemetry::{emit, HttpOp, HttpTrouble};

/// Bounds that keep one hostile or slow client from costing more than a little memory and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head (request line + headers) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Most header lines accepted; more get 431.
    pub max_headers: usize,
    /// Time allowed for the whole request head to arrive (not per read: slow loris defence).
    pub read_timeout: Duration,
    /// Time allowed to write a response.
    pub write_timeout: Duration,
    /// Connections served at once with `read_timeout`; as many more are served with at most
    /// [`OVERFLOW_READ_TIMEOUT`]; past that they are closed.
    pub max_connections: usize,
}

/// Time for the request head of a connection over `max_connections`.
pub const OVERFLOW_READ_TIMEOUT: Duration = Duration::from_millis(500);

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

/// One alarm as operators see it, detached from the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmView {
    pub device: String,
    pub rule: String,
    pub tag: String,
    pub priority: Priority,
    /// Published state label, e.g. `active_unacked`.
    pub state: &'static str,
    /// When the current published state began.
    pub since: Ts,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub unit: String,
    /// `good` or `bad:<reason>`.
    pub quality: String,
    pub message: String,
    pub acked_by: Option<String>,
    pub shelved_until: Option<Ts>,
}

impl AlarmView {
    pub fn from_event(ev: &AlarmEvent) -> AlarmView {
        AlarmView {
            device: ev.device.to_string(),
            rule: ev.rule.to_string(),
            tag: ev.tag.to_string(),
            priority: ev.priority,
            state: ev.transition.to,
            since: ev.since,
            value: ev.value,
            limit: ev.limit,
            unit: ev.unit.to_string(),
            quality: ev.quality.label(),
            message: ev.message.clone(),
            acked_by: ev.acked_by.clone(),
            shelved_until: ev.shelved_until,
        }
    }
}

/// The wire form of [`AlarmView`] in `/alarms`: times as RFC 3339, like the MQTT payloads.
#[derive(Debug, Serialize)]
pub(crate) struct AlarmJson<'a> {
    device: &'a str,
    rule: &'a str,
    tag: &'a str,
    priority: &'static str,
    state: &'static str,
    since: String,
    since_ms: Ts,
    value: Option<f64>,
    limit: Option<f64>,
    unit: &'a str,
    quality: &'a str,
    message: &'a str,
    acked_by: Option<&'a str>,
    shelved_until: Option<String>,
}

impl<'a> From<&'a AlarmView> for AlarmJson<'a> {
    fn from(a: &'a AlarmView) -> Self {
        AlarmJson {
            device: &a.device,
            rule: &a.rule,
            tag: &a.tag,
            priority: a.priority.as_str(),
            state: a.state,
            since: rfc3339_ms(a.since),
            since_ms: a.since,
            // JSON has no NaN/inf; serde_json would write null anyway, say so explicitly.
            value: a.value.filter(|v| v.is_finite()),
            limit: a.limit.filter(|v| v.is_finite()),
            unit: &a.unit,
            quality: &a.quality,
            message: &a.message,
            acked_by: a.acked_by.as_deref(),
            shelved_until: a.shelved_until.map(rfc3339_ms),
        }
    }
}

/// States an alarm can be shown in; `alsentry_alarms` always reports these (0 when empty) so
/// that series do not appear and vanish.
pub const SHOWN_STATES: [&str; 4] = [
    "active_unacked",
    "active_acked",
    "returned_unacked",
    "latched",
];

/// What the engine publishes for the HTTP endpoint after each change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmSnapshot {
    /// Alarms operators currently see, highest priority first, then oldest first.
    pub alarms: Vec<AlarmView>,
    /// Alarm floods detected since start.
    pub floods_total: u64,
    /// Chattering episodes detected since start.
    pub chattering_total: u64,
    /// Alarms hidden by shelving or out-of-service (not in `alarms`, not counted), for the
    /// operator station.
    pub hidden: Vec<AlarmView>,
}

impl AlarmSnapshot {
    /// Builds a snapshot from `Engine::shown_alarms()` and the flood/chatter KPI counters.
    pub fn from_events(
        events: &[AlarmEvent],
        floods_total: u64,
        chattering_total: u64,
    ) -> AlarmSnapshot {
        let mut alarms: Vec<AlarmView> = events.iter().map(AlarmView::from_event).collect();
        alarms.sort_by(|a, b| {
            (a.priority, a.since, &a.device, &a.rule)
                .cmp(&(b.priority, b.since, &b.device, &b.rule))
        });
        AlarmSnapshot {
            alarms,
            floods_total,
            chattering_total,
            hidden: Vec::new(),
        }
    }

    /// Adds the shelved and out-of-service alarms (`Engine::flagged_alarms()`).
    pub fn with_hidden(mut self, events: &[AlarmEvent]) -> AlarmSnapshot {
        self.hidden = events.iter().map(AlarmView::from_event).collect();
        self.hidden
            .sort_by(|a, b| (&a.device, &a.rule).cmp(&(&b.device, &b.rule)));
        self
    }

    /// What `/metrics` reports of the alarms.
    pub fn counts(&self) -> AlarmCounts {
        AlarmCounts {
            by_state_priority: self.by_state_priority(),
            floods_total: self.floods_total,
            chattering_total: self.chattering_total,
        }
    }

    /// Count of alarms by (published state, priority); every shown state and priority is
    /// present, plus any other state that occurs.
    pub fn by_state_priority(&self) -> BTreeMap<(&'static str, Priority), u64> {
        let mut out = BTreeMap::new();
        for s in SHOWN_STATES {
            for p in Priority::ALL {
                out.insert((s, p), 0);
            }
        }
        for a in &self.alarms {
            *out.entry((a.state, a.priority)).or_insert(0) += 1;
        }
        out
    }
}

/// Everything the endpoint reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub alarms: watch::Receiver<AlarmSnapshot>,
    /// Which devices answer, from the pollers that own it (for `/readyz`).
    pub devices: watch::Receiver<DeviceHealth>,
    /// Gives `now` for uptime and the sample rate; uptime counts from `Metrics::started_ms`.
    pub clock: Arc<dyn Clock>,
    pub config_loaded: bool,
    /// The engine's last turn and the link pollers down (for `/healthz`), and the limits.
    pub pulse: Arc<Pulse>,
    /// The operator station at `/`, when `[http]` configures it.
    pub web: Option<Arc<crate::io::web::Web>>,
    /// Serve HTTPS with this certificate (`[http] tls_cert`, `tls_key`).
    pub tls: Option<Tls>,
}

/// A TLS acceptor for the listener.
#[derive(Clone)]
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads a PEM certificate chain and private key (rustls with ring; TLS 1.2 and 1.3).
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Tls> {
        use anyhow::Context as _;
        use rustls::pki_types::pem::{self, PemObject};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert_pem =
            std::fs::read(cert).with_context(|| format!("opening {}", cert.display()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading the certificates in {}", cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "no PEM certificate in {}",
            cert.display()
        );
        let key_pem = std::fs::read(key).with_context(|| format!("opening {}", key.display()))?;
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(pem::Error::NoItemsFound) => anyhow::bail!("no private key in {}", key.display()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the private key in {}", key.display()))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the certificate and key do not form a usable pair")?;
        Ok(Tls(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
    }
}

/// Serves the endpoint on `listener` with [`HttpLimits::default`] until `cancel` fires.
pub async fn serve(listener: TcpListener, state: HttpState, cancel: CancellationToken) {
    serve_with_limits(listener, state, HttpLimits::default(), cancel).await;
}

/// [`serve`] with explicit limits (tests shorten the timeouts).
pub async fn serve_with_limits(
    listener: TcpListener,
    state: HttpState,
    limits: HttpLimits,
    cancel: CancellationToken,
) {
    let tls = state.tls.clone();
    let router = router(Arc::new(state));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // The overflow lane is bounded too, so a connection flood cannot spawn unbounded tasks.
    let overflow_permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let overflow = HttpLimits {
        read_timeout: limits.read_timeout.min(OVERFLOW_READ_TIMEOUT),
        write_timeout: limits.write_timeout.min(OVERFLOW_READ_TIMEOUT),
        ..limits
    };
    // Live event streams stay open for a whole session: they get lanes of their own, so open
    // station pages never hold the lanes `/healthz` and the other requests need.
    let streams = Arc::new(Semaphore::new(MAX_LIVE_STREAMS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        emit(HttpTrouble { what: HttpOp::ConnectionPanicked, error: &e });
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    // Past the cap, as many again are still served with a short time for
                    // their request, so idle or slow clients cannot starve `/healthz`.
                    let lane = match permits.clone().try_acquire_owned() {
                        Ok(p) => Some((p, limits)),
                        Err(_) => overflow_permits.clone().try_acquire_owned().ok().map(|p| (p, overflow)),
                    };
                    if let Some((permit, limits)) = lane {
                        let router = router.clone().layer(axum::Extension(crate::io::web::ClientAddr(peer)));
                        let tls = tls.clone();
                        let streams = streams.clone();
                        conns.spawn(async move {
                            let lane = Lane { permit, streams };
                            match tls {
                                None => handle_connection(sock, router, &limits, lane).await,
                                Some(Tls(acceptor)) => {
                                    let hs = tokio::time::timeout(limits.read_timeout, acceptor.accept(sock)).await;
                                    match hs {
                                        Ok(Ok(s)) => handle_connection(s, router, &limits, lane).await,
                                        Ok(Err(e)) => emit(HttpTrouble { what: HttpOp::Read, error: &e }),
                                        Err(_) => {}
                                    }
                                }
                            }
                        });
                    } else {
                        drop(sock);
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on a failing accept.
                    emit(HttpTrouble { what: HttpOp::Accept, error: &e });
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
    // Aborting ends connections still in flight, live event streams included; waiting for them
    // lets go of the station (its history is flushed when the last user is gone).
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Live event streams served at once, at most; past it a new one gets 503.
pub const MAX_LIVE_STREAMS: usize = 64;
/// Where a station's live event stream is served.
const EVENTS_PATH: &str = "/api/events";

/// The connection lane a connection holds, and the lanes of live streams it moves to.
struct Lane {
    permit: tokio::sync::OwnedSemaphorePermit,
    streams: Arc<Semaphore>,
}

async fn handle_connection<S>(mut sock: S, router: Router, limits: &HttpLimits, lane: Lane)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut sock, limits.max_header_bytes),
    )
    .await;
    let resp = match head {
        Err(_) => Response::text(408, "request timeout\n"),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::Io(e))) => {
            emit(HttpTrouble {
                what: HttpOp::Read,
                error: &e,
            });
            return;
        }
        Ok(Err(HeadError::TooLarge)) => Response::text(431, "request header too large\n"),
        Ok(Err(HeadError::Truncated)) => Response::text(400, "incomplete request\n"),
        Ok(Ok((read, end))) => match parse_request(&read[..end], limits.max_headers) {
            Ok(req) if !req.get_or_head && OPS_PATHS.contains(&req.path.as_str()) => {
                Response::text(405, reason(405))
            }
            Ok(req) => {
                // A live stream gives its connection lane back and holds a stream lane instead.
                let Lane { permit, streams } = lane;
                let _held = if req.path == EVENTS_PATH {
                    match streams.try_acquire_owned() {
                        Ok(stream) => {
                            drop(permit);
                            stream
                        }
                        Err(_) => {
                            let resp = Response::text(503, "too many live event streams\n");
                            finish(sock, &resp, limits).await;
                            return;
                        }
                    }
                } else {
                    permit
                };
                // The head passed the strict checks above; hyper re-reads it (and whatever
                // followed it) and axum routes it. One request per connection, as before.
                let io = TokioIo::new(Replay {
                    read,
                    pos: 0,
                    inner: sock,
                });
                let service = TowerToHyperService::new(router);
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192) * 2)
                    .serve_connection(io, service);
                if let Err(e) = conn.await {
                    emit(HttpTrouble {
                        what: HttpOp::Read,
                        error: &e,
                    });
                }
                return;
            }
            Err(status) => Response::text(status, reason(status)),
        },
    };
    finish(sock, &resp, limits).await;
}

/// The bytes already read while checking the head, then the rest of the stream.
struct Replay<S> {
    read: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.pos);
            buf.put_slice(&this.read[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Writes `resp`, closes our side and drains what the peer still sends for a moment, so that
/// closing with unread input does not reset the connection before the peer reads the response.
async fn finish<S>(mut sock: S, resp: &Response, limits: &HttpLimits)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes = resp.to_bytes();
    let written = tokio::time::timeout(limits.write_timeout, async {
        sock.write_all(&bytes).await?;
        sock.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[derive(Debug)]
enum HeadError {
    /// The peer closed before sending anything (e.g. a port probe).
    Closed,
    /// The peer closed in the middle of the head.
    Truncated,
    TooLarge,
    Io(std::io::Error),
}

/// Reads until the blank line that ends the request head; returns every byte read and where
/// the head ends (the start of the blank line).
async fn read_head<S: AsyncRead + Unpin>(
    sock: &mut S,
    max: usize,
) -> Result<(Vec<u8>, usize), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = sock.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Truncated
            });
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[scan_from..]) {
            let end = scan_from + end;
            if end > max {
                return Err(HeadError::TooLarge);
            }
            return Ok((buf, end));
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Offset of the end of the head (start of the terminating blank line), accepting bare LF
/// line endings as RFC 9112 §2.2 allows.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| buf[i..].starts_with(b"\r\n\r\n") || buf[i..].starts_with(b"\n\n"))
}

/// A parsed request: only what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET or HEAD: the only methods the operations endpoints answer.
    pub get_or_head: bool,
    /// Path without the query string.
    pub path: String,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head (without the blank line). Returns the HTTP status to answer with when
/// the request cannot be served: 400 for malformed input, 431 for too many headers, 505 for
/// HTTP versions other than 1.x. Which methods a path accepts is the router's business.
pub fn parse_request(head: &[u8], max_headers: usize) -> Result<Request, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    // RFC 9112 §2.2: ignore empty lines before the request line.
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(400),
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(400);
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(400);
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if is_http_version(v) => return Err(505),
        _ => return Err(400),
    }
    let mut headers = 0usize;
    for line in lines {
        if line.is_empty() {
            // Only possible with stray bytes after a bare-LF terminator; treat as garbage.
            return Err(400);
        }
        headers += 1;
        if headers > max_headers {
            return Err(431);
        }
        let (name, _value) = line.split_once(':').ok_or(400u16)?;
        // Obsolete line folding and whitespace before the colon are rejected (RFC 9112 §5).
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(400);
        }
    }
    let get_or_head = matches!(method, "GET" | "HEAD");
    let origin = origin_form(target).ok_or(400u16)?;
    let path = origin
        .split(['?', '#'])
        .next()
        .unwrap_or(origin)
        .to_string();
    Ok(Request { get_or_head, path })
}

/// The path-and-query of a target in origin form (`/x?y`) or absolute form
/// (`http://host/x?y`, which RFC 9112 §3.2.2 says servers must accept).
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return None;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => Some(&rest[i..]),
        // `http://host` or `http://host?q`: the path is "/".
        _ => Some("/"),
    }
}

fn is_http_version(v: &str) -> bool {
    v.strip_prefix("HTTP/").is_some_and(|n| {
        let mut it = n.split('.');
        match (it.next(), it.next(), it.next()) {
            (Some(a), b, None) => {
                !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.is_none_or(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
            }
            _ => false,
        }
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

impl IntoResponse for Response {
    fn into_response(self) -> axum::response::Response {
        let mut r = (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            self.body,
        )
            .into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// The operations endpoints; they answer GET and HEAD only (checked before routing).
pub const OPS_PATHS: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/alarms"];

/// Every route of the listener: the operations endpoints, then the operator station when it
/// is configured.
fn router(state: Arc<HttpState>) -> Router {
    let mut r = Router::new();
    for path in OPS_PATHS {
        let st = state.clone();
        r = if path == "/metrics" {
            r.route(path, get(move || async move { metrics(&st) }))
        } else {
            r.route(path, get(move || async move { route(path, &st) }))
        };
    }
    if let Some(web) = &state.web {
        r = r.merge(crate::io::web::router(web.clone()));
    }
    r.fallback(|| async { Response::text(404, "not found\n") })
}

fn route(path: &str, state: &HttpState) -> Response {
    match path {
        "/healthz" => {
            let l = state.pulse.liveness(state.clock.mono());
            if l.alive {
                Response::text(200, "ok\n")
            } else {
                Response::text(503, &format!("{}\n", l.failing.join("\n")))
            }
        }
        "/readyz" => {
            let r = readiness(
                &state.metrics,
                &state.devices.borrow(),
                state.config_loaded,
                state.pulse.limits.ready_share,
            );
            let status = if r.ready { 200 } else { 503 };
            Response::json(status, serde_json::to_vec(&r).unwrap_or_default())
        }
        "/alarms" => {
            let alarms = state.alarms.borrow().clone();
            let wire: Vec<AlarmJson<'_>> = alarms.alarms.iter().map(AlarmJson::from).collect();
            Response::json(200, serde_json::to_vec(&wire).unwrap_or_default())
        }
        _ => Response::text(404, "not found\n"),
    }
}

/// `/metrics`: the text encoded in chunks of ~16 KB straight from the live counters
/// ([`Metrics::scrape`]), handed to hyper as they are and each freed once written, so a scrape
/// of hundreds of devices never makes one ~400 KB string nor a copy of every series' labels.
/// They are all encoded before the head goes out, for its Content-Length (plain clients and
/// HTTP/1.0 ones read the body by its length, not as chunked transfer encoding).
fn metrics(state: &HttpState) -> axum::response::Response {
    // Counted under the watch's read lock (a few dozen entries), not cloned out of it.
    let counts = state.alarms.borrow().counts();
    let chunks: Vec<axum::body::Bytes> = state
        .metrics
        .scrape(counts, state.clock.now())
        .map(axum::body::Bytes::from)
        .collect();
    let length = chunks.iter().map(|c| c.len()).sum::<usize>();
    let body =
        futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut r = axum::body::Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `/readyz`: config loaded, a sink connected, `share` of the devices answering
/// ([`health::readiness`]).
pub fn readiness(
    metrics: &Metrics,
    devices: &DeviceHealth,
    config_loaded: bool,
    share: f64,
) -> Readiness {
    let sinks_connected = metrics
        .sinks
        .iter()
        .filter(|s| s.connected.load(Ordering::Relaxed))
        .count();
    health::readiness(config_loaded, sinks_connected, devices, share)
}

/// Renders every metric as OpenMetrics text (names, help and values live in
/// `metrics.rs`; the alarm counts come from the engine's snapshot). Pure: `now` is passed in.
pub fn render_metrics(metrics: &Arc<Metrics>, alarms: &AlarmSnapshot, now: Ts) -> String {
    metrics.render(&alarms.counts(), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alarm::{Cause, Transition};
    use crate::core::model::Quality;

    fn event(device: &str, rule: &str, priority: Priority, state: &'static str) -> AlarmEvent {
        AlarmEvent {
            device: Arc::from(device),
            rule: Arc::from(rule),
            tag: Arc::from("voltage"),
            unit: Arc::from("V"),
            priority,
            transition: Transition {
                from: state,
                to: state,
                at: 1_000,
                cause: Cause::Condition,
                by: None,
                note: None,
            },
            value: Some(12.5),
            limit: Some(8.0),
            quality: Quality::Good,
            message: "high".into(),
            since: 1_000,
            active_since: Some(1_000),
            acked_by: None,
            shelved_until: None,
        }
    }

    fn metrics() -> Arc<Metrics> {
        let m = Metrics::new(
            ["pot \"7\"\\a\nb".to_string(), "kiln".to_string()],
            ["plant".to_string()],
        );
        m.started_ms.store(10_000, Ordering::Relaxed);
        m.devices[0].polls_ok.store(40, Ordering::Relaxed);
        m.devices[0].polls_failed.store(2, Ordering::Relaxed);
        m.devices[0].samples.store(300, Ordering::Relaxed);
        m.devices[1].samples.store(100, Ordering::Relaxed);
        m.devices[0].rtt_us_last.store(1_500, Ordering::Relaxed);
        m
    }

    #[test]
    fn alarms_are_counted_by_state_and_priority_with_zeros() {
        let snap = AlarmSnapshot::from_events(
            &[
                event("pot-2", "a", Priority::Low, "active_acked"),
                event("pot-1", "a", Priority::Critical, "active_unacked"),
                event("pot-3", "b", Priority::Critical, "active_unacked"),
            ],
            3,
            4,
        );
        assert_eq!(snap.alarms[0].priority, Priority::Critical);
        assert_eq!(snap.alarms[2].priority, Priority::Low);
        let counts = snap.by_state_priority();
        assert_eq!(counts.len(), 16);
        assert_eq!(counts[&("active_unacked", Priority::Critical)], 2);
        assert_eq!(counts[&("latched", Priority::High)], 0);
        let text = render_metrics(&metrics(), &snap, 20_000);
        assert!(
            text.contains("alsentry_alarms{state=\"active_unacked\",priority=\"critical\"} 2\n")
        );
        assert!(text.contains("alsentry_alarms{state=\"active_acked\",priority=\"low\"} 1\n"));
        assert!(text.contains("alsentry_alarms{state=\"latched\",priority=\"medium\"} 0\n"));
        assert!(text.contains("\nalsentry_alarm_floods_total 3\n"));
        assert!(text.contains("\nalsentry_alarm_chattering_total 4\n"));
    }

    #[test]
    fn request_heads_are_parsed_strictly() {
        let ok = |s: &str| parse_request(s.as_bytes(), 8);
        assert_eq!(
            ok("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*"),
            Ok(Request {
                get_or_head: true,
                path: "/metrics".into()
            })
        );
        assert_eq!(
            ok("\r\nHEAD /healthz HTTP/1.0"),
            Ok(Request {
                get_or_head: true,
                path: "/healthz".into()
            })
        );
        assert_eq!(
            ok("POST /metrics HTTP/1.1\r\nHost: a").map(|r| r.get_or_head),
            Ok(false)
        );
        assert_eq!(ok("GET /metrics HTTP/2.0"), Err(505));
        assert_eq!(ok("GET /metrics HTTP/1.1 extra"), Err(400));
        assert_eq!(ok("GET  /metrics HTTP/1.1"), Err(400));
        assert_eq!(ok("GET /metrics"), Err(400));
        assert_eq!(ok("GET /metrics FOO/1.1"), Err(400));
        assert_eq!(ok("G(T /metrics HTTP/1.1"), Err(400));
        assert_eq!(ok("GET metrics HTTP/1.1"), Err(400));
        assert_eq!(ok("GET ftp://h/metrics HTTP/1.1"), Err(400));
        assert_eq!(
            ok("GET HTTP://host:9184/alarms?x HTTP/1.1").map(|r| r.path),
            Ok("/alarms".to_string())
        );
        assert_eq!(
            ok("GET http://host HTTP/1.1").map(|r| r.path),
            Ok("/".to_string())
        );
        assert_eq!(ok("GET /met\x01rics HTTP/1.1"), Err(400));
        assert_eq!(ok("GET / HTTP/1.1\r\nno colon here"), Err(400));
        assert_eq!(ok("GET / HTTP/1.1\r\nBad Name: x"), Err(400));
        assert_eq!(ok("GET / HTTP/1.1\r\nA: b\r\n folded"), Err(400));
        assert_eq!(ok(""), Err(400));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\xff: x", 8), Err(400));
        let many = format!("GET / HTTP/1.1{}", "\r\nX: y".repeat(9));
        assert_eq!(ok(&many), Err(431));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(
            head in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let _ = parse_request(&head, 8);
            let _ = head_end(&head);
        }

        #[test]
        fn parsing_near_valid_requests_never_panics(
            method in "[A-Z]{0,7}",
            target in "[ -~\u{80}-\u{10ffff}]{0,40}",
            version in "HTTP/[0-9.]{0,4}",
            header in "[ -~]{0,40}",
        ) {
            let head = format!("{method} {target} {version}\r\n{header}");
            if let Ok(r) = parse_request(head.as_bytes(), 8) {
                proptest::prop_assert!(r.path.starts_with('/'));
                proptest::prop_assert_eq!(r.get_or_head, method == "GET" || method == "HEAD");
            }
        }
    }

    #[test]
    fn head_end_accepts_crlf_and_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn readiness_names_each_failing_condition() {
        let m = metrics();
        let (health, devices) =
            crate::io::health::channel(m.devices.iter().map(|d| d.name.clone()));
        let r = readiness(&m, &devices.borrow(), false, 0.5);
        assert!(!r.ready);
        assert_eq!(
            r.failing,
            vec![
                "config not loaded",
                "no sink connected",
                "no device answering"
            ]
        );
        m.sinks[0].connected.store(true, Ordering::Relaxed);
        health.set(1, true);
        let r = readiness(&m, &devices.borrow(), true, 0.5);
        assert!(r.ready);
        assert_eq!((r.sinks_connected, r.devices_up), (1, 1));
    }
}
