//! Operator commands arriving as JSON on the agent's command topic, e.g.
//! `{"op":"ack","device":"pot-017","rule":"anode_effect","by":"shift-a","note":"checked"}`.
//! Parsing is strict and field by field; a bad command gets a clear error, never a panic.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::engine::Command;
use super::model::Ts;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Alarm {
        device: String,
        rule: String,
        by: String,
        command: Command,
    },
    Reload {
        by: String,
    },
    /// Confirms a proposed action (docs/DISPOSAL.md).
    Confirm {
        action: String,
        device: String,
        /// The proposal's number, when the operator names it.
        proposal: Option<u64>,
        by: String,
    },
    /// Sets (`on`) or releases a kill switch: of `area`, or of every action.
    Kill {
        area: Option<String>,
        on: bool,
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Echoed in the reply so a console can match it.
    pub request_id: Option<String>,
    pub op: String,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub schema: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ts: String,
}

pub const REPLY_SCHEMA: &str = "alsentry/cmd-reply/1";

impl Reply {
    /// A successful reply to `op` (with the caller's `request_id`), at `now`.
    pub fn ok(request_id: Option<String>, op: Option<String>, now: Ts) -> Reply {
        Reply {
            schema: REPLY_SCHEMA,
            ok: true,
            request_id,
            op,
            device: None,
            rule: None,
            state: None,
            error: None,
            ts: super::time::rfc3339_ms(now),
        }
    }

    /// A refusal of `op`, saying why.
    pub fn refused(
        request_id: Option<String>,
        op: Option<String>,
        error: impl Into<String>,
        now: Ts,
    ) -> Reply {
        Reply {
            ok: false,
            error: Some(error.into()),
            ..Reply::ok(request_id, op, now)
        }
    }

    /// The refusal of a command that could not be parsed.
    pub fn unparsed(e: ParseError, now: Ts) -> Reply {
        Reply::refused(e.request_id, e.op, e.message, now)
    }

    /// Names the alarm the command was for.
    pub fn on(mut self, device: String, rule: String) -> Reply {
        self.device = Some(device);
        self.rule = Some(rule);
        self
    }

    /// The state the alarm went to.
    pub fn state(mut self, state: Option<&str>) -> Reply {
        self.state = state.map(str::to_string);
        self
    }
}
pub const OPS: &str = "ack, shelve, unshelve, reset, out_of_service, return_to_service, reload, confirm, kill, release_kill";
const MAX_TEXT: usize = 256;
/// The largest command accepted, in bytes.
pub const MAX_BYTES: usize = 4096;
/// Shelving is time-limited by design; a week is the longest an alarm may be hidden.
pub const MAX_SHELVE_MS: i64 = 7 * 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub request_id: Option<String>,
    pub op: Option<String>,
    pub message: String,
}

fn text(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) if required => Err(format!("missing \"{key}\"")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_TEXT => {
            Err(format!("\"{key}\" is longer than {MAX_TEXT} bytes"))
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(format!("\"{key}\" contains control characters"))
        }
        Some(Value::String(s)) if required && s.trim().is_empty() => {
            Err(format!("\"{key}\" is empty"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

/// Parses a command; `now` turns a shelve duration into an end time.
pub fn parse(payload: &[u8], now: Ts) -> Result<Parsed, ParseError> {
    let err = |rid: Option<String>, op: Option<String>, m: String| ParseError {
        request_id: rid,
        op,
        message: m,
    };
    if payload.len() > MAX_BYTES {
        return Err(err(
            None,
            None,
            format!("command larger than {MAX_BYTES} bytes"),
        ));
    }
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| err(None, None, format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(err(None, None, "a command must be a JSON object such as {\"op\":\"ack\",\"device\":\"pot-017\",\"rule\":\"anode_effect\",\"by\":\"shift-a\"}".into()));
    };
    let request_id = match obj.get("request_id").or(obj.get("id")) {
        Some(Value::String(s)) if s.len() <= MAX_TEXT => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let op = text(&obj, "op", true)
        .map_err(|m| err(request_id.clone(), None, m))?
        .unwrap_or_default();
    let fail = |m: String| err(request_id.clone(), Some(op.clone()), m);
    let known = [
        "op",
        "device",
        "rule",
        "by",
        "note",
        "duration",
        "until",
        "request_id",
        "id",
        "action",
        "area",
        "proposal",
    ];
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(fail(format!(
            "unknown field \"{k}\"; accepted: {}",
            known.join(", ")
        )));
    }
    let by = text(&obj, "by", true).map_err(&fail)?.unwrap_or_default();
    if op == "reload" {
        return Ok(Parsed {
            request_id,
            op,
            request: Request::Reload { by },
        });
    }
    if op == "kill" || op == "release_kill" {
        let area = text(&obj, "area", false).map_err(&fail)?;
        return Ok(Parsed {
            request_id: request_id.clone(),
            request: Request::Kill {
                area,
                on: op == "kill",
                by,
            },
            op,
        });
    }
    if op == "confirm" {
        let action = text(&obj, "action", true)
            .map_err(&fail)?
            .unwrap_or_default();
        let device = text(&obj, "device", true)
            .map_err(&fail)?
            .unwrap_or_default();
        let proposal = match obj.get("proposal") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => return Err(fail("\"proposal\" must be a proposal number".into())),
        };
        return Ok(Parsed {
            request_id: request_id.clone(),
            op,
            request: Request::Confirm {
                action,
                device,
                proposal,
                by,
            },
        });
    }
    let command = match op.as_str() {
        "ack" => Command::Ack {
            note: text(&obj, "note", false).map_err(&fail)?,
        },
        "shelve" => {
            let until = match (obj.get("duration"), obj.get("until")) {
                (Some(Value::String(d)), None) => {
                    let ms = super::duration::parse_duration_ms(d)
                        .map_err(|e| fail(format!("\"duration\": {e}")))?;
                    if ms <= 0 || ms > MAX_SHELVE_MS {
                        return Err(fail("\"duration\" must be between 1s and 7d".into()));
                    }
                    now + ms
                }
                (None, Some(Value::String(u))) => {
                    let t = super::time::parse_ts(u)
                        .ok_or_else(|| fail("\"until\" must be an RFC 3339 time".into()))?;
                    if t <= now || t - now > MAX_SHELVE_MS {
                        return Err(fail("\"until\" must be in the future and within 7d".into()));
                    }
                    t
                }
                (None, None) => {
                    return Err(fail(
                        "shelve needs \"duration\" (e.g. \"2h\") or \"until\"".into(),
                    ))
                }
                _ => {
                    return Err(fail(
                        "give \"duration\" as a string such as \"30m\", or \"until\", not both"
                            .into(),
                    ))
                }
            };
            Command::Shelve { until }
        }
        "unshelve" => Command::Unshelve,
        "reset" => Command::Reset,
        "out_of_service" => Command::OutOfService,
        "return_to_service" => Command::ReturnToService,
        other => return Err(fail(format!("unknown op \"{other}\"; accepted: {OPS}"))),
    };
    let device = text(&obj, "device", true)
        .map_err(&fail)?
        .unwrap_or_default();
    let rule = text(&obj, "rule", true).map_err(&fail)?.unwrap_or_default();
    Ok(Parsed {
        request_id,
        op,
        request: Request::Alarm {
            device,
            rule,
            by,
            command,
        },
    })
}

/// The `request_id` and `op` of a command that will not be executed, for its refusal.
fn ids(payload: &[u8], now: Ts) -> (Option<String>, Option<String>) {
    match parse(payload, now) {
        Ok(p) => (p.request_id, Some(p.op)),
        Err(e) => (e.request_id, e.op),
    }
}

/// The refusal of a command delivered with RETAIN set: it came from the broker's retained
/// store (or, with MQTT 5, was published retained) and would run again at every reconnect.
pub fn refuse_retained(payload: &[u8], now: Ts) -> Reply {
    let (request_id, op) = ids(payload, now);
    Reply::refused(
        request_id,
        op,
        "refused: the command was delivered with RETAIN set and is never executed (a retained command would run again at every reconnect); publish commands without retain, and clear the retained one",
        now,
    )
}

/// The answer when the engine's command queue is full.
pub fn busy(payload: &[u8], now: Ts) -> Reply {
    let (request_id, op) = ids(payload, now);
    Reply::refused(
        request_id,
        op,
        "busy: too many commands at once; not executed, send it again",
        now,
    )
}

/// How long a `request_id` is remembered: the same command (same bytes) carrying one seen
/// this recently is not executed again, the first reply is sent again.
pub const DEDUP_WINDOW_MS: i64 = 10 * 60_000;
/// At most this many `request_id`s are remembered (the oldest are forgotten first).
pub const DEDUP_MAX: usize = 10_000;

/// The replies of recent commands by `request_id`, so that a command sent twice (a console's
/// retry, a duplicate QoS 1 delivery) is executed once and answered the same way twice. A
/// *different* command that reuses an id is a new command: consoles that number their
/// commands per session must not see one refused for an old id.
#[derive(Debug, Default)]
pub struct RecentReplies {
    /// id → (hash of the command's bytes, first reply).
    by_id: HashMap<String, (u64, Reply)>,
    /// (when remembered, id), oldest first.
    order: VecDeque<(Ts, String)>,
}

fn digest(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same bytes give the same digest for the life of the process.
    let mut h = std::hash::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

impl RecentReplies {
    /// The first reply to this very command (`payload`, carrying `request_id`), if it came
    /// within [`DEDUP_WINDOW_MS`] before `now`.
    pub fn get(&mut self, request_id: &str, payload: &[u8], now: Ts) -> Option<Reply> {
        self.forget_before(now - DEDUP_WINDOW_MS);
        match self.by_id.get(request_id) {
            Some((d, reply)) if *d == digest(payload) => Some(reply.clone()),
            _ => None,
        }
    }

    /// Remembers the reply to `payload` when it carries a `request_id`.
    pub fn remember(&mut self, payload: &[u8], reply: &Reply, now: Ts) {
        let Some(id) = &reply.request_id else {
            return;
        };
        let entry = (digest(payload), reply.clone());
        // A reused id starts its window again: its old place in the order would forget it early.
        if self.by_id.insert(id.clone(), entry).is_some() {
            self.order.retain(|(_, o)| o != id);
        }
        self.order.push_back((now, id.clone()));
        while self.order.len() > DEDUP_MAX {
            if let Some((_, old)) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    fn forget_before(&mut self, t: Ts) {
        while let Some((at, id)) = self.order.front() {
            if *at > t {
                break;
            }
            self.by_id.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_answered_with_its_first_reply_within_the_window() {
        let mut r = RecentReplies::default();
        let cmd = br#"{"op":"ack","device":"d","rule":"r","by":"b","request_id":"c-1"}"#;
        let first = Reply::ok(Some("c-1".into()), Some("ack".into()), 1_000);
        r.remember(cmd, &first, 1_000);
        r.remember(b"{}", &Reply::ok(None, Some("ack".into()), 1_000), 1_000);
        assert_eq!(r.get("c-1", cmd, 2_000), Some(first.clone()));
        assert_eq!(r.get("c-1", cmd, 1_000 + DEDUP_WINDOW_MS - 1), Some(first));
        let other = br#"{"op":"reset","device":"d","rule":"r","by":"b","request_id":"c-1"}"#;
        assert_eq!(
            r.get("c-1", other, 2_000),
            None,
            "another command reusing the id"
        );
        assert_eq!(
            r.get("c-1", cmd, 1_000 + DEDUP_WINDOW_MS),
            None,
            "forgotten"
        );
        for i in 0..DEDUP_MAX + 1 {
            r.remember(b"x", &Reply::ok(Some(format!("x{i}")), None, 0), 5_000);
        }
        assert_eq!(r.get("x0", b"x", 5_000), None, "the oldest goes first");
        assert!(r.get(&format!("x{DEDUP_MAX}"), b"x", 5_000).is_some());
    }

    #[test]
    fn a_reused_request_id_gets_a_whole_window_again() {
        let mut r = RecentReplies::default();
        let a = br#"{"op":"ack","device":"d","rule":"r","by":"b","request_id":"c-2"}"#;
        let b = br#"{"op":"reset","device":"d","rule":"r","by":"b","request_id":"c-2"}"#;
        r.remember(a, &Reply::ok(Some("c-2".into()), Some("ack".into()), 0), 0);
        let second = Reply::ok(Some("c-2".into()), Some("reset".into()), 300_000);
        r.remember(b, &second, 300_000);
        // The first command's window has ended; the second's has not.
        assert_eq!(r.get("c-2", b, DEDUP_WINDOW_MS + 1), Some(second));
    }

    #[test]
    fn refusals_keep_the_request_id_and_op() {
        let p = br#"{"op":"out_of_service","device":"d","rule":"r","by":"b","request_id":"q"}"#;
        let r = refuse_retained(p, 0);
        assert_eq!(
            (r.ok, r.request_id.as_deref(), r.op.as_deref()),
            (false, Some("q"), Some("out_of_service"))
        );
        assert!(r.error.unwrap().contains("RETAIN"));
        let r = busy(b"{\"op\":\"ack\",\"id\":7}", 0);
        assert_eq!(r.request_id.as_deref(), Some("7"));
        assert!(r.error.unwrap().starts_with("busy: "));
    }

    #[test]
    fn parses_each_op() {
        let p = parse(
            br#"{"op":"ack","device":"pot-017","rule":"anode_effect","by":"shift-a","note":"ok"}"#,
            0,
        )
        .unwrap();
        assert_eq!(
            p.request,
            Request::Alarm {
                device: "pot-017".into(),
                rule: "anode_effect".into(),
                by: "shift-a".into(),
                command: Command::Ack {
                    note: Some("ok".into())
                }
            }
        );
        let p = parse(
            br#"{"op":"shelve","device":"d","rule":"r","by":"b","duration":"2h"}"#,
            1000,
        )
        .unwrap();
        assert!(matches!(
            p.request,
            Request::Alarm {
                command: Command::Shelve { until: 7_201_000 },
                ..
            }
        ));
        for op in ["unshelve", "reset", "out_of_service", "return_to_service"] {
            let json =
                format!(r#"{{"op":"{op}","device":"d","rule":"r","by":"b","request_id":"42"}}"#);
            let p = parse(json.as_bytes(), 0).unwrap();
            assert_eq!(p.request_id.as_deref(), Some("42"));
        }
        assert!(matches!(
            parse(br#"{"op":"reload","by":"ops"}"#, 0).unwrap().request,
            Request::Reload { .. }
        ));
    }

    #[test]
    fn rejects_bad_commands_with_clear_errors() {
        let cases: [(&[u8], &str); 9] = [
            (b"not json", "malformed JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"device":"d"}"#, "missing \"op\""),
            (br#"{"op":"explode","by":"b"}"#, "unknown op"),
            (br#"{"op":"ack","device":"d","rule":"r"}"#, "missing \"by\""),
            (
                br#"{"op":"ack","device":5,"rule":"r","by":"b"}"#,
                "must be a string",
            ),
            (
                br#"{"op":"shelve","device":"d","rule":"r","by":"b"}"#,
                "needs \"duration\"",
            ),
            (
                br#"{"op":"shelve","device":"d","rule":"r","by":"b","duration":"30d"}"#,
                "between 1s and 7d",
            ),
            (
                br#"{"op":"ack","device":"d","rule":"r","by":"b","sudo":true}"#,
                "unknown field",
            ),
        ];
        for (input, expected) in cases {
            let e = parse(input, 0).unwrap_err();
            assert!(
                e.message.contains(expected),
                "{}: {}",
                String::from_utf8_lossy(input),
                e.message
            );
        }
    }

    #[test]
    fn parses_confirm_and_kill_switches() {
        let p = parse(
            br#"{"op":"confirm","action":"extra_feed","device":"pot-1","by":"li","proposal":42}"#,
            0,
        )
        .unwrap();
        assert_eq!(
            p.request,
            Request::Confirm {
                action: "extra_feed".into(),
                device: "pot-1".into(),
                proposal: Some(42),
                by: "li".into()
            }
        );
        let p = parse(br#"{"op":"kill","area":"line-2","by":"boss"}"#, 0).unwrap();
        assert_eq!(
            p.request,
            Request::Kill {
                area: Some("line-2".into()),
                on: true,
                by: "boss".into()
            }
        );
        let p = parse(br#"{"op":"release_kill","by":"boss"}"#, 0).unwrap();
        assert_eq!(
            p.request,
            Request::Kill {
                area: None,
                on: false,
                by: "boss".into()
            }
        );
        for (input, expected) in [
            (
                &br#"{"op":"confirm","device":"d","by":"b"}"#[..],
                "missing \"action\"",
            ),
            (
                br#"{"op":"confirm","action":"a","by":"b"}"#,
                "missing \"device\"",
            ),
            (
                br#"{"op":"confirm","action":"a","device":"d","by":"b","proposal":"x"}"#,
                "proposal number",
            ),
            (br#"{"op":"kill"}"#, "missing \"by\""),
        ] {
            let e = parse(input, 0).unwrap_err();
            assert!(e.message.contains(expected), "{}", e.message);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes, 0);
        }
    }
}
