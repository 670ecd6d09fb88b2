//! The shipped Mosquitto configuration (deploy/compose/mosquitto/) run for real: two brokers
//! on free ports, the plant bridged to the province exactly as compose would run them.
//!
//! - The bridge carries the uplink copy of high/critical alarms, summaries and agent status,
//!   under the contract topics; never raw data, never low/medium alarms, never the plant copy.
//! - The plant ACL lets only `operator` command an agent.
//!
//! Needs `mosquitto` (Debian package `mosquitto`, or MOSQUITTO=/path).

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use serde_json::json;

use crate::support::mosquitto::Mosquitto;
use crate::support::net::free_port;

const SITE_PREFIX: &str = "alsentry/qingzhen/potline-1";
const BRIDGE_STATE: &str = "alsentry/qingzhen/_bridge/plant-broker/state";
/// How long to keep listening for messages that must not arrive, after the last one that must.
const QUIET: Duration = Duration::from_secs(3);

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose/mosquitto")
}

/// Replaces whole lines of a shipped config, failing loudly if an expected line is gone so
/// that a change to the shipped file cannot silently turn this test into a different one.
fn rewrite(conf: &str, replacements: &[(String, String)]) -> String {
    let mut seen = vec![false; replacements.len()];
    let out: Vec<String> = conf
        .lines()
        .map(|line| {
            for (i, (from, to)) in replacements.iter().enumerate() {
                if line.trim() == *from {
                    seen[i] = true;
                    return to.clone();
                }
            }
            line.to_string()
        })
        .collect();
    for ((from, _), seen) in replacements.iter().zip(seen) {
        assert!(seen, "the shipped config no longer has the line `{from}`");
    }
    out.join("\n") + "\n"
}

/// A Mosquitto started from a shipped config, with the files it names copied next to it.
struct Broker {
    mosquitto: Mosquitto,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// `name` is the shipped file stem (plant, provincial); `extra` rewrites more lines.
    fn start(name: &'static str, port: u16, extra: &[(&str, String)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let src = shipped_dir();
        for ext in ["acl", "passwd"] {
            let file = format!("{name}.{ext}");
            fs::copy(src.join(&file), dir.path().join(&file)).unwrap();
        }
        let shipped = fs::read_to_string(src.join(format!("{name}.conf"))).unwrap();
        let at = |f: &str| dir.path().join(f).display().to_string();
        let mut replacements: Vec<(String, String)> = vec![
            ("listener 1883".into(), format!("listener {port} 127.0.0.1")),
            ("persistence true".into(), "persistence false".into()),
            (
                "persistence_location /mosquitto/data/".into(),
                String::new(),
            ),
            (
                format!("password_file /mosquitto/config/{name}.passwd"),
                format!("password_file {}", at(&format!("{name}.passwd"))),
            ),
            (
                format!("acl_file /mosquitto/config/{name}.acl"),
                format!("acl_file {}", at(&format!("{name}.acl"))),
            ),
        ];
        replacements.extend(extra.iter().map(|(f, t)| (f.to_string(), t.clone())));
        let conf = rewrite(&shipped, &replacements);
        let mosquitto = Mosquitto::with_config(dir.path(), name, port, &conf);
        Broker {
            mosquitto,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.mosquitto.log()
    }
}

/// A connected MQTT client whose event loop runs on its own thread.
struct Mqtt {
    client: Client,
    events: mpsc::Receiver<Result<Event, String>>,
}

const STEP: Duration = Duration::from_secs(10);

impl Mqtt {
    fn connect(port: u16, user: &str, id: &str) -> Mqtt {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials(user, format!("{user}-test"));
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(o, 64);
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for ev in connection.iter() {
                let stop = ev.is_err();
                if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                    return;
                }
            }
        });
        let mut m = Mqtt { client, events };
        match m.until(|p| matches!(p, Packet::ConnAck(_)), STEP) {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success, "{user} refused")
            }
            other => panic!("{user}: no CONNACK: {other:?}"),
        }
        m
    }

    /// Next incoming packet matching `want`, or None at the deadline.
    fn until(&mut self, want: impl Fn(&Packet) -> bool, within: Duration) -> Option<Packet> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(Event::Incoming(p))) if want(&p) => return Some(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("MQTT event loop ended"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        match self.until(|p| matches!(p, Packet::SubAck(_)), STEP) {
            Some(Packet::SubAck(ack)) => assert!(
                ack.return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                "subscription to {filter} refused"
            ),
            other => panic!("no SUBACK for {filter}: {other:?}"),
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK, so the broker has routed it
    /// (or dropped it) before the caller goes on: publishes are processed in order.
    fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .unwrap();
        assert!(
            self.until(|p| matches!(p, Packet::PubAck(_)), STEP)
                .is_some(),
            "no PUBACK for {topic}"
        );
    }

    fn next_publish(&mut self, within: Duration) -> Option<Publish> {
        match self.until(|p| matches!(p, Packet::Publish(_)), within) {
            Some(Packet::Publish(p)) => Some(p),
            _ => None,
        }
    }
}

fn alarm(rule: &str, priority: &str) -> Vec<u8> {
    json!({
        "schema": "alsentry/alarm/1", "agent": "gw-qz-01", "site": "qingzhen",
        "area": "potline-1", "device": "pot-001", "rule": rule, "priority": priority,
        "state": "active_unack", "prev_state": "normal",
    })
    .to_string()
    .into_bytes()
}

struct Pair {
    // Fields drop in order: the plant (and its bridge) stops before the province.
    plant: Broker,
    provincial: Broker,
}

fn start_pair() -> Pair {
    let province_port = free_port();
    let plant_port = free_port();
    let provincial = Broker::start("provincial", province_port, &[]);
    let plant = Broker::start(
        "plant",
        plant_port,
        &[(
            "address provincial-broker:1883",
            format!("address 127.0.0.1:{province_port}"),
        )],
    );
    Pair { plant, provincial }
}

#[test]
#[ignore = "needs mosquitto; .ci/run runs it"]
fn bridge_carries_only_uplink_alarms_summaries_and_status() {
    let pair = start_pair();

    let mut province = Mqtt::connect(pair.provincial.port, "console", "province-console");
    province.subscribe("alsentry/#");
    // The bridge announces itself (retained) once it is connected: no guessing how long.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match province.next_publish(left) {
            Some(p) if p.topic == BRIDGE_STATE && p.payload.as_ref() == b"1" => break,
            Some(_) => {}
            None => panic!(
                "the bridge did not connect within 15 s:\n{}",
                pair.plant.log()
            ),
        }
    }

    let mut agent = Mqtt::connect(pair.plant.port, "alsentry", "alsentry-gw-qz-01");
    let contract_low = format!("{SITE_PREFIX}/pot-001/alarm/bath_temp_low");
    let contract_crit = format!("{SITE_PREFIX}/pot-001/alarm/anode_effect");
    let summary = format!("{SITE_PREFIX}/pot-001/summary");
    let data = format!("{SITE_PREFIX}/pot-001/data");
    let status = format!("{SITE_PREFIX}/_agent/gw-qz-01/status");
    let up = |t: &str| format!("uplink/{t}");
    let sample = br#"{"tag":"voltage","value":4.21}"#.to_vec();

    // What must not cross goes first: the bridge is one ordered connection, so anything
    // wrongly forwarded would reach the province before the positives below.
    agent.publish(&contract_low, alarm("bath_temp_low", "low"), true);
    agent.publish(&data, sample.clone(), false);
    // A misconfigured uplink sink sending data: refused by the ACL and by the bridge.
    agent.publish(&up(&data), sample, false);
    // The plant copy of everything (contract topics) stays on the plant broker.
    agent.publish(&contract_crit, alarm("anode_effect", "critical"), true);
    agent.publish(&summary, br#"{"copy":"plant"}"#.to_vec(), false);
    // The uplink copy: what the agent's uplink sink publishes.
    agent.publish(&up(&contract_crit), alarm("anode_effect", "critical"), true);
    agent.publish(&up(&summary), br#"{"copy":"uplink"}"#.to_vec(), false);
    agent.publish(&up(&status), br#"{"status":"online"}"#.to_vec(), true);

    let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let expected = [contract_crit.clone(), summary.clone(), status.clone()];
    let mut quiet_until: Option<Instant> = None;
    let positives_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stop_at = quiet_until.unwrap_or(positives_deadline);
        let left = stop_at.saturating_duration_since(Instant::now());
        match province.next_publish(left) {
            Some(p) => got
                .entry(p.topic.clone())
                .or_default()
                .push(p.payload.to_vec()),
            None if quiet_until.is_some() => break,
            None => panic!("positives missing at the province; got {:?}", got.keys()),
        }
        if quiet_until.is_none() && expected.iter().all(|t| got.contains_key(t)) {
            quiet_until = Some(Instant::now() + QUIET);
        }
    }
    got.remove(BRIDGE_STATE);

    let topics: Vec<&String> = got.keys().collect();
    let mut want: Vec<&String> = expected.iter().collect();
    want.sort();
    assert_eq!(
        topics, want,
        "the province must see exactly the critical alarm, the summary and the status"
    );
    assert_eq!(got[&contract_crit].len(), 1, "critical alarm duplicated");
    let crit: serde_json::Value = serde_json::from_slice(&got[&contract_crit][0]).unwrap();
    assert_eq!(crit["priority"], "critical");
    assert_eq!(
        got[&summary],
        vec![br#"{"copy":"uplink"}"#.to_vec()],
        "only the uplink copy of the summary crosses"
    );

    // A console joining later gets the current alarm state, retained, under the contract topic.
    let mut late = Mqtt::connect(pair.provincial.port, "console", "province-late");
    late.subscribe(&format!("{SITE_PREFIX}/+/alarm/+"));
    let p = late
        .next_publish(STEP)
        .expect("retained critical alarm at the province");
    assert_eq!(p.topic, contract_crit);
    assert!(p.retain);
    assert!(
        late.next_publish(Duration::from_millis(500)).is_none(),
        "the low alarm must not be retained at the province"
    );
}

#[test]
#[ignore = "needs mosquitto; .ci/run runs it"]
fn plant_acl_lets_only_operator_command_agents() {
    let plant = Broker::start(
        "plant",
        free_port(),
        // No province in this test: point the bridge at a port nobody listens on.
        &[(
            "address provincial-broker:1883",
            format!("address 127.0.0.1:{}", free_port()),
        )],
    );
    let cmd = format!("{SITE_PREFIX}/_agent/gw-qz-01/cmd");
    let mut agent = Mqtt::connect(plant.port, "alsentry", "alsentry-gw-qz-01");
    agent.subscribe(&cmd);

    let mut console = Mqtt::connect(plant.port, "console", "console-1");
    console.publish(&cmd, br#"{"cmd":"ack","by":"console"}"#.to_vec(), false);
    // Agents may read their command topic but not write it (no self-commands, no spoofing).
    let mut other_agent = Mqtt::connect(plant.port, "alsentry", "alsentry-gw-qz-02");
    other_agent.publish(&cmd, br#"{"cmd":"ack","by":"agent"}"#.to_vec(), false);
    // Both refused publishes were acknowledged, hence fully processed, before this one.
    let mut operator = Mqtt::connect(plant.port, "operator", "operator-1");
    operator.publish(&cmd, br#"{"cmd":"ack","by":"operator"}"#.to_vec(), false);

    let first = agent
        .next_publish(STEP)
        .expect("the operator's command must reach the agent");
    assert_eq!(first.topic, cmd);
    assert_eq!(
        String::from_utf8_lossy(&first.payload),
        r#"{"cmd":"ack","by":"operator"}"#,
        "a non-operator command got through"
    );
    assert!(
        agent.next_publish(Duration::from_secs(1)).is_none(),
        "a non-operator command got through"
    );
}
