//! The operator station at `/`: a live alarm page (embedded HTML, CSS and JS; no CDN), its JSON
//! API and a server-sent event stream of the alarm snapshot.
//!
//! It decides nothing about alarms: it reads the engine's snapshot (the same watch channel as
//! `/alarms`) and sends actions into the engine's one command path as `CommandOrigin::Local`,
//! with the logged-in user as `by`, then waits for the engine's reply. Access: `auth`.

pub mod auth;
pub(crate) mod history;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::WatchStream;

use crate::clock::Clock;
use crate::core::engine::{TagTrend, AREA_DEVICE, FLOOD_RULE};
use crate::io::health::DeviceHealth;
use crate::io::http::{AlarmJson, AlarmSnapshot};
use crate::io::publisher::{CommandOrigin, InboundCommand};
use crate::metrics::Metrics;
use auth::{LoginLimiter, Role, Session, Sessions, Users};
use history::History;

/// The session cookie's name.
pub const COOKIE: &str = "alsentry_session";
/// The header that carries the CSRF token on every action.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long an action waits for the engine's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How far back the device view's trend goes.
pub const TREND_MS: i64 = 10 * 60_000;
/// Points per tag in the device view's trend, at most.
pub const TREND_POINTS: usize = 600;

/// A question for the engine task, which owns the windows: one device's tags and trend.
#[derive(Debug)]
pub struct DeviceQuery {
    pub device: String,
    pub since: crate::core::model::Ts,
    pub reply: oneshot::Sender<Option<Vec<TagTrend>>>,
}

/// What the page says about the agent (and uses for time zones).
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub id: String,
    pub site: String,
    pub area: String,
    /// IANA name, from `[agent] timezone`.
    pub timezone: String,
}

/// How the station is set up (`[http]`).
#[derive(Debug, Clone)]
pub struct WebOptions {
    pub users: Users,
    /// The users file (`[http] users`), re-read when it changes (after `alsentry user add`).
    pub users_file: Option<PathBuf>,
    /// Anyone may view without logging in (`[http] anonymous = true`).
    pub anonymous: bool,
    pub session_ttl_ms: i64,
    /// The cookie is `Secure` when the listener serves TLS.
    pub tls: bool,
    pub info: AgentInfo,
    /// Where the event history is kept (`None`: not kept).
    pub history: Option<PathBuf>,
    /// What the agent found on disk at start (outbox backlogs), one line each.
    pub restored: Vec<String>,
    /// Per device, in configuration order: the link (Modbus endpoint) it is polled over.
    pub links: Vec<String>,
}

/// The users and the file they came from.
#[derive(Debug)]
struct UsersFile {
    path: Option<PathBuf>,
    /// Modification time and length: a change of either means the file was rewritten.
    modified: Option<(std::time::SystemTime, u64)>,
    users: Arc<Users>,
}

fn modified(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Everything the station reads and the one channel it writes to.
#[derive(Debug)]
pub struct Web {
    users: Mutex<UsersFile>,
    anonymous: bool,
    tls: bool,
    info: AgentInfo,
    restored: Vec<String>,
    links: Vec<String>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<LoginLimiter>,
    commands: mpsc::Sender<InboundCommand>,
    queries: mpsc::Sender<DeviceQuery>,
    alarms: watch::Receiver<AlarmSnapshot>,
    devices: watch::Receiver<DeviceHealth>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    history: Option<Arc<History>>,
    /// The disposal audit file, for the actions list.
    audit: Option<crate::io::audit::AuditFile>,
}

/// The channels between the station and the engine task.
#[derive(Debug)]
pub struct EngineLink {
    pub commands: mpsc::Sender<InboundCommand>,
    pub queries: mpsc::Sender<DeviceQuery>,
    pub alarms: watch::Receiver<AlarmSnapshot>,
}

impl Web {
    pub fn new(
        opts: WebOptions,
        engine: EngineLink,
        devices: watch::Receiver<DeviceHealth>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Web {
        let audit = opts
            .history
            .as_deref()
            .map(crate::io::audit::AuditFile::new);
        let history = opts.history.map(|dir| Arc::new(History::open(&dir)));
        let mut restored = opts.restored;
        if let Some(h) = &history {
            restored.push(format!("history: {} entries", h.list("").len()));
        }
        Web {
            users: Mutex::new(UsersFile {
                modified: opts.users_file.as_deref().and_then(modified),
                path: opts.users_file,
                users: Arc::new(opts.users),
            }),
            anonymous: opts.anonymous,
            tls: opts.tls,
            info: opts.info,
            restored,
            links: opts.links,
            sessions: Mutex::new(Sessions::new(opts.session_ttl_ms)),
            limiter: Mutex::new(LoginLimiter::default()),
            commands: engine.commands,
            queries: engine.queries,
            alarms: engine.alarms,
            devices,
            metrics,
            clock,
            history,
            audit,
        }
    }

    /// The users, re-read first if the file changed since (a bad file keeps the old users).
    fn current_users(&self) -> Arc<Users> {
        let Ok(mut f) = self.users.lock() else {
            return Arc::new(Users::default());
        };
        if let Some(path) = f.path.clone() {
            let now = modified(&path);
            if now != f.modified {
                match Users::load(&path) {
                    Ok(u) => {
                        tracing::info!(file = %path.display(), "operator station: users file re-read");
                        f.users = Arc::new(u);
                        f.modified = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "operator station: users file not re-read; the previous users stay")
                    }
                }
            }
        }
        f.users.clone()
    }

    /// The history, for the engine task's side that records into it.
    pub fn history(&self) -> Option<Arc<History>> {
        self.history.clone()
    }

    /// The caller's session, or an anonymous viewer when the config allows it.
    fn who(&self, headers: &HeaderMap) -> Option<Session> {
        let now = self.clock.now();
        let token = cookie(headers, COOKIE);
        let found =
            token.and_then(|t| self.sessions.lock().ok().and_then(|mut s| s.touch(&t, now)));
        found.or_else(|| {
            self.anonymous.then(|| Session {
                user: String::new(),
                role: Role::Viewer,
                csrf: String::new(),
                expires: i64::MAX,
            })
        })
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The routes of the station; the listener merges them with the operations endpoints.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/app.js", get(|| async { asset("app.js") }))
        .route("/app.css", get(|| async { asset("app.css") }))
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/command", post(command))
        .route("/api/agent", get(agent))
        .route("/api/history", get(history_list))
        .route("/api/actions", get(actions_list))
        .route("/api/device/:name", get(device))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(web)
}

/// The page's files, compiled into the binary.
fn asset(name: &str) -> Response {
    let (body, ty): (&'static str, &'static str) = match name {
        "index.html" => (
            include_str!("assets/index.html"),
            "text/html; charset=utf-8",
        ),
        "app.js" => (
            include_str!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn no_store(v: Value) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "log in first")
}

fn session_json(web: &Web, s: &Session) -> Value {
    json!({
        "user": s.user,
        "role": s.role.as_str(),
        "csrf": s.csrf,
        "anonymous": s.user.is_empty(),
        "agent": web.info,
    })
}

async fn session(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match web.who(&headers) {
        Some(s) => no_store(session_json(&web, &s)),
        None => {
            let mut r = unauthorized();
            // The login form still needs the agent's name and time zone.
            if let Ok(v) = serde_json::to_string(&web.info) {
                if let Ok(h) = HeaderValue::from_str(&v) {
                    r.headers_mut().insert("x-alsentry-agent", h);
                }
            }
            r
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// The client's address, added to each request by the listener (for login limiting).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

async fn login(
    State(web): State<Arc<Web>>,
    client: Option<axum::Extension<ClientAddr>>,
    Json(form): Json<LoginForm>,
) -> Response {
    let now = web.clock.now();
    let name = form.username.trim().to_string();
    let addr = client.map(|c| c.0 .0.ip().to_string()).unwrap_or_default();
    let waited = match web.limiter.lock() {
        Ok(mut l) => l.check(&name, &addr, now),
        Err(_) => Ok(()),
    };
    if let Err(secs) = waited {
        tracing::warn!(user = %name, client = %addr, "operator station: login refused, too many failures");
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many failed logins; try again in {secs} s"),
        );
    }
    let users = web.current_users();
    let (n, pw) = (name.clone(), form.password);
    // argon2 is slow by design: off the async threads.
    let user = tokio::task::spawn_blocking(move || users.verify(&n, &pw).cloned())
        .await
        .ok()
        .flatten();
    let Some(user) = user else {
        if let Ok(mut l) = web.limiter.lock() {
            l.failed(&name, &addr, now);
        }
        tracing::warn!(user = %name, client = %addr, "operator station: login failed");
        return error(StatusCode::UNAUTHORIZED, "wrong user name or password");
    };
    if let Ok(mut l) = web.limiter.lock() {
        l.succeeded(&name);
    }
    let Ok(mut sessions) = web.sessions.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "sessions unavailable");
    };
    let (token, s) = sessions.open(&user, now);
    let ttl_s = sessions.ttl_ms / 1000;
    drop(sessions);
    tracing::info!(user = %user.name, role = user.role.as_str(), "operator station: logged in");
    let mut r = no_store(session_json(&web, &s));
    let secure = if web.tls { "; Secure" } else { "" };
    let c = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl_s}{secure}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Some(t) = cookie(&headers, COOKIE) {
        if let Ok(mut s) = web.sessions.lock() {
            s.close(&t);
        }
    }
    let mut r = no_store(json!({ "ok": true }));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("alsentry_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// The page's view of the snapshot: shown alarms, shelved and out-of-service lists, flood.
fn snapshot_json(web: &Web, snap: &AlarmSnapshot) -> Value {
    let row = |a: &crate::io::http::AlarmView| {
        let mut v = serde_json::to_value(AlarmJson::from(a)).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut v {
            o.insert("id".into(), format!("{}/{}", a.device, a.rule).into());
            o.insert("area".into(), web.info.area.clone().into());
            o.insert("shelved_until_ms".into(), a.shelved_until.into());
        }
        v
    };
    let flood = snap
        .alarms
        .iter()
        .any(|a| a.device == AREA_DEVICE && a.rule == FLOOD_RULE);
    json!({
        "alarms": snap.alarms.iter().map(row).collect::<Vec<_>>(),
        "shelved": snap.hidden.iter().filter(|a| a.state == "shelved").map(row).collect::<Vec<_>>(),
        "out_of_service": snap.hidden.iter().filter(|a| a.state == "out_of_service").map(row).collect::<Vec<_>>(),
        "flood": flood,
        "floods_total": snap.floods_total,
    })
}

async fn snapshot(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.who(&headers).is_none() {
        return unauthorized();
    }
    let snap = web.alarms.borrow().clone();
    no_store(snapshot_json(&web, &snap))
}

/// Server-sent events: the whole snapshot as event `alarms`, at once and after every change.
async fn events(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some(who) = web.who(&headers) else {
        return unauthorized();
    };
    let w = web.clone();
    // The stream ends with the session (at the next change): the page then asks to log in.
    let token = (!who.user.is_empty())
        .then(|| cookie(&headers, COOKIE))
        .flatten();
    let live = web.clone();
    let stream = WatchStream::new(web.alarms.clone())
        .take_while(move |_| {
            let ok = match &token {
                Some(t) => live
                    .sessions
                    .lock()
                    .map(|s| s.alive(t, live.clock.now()))
                    .unwrap_or(false),
                None => live.anonymous,
            };
            std::future::ready(ok)
        })
        .map(move |snap| {
            Ok::<_, Infallible>(
                Event::default()
                    .event("alarms")
                    .data(snapshot_json(&w, &snap).to_string()),
            )
        });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct Action {
    op: String,
    device: String,
    /// Absent for `confirm`.
    #[serde(default)]
    rule: String,
    /// `confirm`: the action and its proposal.
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    proposal: Option<u64>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

const ACTIONS: [&str; 7] = [
    "ack",
    "shelve",
    "unshelve",
    "reset",
    "out_of_service",
    "return_to_service",
    "confirm",
];

/// One action: the CSRF token, then the role, then the engine's own checks and reply.
async fn command(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Json(a): Json<Action>,
) -> Response {
    let Some(s) = web.who(&headers) else {
        return unauthorized();
    };
    if s.user.is_empty() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden: viewing without login; log in to act",
        );
    }
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !sent.is_some_and(|t| auth::same(t, &s.csrf)) {
        return error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token; reload the page and log in",
        );
    }
    if !ACTIONS.contains(&a.op.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown action \"{}\"; accepted: {}",
                a.op,
                ACTIONS.join(", ")
            ),
        );
    }
    let needed = Role::needed_for(&a.op);
    if s.role < needed {
        tracing::warn!(user = %s.user, op = %a.op, "operator station: action refused by role");
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "forbidden: {} ({}) may not {}: it needs the {} role",
                s.user,
                s.role.as_str(),
                a.op.replace('_', " "),
                needed.as_str()
            ),
        );
    }
    let mut payload = if a.op == "confirm" {
        json!({ "op": a.op, "device": a.device, "action": a.action, "proposal": a.proposal, "by": s.user })
    } else {
        json!({ "op": a.op, "device": a.device, "rule": a.rule, "by": s.user })
    };
    if let Some(n) = a.note.filter(|n| !n.trim().is_empty()) {
        payload["note"] = n.into();
    }
    if let Some(d) = a.duration.filter(|_| a.op == "shelve") {
        payload["duration"] = d.into();
    }
    let (tx, rx) = oneshot::channel();
    let cmd = InboundCommand {
        origin: CommandOrigin::Local { reply: tx },
        payload: payload.to_string().into_bytes(),
    };
    if tokio::time::timeout(REPLY_TIMEOUT, web.commands.send(cmd))
        .await
        .map_or(true, |r| r.is_err())
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine is not taking commands",
        );
    }
    match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
        Ok(Ok(reply)) => {
            let status = if reply.ok {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            let mut r = (status, Json(&reply)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => error(StatusCode::GATEWAY_TIMEOUT, "no reply from the engine"),
    }
}

/// The agent's own page: links and devices up or down, sinks and their outbox depth.
async fn agent(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.who(&headers).is_none() {
        return unauthorized();
    }
    use std::sync::atomic::Ordering::Relaxed;
    let health = web.devices.borrow().clone();
    let devices: Vec<Value> = web
        .metrics
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({
                "name": d.name,
                "link": web.links.get(i),
                "up": health.is_up(i as u32),
                "polls_ok": d.polls_ok.load(Relaxed),
                "polls_failed": d.polls_failed.load(Relaxed),
                "rtt_ms": d.rtt_us_last.load(Relaxed) as f64 / 1000.0,
            })
        })
        .collect();
    let sinks: Vec<Value> = web
        .metrics
        .sinks
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "connected": s.connected.load(Relaxed),
                "outbox_depth": s.outbox_depth.load(Relaxed),
                "outbox_bytes": s.outbox_bytes.load(Relaxed),
                "published": s.published.load(Relaxed),
            })
        })
        .collect();
    // A link is up while any of its devices answers.
    let mut links: Vec<(String, usize, usize)> = Vec::new();
    for (i, l) in web.links.iter().enumerate() {
        let up = usize::from(health.is_up(i as u32));
        match links.iter_mut().find(|x| &x.0 == l) {
            Some(x) => {
                x.1 += up;
                x.2 += 1;
            }
            None => links.push((l.clone(), up, 1)),
        }
    }
    let links: Vec<Value> = links
        .into_iter()
        .map(|(link, up, devices)| json!({ "link": link, "up": up > 0, "devices_up": up, "devices": devices }))
        .collect();
    no_store(json!({
        "agent": web.info,
        "links": links,
        "started_ms": web.metrics.started_ms.load(Relaxed),
        "now_ms": web.clock.now(),
        "devices": devices,
        "sinks": sinks,
        "restored": web.restored,
    }))
}

/// One device: whether it answers, its tags (latest value, quality, the trend its ring buffers
/// hold for the last [`TREND_MS`]), its alarms and the spans they were active in.
async fn device(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if web.who(&headers).is_none() {
        return unauthorized();
    }
    let Some(i) = web.metrics.devices.iter().position(|d| d.name == name) else {
        return error(StatusCode::NOT_FOUND, "no such device");
    };
    let up = web.devices.borrow().is_up(i as u32);
    let now = web.clock.now();
    let since = now - TREND_MS;
    let (tx, rx) = oneshot::channel();
    let q = DeviceQuery {
        device: name.clone(),
        since,
        reply: tx,
    };
    let tags = match web.queries.try_send(q) {
        Ok(()) => tokio::time::timeout(REPLY_TIMEOUT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let tags: Vec<Value> = tags
        .iter()
        .map(|t| {
            json!({
                "name": &*t.name,
                "unit": &*t.unit,
                "value": t.value,
                "quality": t.quality.label(),
                "points": t.points,
            })
        })
        .collect();
    let snap = web.alarms.borrow().clone();
    let all = snapshot_json(&web, &snap);
    let mine = |key: &str| -> Vec<Value> {
        all[key]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|a| a["device"] == name.as_str())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let spans = web
        .history
        .as_ref()
        .map(|h| history::spans(&h.list(""), &name, since))
        .unwrap_or_default();
    no_store(json!({
        "name": name,
        "up": up,
        "from_ms": since,
        "now_ms": now,
        "tags": tags,
        "spans": spans,
        "alarms": mine("alarms"),
        "shelved": mine("shelved"),
        "out_of_service": mine("out_of_service"),
    }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// Transitions and commands of the last shifts, newest first; `format=csv` downloads them.
async fn history_list(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    if web.who(&headers).is_none() {
        return unauthorized();
    }
    let Some(h) = &web.history else {
        return no_store(json!({ "events": [] }));
    };
    let filter = q.q.unwrap_or_default();
    let events = h.list(&filter);
    if q.format.as_deref() == Some("csv") {
        let mut r = history::to_csv(&events, &web.info.timezone).into_response();
        let hd = r.headers_mut();
        hd.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        hd.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"alsentry-history.csv\""),
        );
        return r;
    }
    no_store(json!({ "events": events }))
}

/// Disposal on the station: proposals still waiting and the last audit events, newest first,
/// read from the audit file (the engine task writes it before it publishes).
async fn actions_list(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.who(&headers).is_none() {
        return unauthorized();
    }
    let Some(file) = &web.audit else {
        return no_store(json!({ "proposals": [], "audit": [] }));
    };
    let lines: Vec<Value> = file
        .tail(AUDIT_LINES)
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let now = crate::core::time::rfc3339_ms(web.clock.now());
    let proposals = crate::io::audit::waiting(&lines, &now);
    let audit: Vec<&Value> = lines.iter().rev().take(30).collect();
    no_store(json!({ "proposals": proposals, "audit": audit }))
}

/// Audit lines the station reads back.
const AUDIT_LINES: usize = 500;
