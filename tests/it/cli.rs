//! The conventions integrators script against: an invalid configuration exits 78 (EX_CONFIG)
//! from every subcommand that reads one, `-c` and `ALSENTRY_CONFIG` name the file everywhere,
//! the environment variables show in `--help`, and in JSON log mode the problems are JSON lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BROKEN: &str = "tests/cases/missing_agent_id/alsentry.toml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn alsentry(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alsentry"));
    c.args(args)
        .current_dir(repo())
        .env_remove("ALSENTRY_CONFIG")
        .env_remove("ALSENTRY_LOG_FORMAT")
        .env_remove("RUST_LOG");
    c
}

fn run(c: &mut Command) -> Output {
    // Every case fails at the configuration, before anything long starts.
    let out = c.output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The same broken file through every subcommand that takes a configuration.
fn every_subcommand(config: &[&str]) -> Vec<(&'static str, Command)> {
    // The config is read before the scenario or the input, which need not exist.
    let cases: [(&str, &[&str]); 8] = [
        ("check", &["check"]),
        // Reads the config for `[http] users` before asking for a password.
        ("user", &["user", "add", "li.wei", "--role", "operator"]),
        ("run", &["run"]),
        ("probe", &["probe", "--all"]),
        (
            "evaluate",
            &["evaluate", "--scenario", "config/scenarios/normal.toml"],
        ),
        ("replay", &["replay", "--input", "no-such-samples.csv"]),
        (
            "tune",
            &[
                "tune",
                "--input",
                "no-such-samples.csv",
                "--out",
                "no-such-dir",
            ],
        ),
        // An external broker URL keeps the embedded one out of it.
        (
            "demo",
            &["demo", "--broker", "mqtt://127.0.0.1:9", "--run-for", "5s"],
        ),
    ];
    cases
        .into_iter()
        .map(|(name, args)| {
            let all: Vec<&str> = args.iter().chain(config).copied().collect();
            (name, alsentry(&all))
        })
        .collect()
}

#[test]
fn invalid_configuration_exits_78_from_every_subcommand() {
    for flag in [["-c", BROKEN], ["--config", BROKEN]] {
        for (name, mut cmd) in every_subcommand(&flag) {
            let out = run(&mut cmd);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(78), "{name} {flag:?}: {err}");
            assert!(
                err.contains("alsentry.toml:1:1: agent.id: missing required key"),
                "{name}: the problem names file, line and key: {err}"
            );
        }
    }
}

#[test]
fn alsentry_config_names_the_file_where_no_flag_does() {
    for (name, mut cmd) in every_subcommand(&[]) {
        if name == "demo" {
            // The demo runs its own shipped configuration unless -c says otherwise.
            continue;
        }
        let out = run(cmd.env("ALSENTRY_CONFIG", BROKEN));
        assert_eq!(out.status.code(), Some(78), "{name}: {}", stderr(&out));
    }
    // The flag wins over the variable.
    let example = "config/alsentry.example.toml";
    let out = run(alsentry(&["check", "-c", example]).env("ALSENTRY_CONFIG", BROKEN));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn json_log_mode_reports_problems_as_json_lines() {
    for how in ["env", "flag"] {
        let mut cmd = alsentry(&["run", "-c", BROKEN]);
        match how {
            "env" => cmd.env("ALSENTRY_LOG_FORMAT", "json"),
            _ => cmd.args(["--log-format", "json"]),
        };
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(78));
        let lines: Vec<serde_json::Value> = stderr(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{how}: {e}: {l}")))
            .collect();
        assert_eq!(
            lines.len(),
            2,
            "{how}: one problem and the count: {lines:?}"
        );
        let p = &lines[0];
        assert_eq!(p["level"], "ERROR");
        assert_eq!(p["fields"]["key"], "agent.id");
        assert_eq!(p["fields"]["line"], 1);
        assert_eq!(p["fields"]["col"], 1);
        assert!(Path::new(p["fields"]["file"].as_str().unwrap()).ends_with(BROKEN));
        assert!(p["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("missing required key"));
        assert_eq!(lines[1]["fields"]["problems"], 1);
    }
}

#[test]
fn help_shows_the_environment_variables() {
    let top = stderr_or_stdout(&run(&mut alsentry(&["--help"])));
    for v in [
        "[env: ALSENTRY_LOG_FORMAT=]",
        "[env: RUST_LOG=]",
        "78",
        "69",
    ] {
        assert!(top.contains(v), "alsentry --help lacks {v}:\n{top}");
    }
    for sub in ["run", "check", "probe", "replay", "evaluate", "tune"] {
        let help = stderr_or_stdout(&run(&mut alsentry(&[sub, "--help"])));
        assert!(
            help.contains("-c, --config <FILE>") && help.contains("[env: ALSENTRY_CONFIG="),
            "alsentry {sub} --help:\n{help}"
        );
    }
    let demo = stderr_or_stdout(&run(&mut alsentry(&["demo", "--help"])));
    assert!(demo.contains("-c, --config <FILE>"), "{demo}");
}

fn stderr_or_stdout(out: &Output) -> String {
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
