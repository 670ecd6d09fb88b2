//! `alsentry demo`: the simulator, an embedded broker and the agent in one process, with the
//! alarms and summaries printed as they arrive, one line each.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Endpoint};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Use this broker (mqtt://host:port) instead of the embedded one.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Agent configuration (default: the shipped config/demo.toml; ALSENTRY_CONFIG is not
    /// read here, so a gateway's own configuration is never picked up by a demo).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Simulator scenario (default: the shipped config/scenarios/demo.toml).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Stop after this long (e.g. "90s"); runs until Ctrl-C by default.
    #[arg(long, value_name = "DURATION")]
    pub run_for: Option<String>,
}

/// The shipped files, so the demo works from any directory.
const FILES: [(&str, &str); 5] = [
    ("demo.toml", include_str!("../config/demo.toml")),
    (
        "templates/cell.toml",
        include_str!("../config/templates/cell.toml"),
    ),
    (
        "templates/kiln.toml",
        include_str!("../config/templates/kiln.toml"),
    ),
    (
        "templates/calciner.toml",
        include_str!("../config/templates/calciner.toml"),
    ),
    (
        "scenarios/demo.toml",
        include_str!("../config/scenarios/demo.toml"),
    ),
];

fn unpack(dir: &Path) -> anyhow::Result<()> {
    for (name, text) in FILES {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn priority(&self, p: &str) -> String {
        let code = match p {
            "critical" => "1;97;41",
            "high" => "1;31",
            "medium" => "33",
            "low" => "36",
            _ => "2",
        };
        self.paint(code, &format!("{p:<8}"))
    }
}

/// One readable line for an alarm or summary payload; None for other topics.
pub fn render_line(topic: &str, payload: &[u8], color: bool) -> Option<String> {
    let st = Style { on: color };
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let time = v["ts"]
        .as_str()
        .and_then(|t| t.get(11..19))
        .unwrap_or("--:--:--")
        .to_string();
    if topic.contains("/alarm/") {
        let state = v["state"].as_str().unwrap_or("?");
        let replay = if v["replayed"].as_bool() == Some(true) {
            " (replayed)"
        } else {
            ""
        };
        Some(format!(
            "{time}  {}  {:<8} {:<18} {:<17} {}{replay}",
            st.priority(v["priority"].as_str().unwrap_or("?")),
            v["device"].as_str().unwrap_or("?"),
            v["rule"].as_str().unwrap_or("?"),
            st.paint(
                if state.starts_with("active") {
                    "1"
                } else {
                    "2"
                },
                state
            ),
            v["message"].as_str().unwrap_or("")
        ))
    } else if topic.ends_with("/summary") {
        let tags = &v["tags"];
        let mean = |t: &str| tags[t]["mean"].as_f64();
        let mut parts = Vec::new();
        if let Some(x) = mean("voltage") {
            parts.push(format!("V {x:.3} V"));
        }
        if let Some(x) = mean("current") {
            parts.push(format!("I {x:.1} kA"));
        }
        if let Some(x) = v["kpi"]["pseudo_resistance_uohm"].as_f64() {
            parts.push(format!("R {x:.2} µΩ"));
        }
        if let Some(x) = v["kpi"]["voltage_noise_mv"].as_f64() {
            parts.push(format!("noise {x:.0} mV"));
        }
        if let Some(x) = v["kpi"]["energy_ac_kwh_t"].as_f64() {
            parts.push(format!("{x:.0} kWh/t AC (benchmark 13000)"));
        }
        if let Some(x) = mean("flue_temp") {
            parts.push(format!("flue {x:.0} °C"));
        }
        if let Some(x) = mean("curve_temp") {
            parts.push(format!("curve {x:.0} °C"));
        }
        if let Some(x) = mean("draft") {
            parts.push(format!("draft {x:.0} Pa"));
        }
        Some(format!(
            "{time}  {}  {:<8} {}",
            st.paint("2", "summary "),
            v["device"].as_str().unwrap_or("?"),
            parts.join("  ")
        ))
    } else if topic.ends_with("/audit") {
        let event = v["event"].as_str().unwrap_or("?");
        let detail = match event {
            "proposed" => format!(
                "proposes {} = {} (id {}), confirm by {}",
                v["target"].as_str().unwrap_or("?"),
                v["value"],
                v["id"],
                v["expires"]
                    .as_str()
                    .and_then(|t| t.get(11..19))
                    .unwrap_or("?")
            ),
            "confirmed" => format!("confirmed by {}", v["by"].as_str().unwrap_or("?")),
            "written" => format!(
                "wrote {} to {} {}",
                v["words"],
                v["table"].as_str().unwrap_or("?"),
                v["address"]
            ),
            "verified" => format!("read back {}: verified", v["read_back"]),
            "expired" => "not confirmed in time: nothing written".to_string(),
            "dry_run" => format!("would write {} (dry run)", v["words"]),
            "kill" => format!(
                "kill switch {} by {}",
                if v["kill_on"] == true { "on" } else { "off" },
                v["by"].as_str().unwrap_or("?")
            ),
            _ => format!(
                "{} {}",
                v["reason"].as_str().unwrap_or(""),
                v["detail"].as_str().unwrap_or("")
            ),
        };
        Some(format!(
            "{time}  {}  {:<8} {:<18} {:<17} {detail}",
            st.paint("1;35", "action  "),
            v["device"].as_str().unwrap_or("-"),
            v["action"].as_str().unwrap_or("-"),
            event,
        ))
    } else {
        None
    }
}

/// The demo's scripted operator confirms proposals on this cell (and lets the others expire).
const CONFIRMS_ON: &str = "pot-002";

pub fn main(args: DemoArgs) -> ExitCode {
    if !crate::telemetry::filter_given() {
        // The embedded broker logs every client disconnect as an error; the demo's own lines matter here.
        crate::telemetry::init(Some("warn,rumqttd=off"));
    } else {
        crate::telemetry::init(None);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config_arg = args.config.clone();
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<crate::config::ConfigError>() {
            Some(ce) => {
                let path = config_arg.unwrap_or_else(|| PathBuf::from("demo.toml"));
                crate::telemetry::config_refused(&path, ce, "; not starting the demo")
            }
            None => {
                eprintln!("demo: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let work = tempfile_dir()?;
    unpack(&work)?;
    let scenario_path = args
        .scenario
        .clone()
        .unwrap_or_else(|| work.join("scenarios/demo.toml"));
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| work.join("demo.toml"));
    let scenario = crate::sim::scenario::Scenario::from_file(&scenario_path)
        .with_context(|| format!("scenario {}", scenario_path.display()))?;
    let sim = crate::sim::start(
        scenario,
        crate::sim::StartOptions {
            ephemeral_ports: true,
            truth: Some(work.join("truth.jsonl")),
            ..Default::default()
        },
    )
    .await?;

    let (broker_url, _broker) = match &args.broker {
        Some(u) => (u.clone(), None),
        None => embedded()?,
    };
    // Unwrapped, so that `main` can tell an invalid configuration (exit 78) from the rest.
    let mut cfg = Config::load(&config_path)?;
    let url = crate::config::mqtt::parse_broker_url(&broker_url).map_err(|e| anyhow::anyhow!(e))?;
    for s in &mut cfg.sinks {
        s.url = url.clone();
    }
    cfg.agent.state_dir = work.join("state");
    for d in &mut cfg.devices {
        if let Some(ep) = sim.endpoint(&d.name) {
            d.endpoint = Endpoint::Tcp {
                host: ep.addr.ip().to_string(),
                port: ep.addr.port(),
            };
        }
    }
    let root = cfg
        .sinks
        .first()
        .map(|s| s.topic_root.clone())
        .unwrap_or_else(|| "alsentry".into());
    println!(
        "alsentry demo: simulated plant ({} devices), broker {}, agent {}",
        sim.endpoints().len(),
        url,
        cfg.agent.id
    );
    println!(
        "the same stream: mosquitto_sub -h {} -p {} -t '{root}/#' -v",
        url.host, url.port
    );
    println!("within a minute pot-003 underfeeds (warning), goes into an anode effect, and recovers; Ctrl-C to stop");
    println!("pot-002 underfeeds too: the agent proposes extra feeding, the operator confirms it over MQTT, and the anode effect does not come\n");
    let cmd_topic = format!(
        "{root}/{}/{}/_agent/{}/cmd",
        cfg.agent.site, cfg.agent.area, cfg.agent.id
    );

    let mut o = MqttOptions::new(
        format!("alsentry-demo-console-{}", std::process::id()),
        url.host.clone(),
        url.port,
    );
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 64);
    let clock: Arc<dyn Clock> = SystemClock::new();
    let running = crate::app::start(cfg, clock).await?;
    let color = std::io::stdout().is_terminal();
    let filter = format!("{root}/#");
    let printer = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(line) = render_line(&p.topic, &p.payload, color) {
                        println!("{line}");
                    }
                    if let Some(cmd) = confirmation(&p.topic, &p.payload) {
                        println!(
                            "{:>8}  operator  {CONFIRMS_ON}  confirms over MQTT: {cmd}",
                            ""
                        );
                        let _ = client
                            .publish(cmd_topic.clone(), QoS::AtLeastOnce, false, cmd.into_bytes())
                            .await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
    let limit = match args.run_for.as_deref() {
        Some(d) => Some(
            crate::config::units::parse_duration_ms(d)
                .map_err(|e| anyhow::anyhow!("--run-for: {e}"))?,
        ),
        None => None,
    };
    match limit {
        Some(ms) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms as u64)) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    running.stop().await;
    printer.abort();
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The scripted operator: the confirm command for a proposal on [`CONFIRMS_ON`].
fn confirmation(topic: &str, payload: &[u8]) -> Option<String> {
    if !topic.ends_with("/audit") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if v["event"] != "proposed" || v["device"] != CONFIRMS_ON || v["mode"] != "confirm" {
        return None;
    }
    Some(
        serde_json::json!({
            "op": "confirm",
            "action": v["action"],
            "device": v["device"],
            "proposal": v["id"],
            "by": "demo-operator",
        })
        .to_string(),
    )
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("alsentry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(feature = "embedded-broker")]
fn embedded() -> anyhow::Result<(String, Option<crate::broker::EmbeddedBroker>)> {
    let b = crate::broker::EmbeddedBroker::start()?;
    Ok((b.url(), Some(b)))
}

#[cfg(not(feature = "embedded-broker"))]
fn embedded() -> anyhow::Result<(String, Option<()>)> {
    anyhow::bail!("this build has no embedded broker (feature `embedded-broker`); pass --broker mqtt://host:port")
}
