//! `alsentry tune`'s HTML report as a browser shows it: Debian's `chromium`, headless, parses
//! the page (one inline SVG figure per anode effect in the DOM it renders) and takes a
//! screenshot. `UPDATE_SCREENSHOTS=1` writes the screenshot to docs/tune-report.png (the one
//! docs/TUNE.md shows); otherwise it goes to a temporary directory.

use std::path::Path;
use std::process::Command;

use alsentry::config::Config;

use crate::support::simrec::{config, record, scenario};
use crate::support::tools::require;

fn chromium(args: &[&str], page: &Path) -> std::process::Output {
    Command::new(require("chromium"))
        // Root (CI) needs --no-sandbox; no GPU on a build machine.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs chromium; .ci/run runs it"]
fn chromium_renders_one_figure_per_anode_effect_and_takes_a_screenshot() {
    require("chromium");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = config(dir.path());
    let cfg = Config::load(&cfg_path).unwrap();
    let rec = dir.path().join("record");
    // Onsets 10 min after the faults start (the precursor): at 20 and 30 min.
    record(&cfg, scenario(7, &[(2, 10), (5, 20)]), 7, 36, &rec);
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["tune", "--jobs", "2", "--config"])
        .arg(&cfg_path)
        .arg("--input")
        .arg(&rec)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let page = out.join("report.html");

    // The DOM after parsing: each anode-effect figure holds one SVG element with its drawing.
    let dom = chromium(&["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let figures: Vec<&str> = dom
        .split("data-testid=\"ae-figure\"")
        .skip(1)
        .map(|f| &f[..f.find("</figure>").unwrap()])
        .collect();
    assert_eq!(figures.len(), 2, "{}", &dom[..dom.len().min(2000)]);
    for f in &figures {
        assert_eq!(f.matches("<svg").count(), 1);
        assert!(f.contains("</svg>"));
    }
    assert!(dom.contains("data-testid=\"tradeoff-figure\""));

    let shot = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tune-report.png")
    } else {
        dir.path().join("tune-report.png")
    };
    let _ = std::fs::remove_file(&shot);
    let taken = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,1500",
        ],
        &page,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&taken.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        png.len() > 20_000,
        "a page of figures, not a blank one: {} bytes",
        png.len()
    );
}
