//! The deploy/ files agree with each other: compose service names, mounted files, the
//! uplink prefix the agent writes and the one the bridge reads. No container engine is
//! reachable on the project's machines, so this is what catches a rename in one file only.
//! The systemd unit keeps its hardening. (What Mosquitto and systemd-analyze say about these
//! files is checked in tests/interop/.)

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[test]
fn compose_mounts_files_that_exist() {
    let compose = read("deploy/compose/compose.yaml");
    let base = repo().join("deploy/compose");
    let mut mounts = 0;
    for l in lines(&compose) {
        // Bind mounts are the relative sources: "- ./x:/y" or "- ../../config:/y".
        let Some(spec) = l.strip_prefix("- ") else {
            continue;
        };
        if !spec.starts_with('.') {
            continue;
        }
        let src = spec.split(':').next().unwrap();
        assert!(
            base.join(src).exists(),
            "compose.yaml mounts {src}, which does not exist"
        );
        mounts += 1;
    }
    assert!(mounts >= 4, "expected the config mounts in compose.yaml");
    let dockerfile = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("dockerfile: "))
        .unwrap();
    assert!(repo().join(dockerfile).is_file(), "{dockerfile} missing");
}

#[test]
fn compose_services_match_the_addresses_in_the_configs() {
    let compose = read("deploy/compose/compose.yaml");
    let has_service = |name: &str| compose.lines().any(|l| l == format!("  {name}:"));
    for s in ["plant-broker", "provincial-broker", "sim", "agent"] {
        assert!(has_service(s), "compose.yaml has no service {s}");
    }
    let plant = read("deploy/compose/mosquitto/plant.conf");
    assert!(lines(&plant).any(|l| l == "address provincial-broker:1883"));
    for conf in ["plant", "provincial"] {
        assert!(
            compose.contains(&format!("/mosquitto/config/{conf}.conf")),
            "compose.yaml does not start {conf}.conf"
        );
    }
    let agent: toml::Table = read("deploy/compose/alsentry.toml").parse().unwrap();
    let sinks = agent["mqtt"].as_array().unwrap();
    for s in sinks {
        assert_eq!(s["url"].as_str(), Some("mqtt://plant-broker:1883"));
    }
}

#[test]
fn the_agents_uplink_root_is_what_the_bridge_forwards() {
    let agent: toml::Table = read("deploy/compose/alsentry.toml").parse().unwrap();
    let roots: Vec<&str> = agent["mqtt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic_root"].as_str().unwrap())
        .collect();
    assert_eq!(roots, ["alsentry", "uplink/alsentry"]);
    let plant = read("deploy/compose/mosquitto/plant.conf");
    let bridged: Vec<&str> = lines(&plant).filter(|l| l.starts_with("topic ")).collect();
    assert_eq!(
        bridged,
        [
            "topic +/+/+/alarm/+ out 1 uplink/alsentry/ alsentry/",
            "topic +/+/+/summary out 1 uplink/alsentry/ alsentry/",
            "topic +/+/_agent/+/status out 1 uplink/alsentry/ alsentry/",
        ],
        "the bridge must forward only alarm, summary and status from the uplink root"
    );
}

#[test]
fn compose_agent_config_passes_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["check", "--config"])
        .arg(repo().join("deploy/compose/alsentry.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_unit_has_the_required_hardening() {
    let unit = read("deploy/systemd/alsentry.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "User=alsentry",
        "SupplementaryGroups=dialout",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "StateDirectory=alsentry",
        "ConfigurationDirectory=alsentry",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/bin/alsentry run --config /etc/alsentry/alsentry.toml",
        // The agent says when it is ready and pings the watchdog (src/io/notify.rs).
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        // An invalid configuration exits 78; restarting cannot fix it.
        "RestartPreventExitStatus=78",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyS rw",
    ] {
        assert!(has(line), "alsentry.service lacks `{line}`");
    }
}
