//! Operator commands arriving as JSON on the agent's command topic, e.g.
//! `{"op":"ack","device":"pot-017","rule":"anode_effect","by":"shift-a","note":"checked"}`.
//! Parsing is strict and field by field; a bad command gets a clear error, never a panic.

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
pub const OPS: &str = "ack, shelve, unshelve, reset, out_of_service, return_to_service, reload";
const MAX_TEXT: usize = 256;
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
    if payload.len() > 4096 {
        return Err(err(None, None, "command larger than 4096 bytes".into()));
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

#[cfg(test)]
mod tests {
    use super::*;

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

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes, 0);
        }
    }
}
