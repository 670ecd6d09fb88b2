//! The configuration as users meet it. Every folder under tests/cases/ holds a broken
//! `alsentry.toml` and the exact output of `alsentry check` for it (`expected.err`, ending
//! with the exit code). Adding a regression case is adding a folder; regenerate an expectation
//! with
//! `cd tests/cases/NAME && alsentry check --config alsentry.toml 2> expected.err; echo rc=$? >> expected.err`
//! (78 is `EX_CONFIG`, the exit code of every subcommand for an invalid configuration).
//! The shipped example is accepted, means what the contract says, is embedded in the README
//! verbatim, and its commented-out defaults are the code's.

use std::path::Path;
use std::process::Command;

/// The example's commented-out defaults are the code's.
mod defaults;

#[test]
fn every_broken_config_is_refused_with_its_line_and_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 30, "the corpus has {} cases", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let out = Command::new(env!("CARGO_BIN_EXE_alsentry"))
            .args(["check", "--config", "alsentry.toml"])
            .current_dir(dir)
            .output()
            .unwrap();
        let actual = format!(
            "{}rc={}\n",
            String::from_utf8_lossy(&out.stderr),
            out.status.code().unwrap_or(-1)
        );
        let expected = std::fs::read_to_string(dir.join("expected.err")).unwrap();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                dir.display()
            ));
        }
        assert_ne!(out.status.code(), Some(0), "{} was accepted", dir.display());
        // Every problem line names the file, a line, a column and a key.
        for line in String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.contains("problem(s)"))
        {
            let parts: Vec<&str> = line.splitn(5, ':').collect();
            assert!(
                parts.len() == 5
                    && parts[1].parse::<u32>().is_ok()
                    && parts[2].parse::<u32>().is_ok(),
                "{}: not FILE:LINE:COL: key: message: {line}",
                dir.display()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_example_config_is_accepted() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alsentry.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["check", "--explain", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 devices on 2 links"), "{stdout}");
    assert!(
        stdout.contains("FC04 input 0..4 (5 registers): voltage, current, bath_temp"),
        "{stdout}"
    );
}

#[test]
fn the_example_means_what_the_contract_says() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alsentry.example.toml");
    let cfg = alsentry::config::Config::load(&example).unwrap();
    assert_eq!(cfg.agent.id, "gw-qz-01");
    let names: Vec<&str> = cfg.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["pot-001", "pot-002", "pot-003", "kiln-1"]);
    let pot = &cfg.devices[1];
    assert_eq!((pot.unit, pot.poll_ms, pot.timeout_ms), (2, 1_000, 500));
    let v = &pot.tags[0];
    assert_eq!(
        (v.name.as_str(), v.address, v.encoding.order),
        ("voltage", 0, alsentry::core::decode::WordOrder::Cdab)
    );
    assert_eq!(pot.tags[2].encoding.scale, 0.1);
    assert_eq!(
        pot.tags[3].encoding.dtype,
        alsentry::core::decode::DataType::U32
    );
    assert_eq!(cfg.devices[3].poll_ms, 2_000);
    let r = &cfg.rules[0];
    assert_eq!(
        r.kind,
        alsentry::config::RuleKind::High {
            limit: 8.0,
            deadband: 0.5
        }
    );
    assert_eq!(
        (r.on_delay_ms, r.priority),
        (2_000, alsentry::core::model::Priority::Critical)
    );
    assert_eq!(cfg.rule_devices(r).count(), 3);
}

#[test]
fn the_readme_embeds_the_example_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/alsentry.example.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```toml\n{example}```")),
        "README.md must embed config/alsentry.example.toml verbatim in a ```toml block"
    );
}
