// The operator station. Plain JS, no framework, no network beyond the agent itself.
// Every value from the agent goes into the page as text (textContent), never as HTML.
"use strict";

const T = {
  en: {
    alarms: "Alarms", history: "History", agent: "Agent", logout: "Log out", login_title: "Operator login",
    username: "User", password: "Password", login: "Log in", area: "Area", device: "Device", priority: "Priority",
    alarm: "Alarm", state: "State", since: "Since", value: "Value", message: "Message", ack_info: "Acknowledged",
    no_alarms: "No alarms.", shelved: "Shelved", oos: "Out of service", duration: "Duration", reason: "Reason",
    shelve: "Shelve", cancel: "Cancel", back: "Back", filter: "Filter (device, alarm, user…)", csv: "Export CSV",
    time: "Time", kind: "Kind", by: "By", devices: "Devices", sinks: "MQTT sinks", all: "All", restored: "Restored at start", refused: "Refused", links: "Links",
    flood: "Alarm flood: alarms are arriving faster than an operator can handle.",
    ack: "Ack", unshelve: "Unshelve", reset: "Reset", out_of_service: "Out of service", return_to_service: "Return",
    sound_on: "Sound on", sound_off: "Sound off", live: "live", reconnecting: "reconnecting…",
    until: "until", new_critical: "New critical alarm", up: "up", down: "down", connected: "connected",
    disconnected: "disconnected", outbox: "outbox", done: "Done", anonymous: "viewing without login",
    critical: "critical", high: "high", medium: "medium", low: "low",
    active_unacked: "active, unacknowledged", active_acked: "active, acknowledged", returned_unacked: "returned, unacknowledged",
    latched: "latched", normal: "normal", out_of_service_state: "out of service",
    transition: "transition", command: "command",
    actions: "Actions", confirm: "Confirm", expires: "expires",
  },
  zh: {
    alarms: "报警", history: "历史", agent: "网关", logout: "退出", login_title: "操作员登录",
    username: "用户", password: "密码", login: "登录", area: "区域", device: "设备", priority: "优先级",
    alarm: "报警", state: "状态", since: "开始时间", value: "数值", message: "信息", ack_info: "确认",
    no_alarms: "无报警。", shelved: "已搁置", oos: "停用", duration: "时长", reason: "原因",
    shelve: "搁置", cancel: "取消", back: "返回", filter: "筛选（设备、报警、用户…）", csv: "导出 CSV",
    time: "时间", kind: "类型", by: "操作人", devices: "设备", sinks: "MQTT 连接", all: "全部", restored: "启动时恢复", refused: "已拒绝", links: "通信链路",
    flood: "报警泛滥：报警到达速度超过操作员处理能力。",
    ack: "确认", unshelve: "取消搁置", reset: "复位", out_of_service: "停用", return_to_service: "恢复",
    sound_on: "声音开", sound_off: "声音关", live: "实时", reconnecting: "重新连接中…",
    until: "至", new_critical: "新的紧急报警", up: "在线", down: "离线", connected: "已连接",
    disconnected: "未连接", outbox: "待发", done: "完成", anonymous: "未登录浏览",
    critical: "紧急", high: "高", medium: "中", low: "低",
    active_unacked: "活动，未确认", active_acked: "活动，已确认", returned_unacked: "已恢复，未确认",
    latched: "锁存", normal: "正常", out_of_service_state: "停用",
    transition: "状态变化", command: "命令",
    actions: "处置动作", confirm: "确认执行", expires: "截止",
  },
};

const S = {
  lang: localStorage.getItem("alsentry.lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en"),
  sound: localStorage.getItem("alsentry.sound") !== "off",
  session: null, agent: null, snap: null, view: "alarms", device: null,
  seenCritical: null, es: null, shelving: null,
};

const $ = (id) => document.getElementById(id);
const t = (k) => (T[S.lang] && T[S.lang][k]) || T.en[k] || k;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function tz() { return (S.agent && S.agent.timezone) || "UTC"; }

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "";
  try {
    return new Intl.DateTimeFormat(S.lang === "zh" ? "zh-CN" : "en-GB", {
      timeZone: tz(), year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    }).format(new Date(ms));
  } catch (_) { return new Date(ms).toISOString(); }
}

function stateText(s) { return s === "out_of_service" ? t("out_of_service_state") : t(s); }

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = !text;
  clearTimeout(say.timer);
  if (text) say.timer = setTimeout(() => { m.hidden = true; }, ok ? 4000 : 10000);
}

function applyLang() {
  document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-placeholder]")) e.placeholder = t(e.dataset.i18nPlaceholder);
  $("lang").textContent = S.lang === "zh" ? "English" : "中文";
  $("sound").textContent = S.sound ? t("sound_on") : t("sound_off");
  if (S.live !== undefined) setLive(S.live);
  if (S.snap) render();
}

async function api(path, opts) {
  const o = Object.assign({ credentials: "same-origin", headers: {} }, opts || {});
  if (o.body !== undefined) {
    o.headers["Content-Type"] = "application/json";
    o.body = JSON.stringify(o.body);
  }
  if (S.session && S.session.csrf) o.headers["X-CSRF-Token"] = S.session.csrf;
  const r = await fetch(path, o);
  let j = null;
  try { j = await r.json(); } catch (_) { j = null; }
  return { status: r.status, ok: r.ok, json: j, headers: r.headers };
}

// ---- session ---------------------------------------------------------------------------------

async function start() {
  applyLang();
  const r = await api("/api/session");
  if (r.ok) { signedIn(r.json); return; }
  const info = r.headers.get("x-alsentry-agent");
  if (info) { try { S.agent = JSON.parse(info); } catch (_) { /* shown without a name */ } }
  showLogin();
}

function showLogin() {
  if (S.es) { S.es.close(); S.es = null; }
  S.session = null;
  $("agent").textContent = S.agent ? `${S.agent.id} · ${S.agent.site}/${S.agent.area}` : "";
  $("nav").hidden = true; $("logout").hidden = true; $("login-open").hidden = true; $("user").textContent = "";
  for (const v of ["alarms", "device", "history", "agent"]) $("view-" + v).hidden = true;
  $("login").hidden = false;
  $("login-form").querySelector("input").focus();
}

function signedIn(s) {
  S.session = s; S.agent = s.agent;
  $("agent").textContent = `${s.agent.id} · ${s.agent.site}/${s.agent.area}`;
  $("user").textContent = s.anonymous ? t("anonymous") : `${s.user} (${s.role})`;
  $("logout").hidden = s.anonymous;
  // Viewing without login: anyone may still log in to act.
  $("login-open").hidden = !s.anonymous;
  $("login").hidden = true; $("nav").hidden = false;
  connect();
  show("alarms");
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const err = $("login-error");
  err.hidden = true;
  const r = await api("/api/login", { method: "POST", body: { username: f.username.value, password: f.password.value } });
  f.password.value = "";
  if (r.ok) { signedIn(r.json); unlockAudio(); return; }
  err.textContent = (r.json && r.json.error) || `HTTP ${r.status}`;
  err.hidden = false;
});

$("logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST" });
  showLogin();
});

$("login-open").addEventListener("click", () => showLogin());

$("lang").addEventListener("click", () => {
  S.lang = S.lang === "zh" ? "en" : "zh";
  localStorage.setItem("alsentry.lang", S.lang);
  applyLang();
});

$("sound").addEventListener("click", () => {
  S.sound = !S.sound;
  localStorage.setItem("alsentry.sound", S.sound ? "on" : "off");
  if (S.sound) unlockAudio();
  applyLang();
});

for (const b of document.querySelectorAll("[data-view]")) b.addEventListener("click", () => show(b.dataset.view));

function show(view, device) {
  S.view = view; S.device = device || null;
  for (const v of ["alarms", "device", "history", "agent"]) $("view-" + v).hidden = v !== view;
  for (const b of document.querySelectorAll("nav [data-view]")) b.classList.toggle("active", b.dataset.view === view);
  if (view === "history") loadHistory();
  if (view === "agent") loadAgent();
  if (view === "device") loadDevice();
}

// ---- live alarms -----------------------------------------------------------------------------

function connect() {
  if (S.es) S.es.close();
  const es = new EventSource("/api/events");
  S.es = es;
  es.addEventListener("alarms", (ev) => {
    setLive(true);
    S.snap = JSON.parse(ev.data);
    render();
  });
  es.onerror = async () => {
    setLive(false);
    if (es.readyState === EventSource.CLOSED) {
      const r = await api("/api/session");
      if (!r.ok) showLogin();
      else setTimeout(connect, 1000);
    }
  };
}

function setLive(up) {
  S.live = up;
  $("live").textContent = up ? "● " + t("live") : t("reconnecting");
  $("live").className = up ? "live" : "live down";
}

function options(sel, values, labels) {
  const cur = sel.value;
  sel.replaceChildren(el("option", { value: "", text: t("all") }),
    ...values.map((v) => el("option", { value: v, text: labels ? labels(v) : v })));
  if (values.includes(cur)) sel.value = cur;
}

for (const id of ["f-area", "f-device", "f-priority"]) $(id).addEventListener("change", () => render());

function actionButton(op, a, enabled) {
  const testid = { out_of_service: "oos", return_to_service: "return" }[op] || op;
  // Never disabled: whoever clicks is told by the agent why an action does not apply.
  return el("button", {
    type: "button", "data-testid": testid, "data-op": op, class: enabled ? "" : "idle", text: t(op),
    onclick: () => (op === "shelve" ? openShelve(a) : act(op, a)),
  });
}

function row(a, kind) {
  const unacked = a.state.endsWith("unacked") || a.state === "latched";
  const acts = el("td", { class: "actions" });
  if (kind === "alarm") {
    acts.append(actionButton("ack", a, unacked), actionButton("shelve", a, true),
      actionButton("reset", a, a.state === "latched"), actionButton("out_of_service", a, true));
  } else if (kind === "shelved") {
    acts.append(actionButton("unshelve", a, true), actionButton("out_of_service", a, true));
  } else {
    acts.append(actionButton("return_to_service", a, true));
  }
  const value = a.value === null || a.value === undefined ? "" : `${a.value} ${a.unit || ""}`;
  const ack = a.acked_by ? a.acked_by : "";
  const extra = kind === "shelved" && a.shelved_until_ms ? ` ${t("until")} ${fmtTime(a.shelved_until_ms)}` : "";
  const testid = { alarm: "alarm-row", shelved: "shelved-row", oos: "oos-row" }[kind];
  const dev = el("span", { class: "device-link", text: a.device, onclick: () => show("device", a.device) });
  return el("tr", { "data-testid": testid, "data-alarm-id": a.id, "data-priority": a.priority, "data-state": a.state },
    el("td", { text: t(a.priority) }), el("td", {}, dev), el("td", { text: a.rule }),
    el("td", { "data-testid": "alarm-state", text: stateText(a.state) + extra }),
    el("td", { text: fmtTime(a.since_ms) }), el("td", { text: value }),
    el("td", { class: "wide", text: a.message }), el("td", { "data-testid": "ack-info", text: ack }), acts);
}

function render() {
  const s = S.snap;
  if (!s) return;
  const all = s.alarms.concat(s.shelved, s.out_of_service);
  options($("f-area"), [...new Set(all.map((a) => a.area))].sort());
  options($("f-device"), [...new Set(all.map((a) => a.device))].sort());
  options($("f-priority"), ["critical", "high", "medium", "low"], t);
  const fa = $("f-area").value, fd = $("f-device").value, fp = $("f-priority").value;
  const keep = (a) => (!fa || a.area === fa) && (!fd || a.device === fd) && (!fp || a.priority === fp);
  const shown = s.alarms.filter(keep);
  $("alarm-list").replaceChildren(...shown.map((a) => row(a, "alarm")));
  $("no-alarms").hidden = shown.length > 0;
  $("shelved-list").replaceChildren(...s.shelved.filter(keep).map((a) => row(a, "shelved")));
  $("oos-list").replaceChildren(...s.out_of_service.filter(keep).map((a) => row(a, "oos")));
  $("flood").hidden = !s.flood;
  announceCritical(s.alarms);
  if (S.view === "device") loadDevice();
  loadActions();
}

// Disposal (docs/DISPOSAL.md): proposals waiting for an operator, and the last audit events.
async function loadActions() {
  const r = await api("/api/actions");
  if (!r.ok || !r.json) return;
  $("proposal-list").replaceChildren(...r.json.proposals.map((p) => el("tr", { "data-testid": "proposal-row", "data-proposal": p.id },
    el("td", { text: p.action }), el("td", { text: p.device }), el("td", { text: `${p.target} = ${p.value}` }),
    el("td", { text: `${t("expires")} ${p.expires}` }),
    el("td", { class: "actions" }, el("button", {
      type: "button", "data-testid": "confirm", text: t("confirm"),
      onclick: () => act("confirm", { device: p.device, rule: p.action }, { action: p.action, proposal: p.id }),
    })))));
  $("audit-list").replaceChildren(...r.json.audit.map((a) => el("tr", { "data-testid": "audit-row" },
    el("td", { text: a.ts || "" }), el("td", { text: a.event || "" }), el("td", { text: a.action || "" }),
    el("td", { text: a.device || "" }), el("td", { text: a.by || "" }),
    el("td", { class: "wide", text: a.reason ? `${a.reason}: ${a.detail || ""}` : (a.detail || "") }))));
}

// A new unacknowledged critical alarm: a banner and, when switched on, a tone.
function announceCritical(alarms) {
  const now = alarms.filter((a) => a.priority === "critical" && a.state === "active_unacked").map((a) => a.id);
  if (S.seenCritical === null) { S.seenCritical = new Set(now); return; }
  const fresh = now.filter((id) => !S.seenCritical.has(id));
  S.seenCritical = new Set(now);
  if (!fresh.length) return;
  $("critical-text").textContent = `${t("new_critical")}: ${fresh.join(", ")}`;
  $("critical").hidden = false;
  if (S.sound) beep();
}
$("critical-close").addEventListener("click", () => { $("critical").hidden = true; });

let audio = null;
function unlockAudio() {
  try { if (!audio) audio = new (window.AudioContext || window.webkitAudioContext)(); if (audio.state === "suspended") audio.resume(); } catch (_) { audio = null; }
}
function beep() {
  unlockAudio();
  if (!audio) return;
  for (let i = 0; i < 3; i++) {
    const o = audio.createOscillator(), g = audio.createGain();
    o.frequency.value = 880; o.connect(g); g.connect(audio.destination);
    const at = audio.currentTime + i * 0.4;
    g.gain.setValueAtTime(0.3, at); g.gain.setValueAtTime(0, at + 0.25);
    o.start(at); o.stop(at + 0.3);
  }
}

// ---- actions ---------------------------------------------------------------------------------

function openShelve(a) {
  S.shelving = a;
  $("shelve-what").textContent = `${a.device} / ${a.rule}`;
  $("shelve-reason").value = "";
  $("shelve-dialog").hidden = false;
}
$("shelve-cancel").addEventListener("click", () => { $("shelve-dialog").hidden = true; S.shelving = null; });
$("shelve-confirm").addEventListener("click", async () => {
  const a = S.shelving;
  if (!a) return;
  $("shelve-dialog").hidden = true; S.shelving = null;
  await act("shelve", a, { duration: $("shelve-duration").value, note: $("shelve-reason").value });
});

async function act(op, a, extra) {
  const body = Object.assign({ op, device: a.device, rule: a.rule }, extra || {});
  const r = await api("/api/command", { method: "POST", body });
  if (r.status === 401) { showLogin(); return; }
  if (r.ok) say(`${t(op)} ${a.device}/${a.rule}: ${t("done")}`, true);
  else say(`${t("refused")} (${r.status}): ${(r.json && r.json.error) || ""}`, false);
}

// ---- device, history, agent ------------------------------------------------------------------

async function loadDevice() {
  const name = S.device;
  if (!name) return;
  $("device-name").textContent = name;
  const r = await api("/api/device/" + encodeURIComponent(name));
  if (!r.ok) { say((r.json && r.json.error) || `HTTP ${r.status}`); return; }
  const d = r.json;
  $("device-up").textContent = d.up ? t("up") : t("down");
  $("device-up").className = "pill " + (d.up ? "up" : "down");
  $("device-tags").replaceChildren(...d.tags.map((g) =>
    el("tr", { "data-testid": "device-tag", "data-tag": g.name },
      el("td", { text: g.name }),
      el("td", { text: g.value === null ? "" : `${+g.value.toFixed(3)} ${g.unit}` }),
      el("td", {}, el("span", { class: "pill " + (g.quality === "good" ? "up" : "down"), text: g.quality })))));
  $("device-trends").replaceChildren(...d.tags.filter((g) => g.points.length > 1).map((g) => trend(g, d)));
  $("device-alarms").replaceChildren(...d.alarms.map((a) => row(a, "alarm")),
    ...d.shelved.map((a) => row(a, "shelved")), ...d.out_of_service.map((a) => row(a, "oos")));
}

// A trend of one tag over the last minutes, alarm spans shaded in their priority's colour.
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
function trend(g, d) {
  const W = 1000, H = 160, pad = 4;
  const vs = g.points.map((p) => p[1]);
  let lo = Math.min(...vs), hi = Math.max(...vs);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  // From the oldest point held (a young agent has less than the full span) to now.
  const t0 = Math.max(d.from_ms, Math.min(g.points[0][0], d.now_ms - 1000));
  const x = (ts) => ((Math.max(ts, t0) - t0) / (d.now_ms - t0)) * W;
  const y = (v) => H - pad - ((v - lo) / (hi - lo)) * (H - 2 * pad);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "trend", "data-testid": "device-trend", "data-tag": g.name });
  const colour = { critical: "#d7263d", high: "#f46036", medium: "#e6c229", low: "#3f88c5" };
  for (const sp of d.spans) {
    const x0 = x(sp.from), x1 = x(sp.to === null ? d.now_ms : sp.to);
    s.append(svg("rect", { x: x0, y: 0, width: Math.max(1, x1 - x0), height: H, fill: colour[sp.priority] || "#888", "fill-opacity": 0.25, "data-testid": "alarm-span" }));
  }
  s.append(svg("polyline", { points: g.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), fill: "none", stroke: "#8cc4ff", "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
  return el("figure", {}, el("figcaption", { text: `${g.name}: ${+lo.toFixed(2)} … ${+hi.toFixed(2)} ${g.unit}` }), s);
}

let historyTimer = null;
$("h-filter").addEventListener("input", () => { clearTimeout(historyTimer); historyTimer = setTimeout(loadHistory, 250); });

async function loadHistory() {
  const q = $("h-filter").value;
  $("h-csv").href = "/api/history?format=csv&q=" + encodeURIComponent(q);
  const r = await api("/api/history?q=" + encodeURIComponent(q));
  if (!r.ok) return;
  $("history-list").replaceChildren(...r.json.events.slice(0, 500).map((e) =>
    el("tr", { "data-testid": "history-row", "data-priority": e.priority || undefined },
      el("td", { text: fmtTime(e.ts) }), el("td", { text: t(e.kind) }), el("td", { text: e.device }),
      el("td", { text: e.rule }), el("td", { text: e.kind === "transition" ? `${stateText(e.from)} → ${stateText(e.to)}` : t(e.to) }),
      el("td", { text: e.by || "" }), el("td", { class: "wide", text: [e.message, e.note].filter(Boolean).join(" — ") }))));
}

async function loadAgent() {
  const r = await api("/api/agent");
  if (!r.ok) return;
  $("agent-links").replaceChildren(...r.json.links.map((l) =>
    el("tr", { "data-testid": "agent-link" }, el("td", { text: l.link }),
      el("td", {}, el("span", { class: "pill " + (l.up ? "up" : "down"), text: l.up ? t("up") : t("down") })),
      el("td", { text: `${l.devices_up} / ${l.devices}` }))));
  $("agent-devices").replaceChildren(...r.json.devices.map((d) =>
    el("tr", { "data-testid": "agent-device" },
      el("td", {}, el("span", { class: "device-link", text: d.name, onclick: () => show("device", d.name) })),
      el("td", { text: d.link || "" }),
      el("td", {}, el("span", { class: "pill " + (d.up ? "up" : "down"), text: d.up ? t("up") : t("down") })),
      el("td", { text: `${d.polls_ok} / ${d.polls_failed}` }), el("td", { text: `${d.rtt_ms} ms` }))));
  $("agent-sinks").replaceChildren(...r.json.sinks.map((s) =>
    el("tr", { "data-testid": "agent-sink" }, el("td", { text: s.name }),
      el("td", {}, el("span", { class: "pill " + (s.connected ? "up" : "down"), text: s.connected ? t("connected") : t("disconnected") })),
      el("td", { text: `${t("outbox")}: ${s.outbox_depth}` }))));
  $("agent-restored").replaceChildren(...r.json.restored.map((l) => el("li", { text: l })));
}

start();
