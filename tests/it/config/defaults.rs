//! The example config says "Options shown commented out (`# key = value`) are the defaults":
//! each of them, written out, changes nothing in what `Config::load` gives.

use std::path::Path;

/// Settings the example shows commented out although they have no default: what a value looks
/// like (credentials, TLS files, the recorded tags, a suppression).
const EXAMPLES_WITHOUT_DEFAULT: [&str; 11] = [
    "http.users",
    "http.tls_cert",
    "http.tls_key",
    "mqtt.username",
    "mqtt.password_file",
    "mqtt.password_env",
    "mqtt.ca_file",
    "mqtt.client_cert",
    "mqtt.client_key",
    "record.tags",
    "rules.suppress_when",
];

/// Keys a commented-out table cannot go without: written out with the table whose defaults are
/// checked, never checked themselves.
const REQUIRED_WHEN_ON: [&str; 2] = ["http.listen", "record.dir"];

/// `# [table]` or `[table]` or `[[table]]`: the table's name and whether it is commented out.
fn table_header(line: &str) -> Option<(String, bool)> {
    let (commented, rest) = match line.strip_prefix("# ") {
        Some(r) => (true, r),
        None => (false, line),
    };
    let name = rest
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
    ok.then(|| (name.to_string(), commented))
}

/// `# key = value` (one `#`: `##` lines are prose): the key.
fn commented_key(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let (key, _) = rest.split_once(" = ")?;
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some(key)
}

/// The line written out, keeping its length so that every byte offset after it stays put.
fn uncomment(line: &str) -> String {
    format!("{}  ", &line[2..])
}

/// The lines of `{:#?}` that differ (without, with).
fn debug_diff(a: &alsentry::config::Config, b: &alsentry::config::Config) -> String {
    let (a, b) = (format!("{a:#?}"), format!("{b:#?}"));
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(10)
        .map(|(x, y)| format!("  - {}\n  + {}", x.trim(), y.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_examples_commented_defaults_are_the_codes_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alsentry.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    let load = |lines: &[String]| {
        let path = dir.path().join("alsentry.toml");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        alsentry::config::Config::load(&path).map(|mut c| {
            // The hash of the text differs by construction.
            c.hash.clear();
            // The one derived default: without `client_id` the agent uses "alsentry-{agent.id}"
            // (src/app.rs, one sink), so the example's value must be that.
            let derived = format!("alsentry-{}", c.agent.id);
            if c.sinks.len() == 1 && c.sinks[0].client_id.as_deref() == Some(derived.as_str()) {
                c.sinks[0].client_id = None;
            }
            c
        })
    };
    // Each line's table: (name, the line of its header when that header is commented out).
    let mut table: (String, Option<usize>) = (String::new(), None);
    let mut checked = Vec::new();
    let mut wrong = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if let Some((name, commented)) = table_header(line) {
            table = (name, commented.then_some(n));
            continue;
        }
        let Some(key) = commented_key(line) else {
            continue;
        };
        let qualified = if table.0.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", table.0)
        };
        if EXAMPLES_WITHOUT_DEFAULT.contains(&qualified.as_str())
            || REQUIRED_WHEN_ON.contains(&qualified.as_str())
        {
            continue;
        }
        // Without the default: the example, with a commented-out table written out (header and
        // the keys it cannot go without) when the key belongs to one.
        let mut without: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        if let Some(h) = table.1 {
            without[h] = uncomment(lines[h]);
            for (m, l) in lines.iter().enumerate().skip(h + 1) {
                if table_header(l).is_some() {
                    break;
                }
                if let Some(k) = commented_key(l) {
                    if REQUIRED_WHEN_ON.contains(&format!("{}.{k}", table.0).as_str()) {
                        without[m] = uncomment(l);
                    }
                }
            }
        }
        let mut with = without.clone();
        with[n] = uncomment(line);
        let at = format!("alsentry.example.toml:{}: {qualified}", n + 1);
        match (load(&without), load(&with)) {
            // Config has no PartialEq (its compiled spec holds programs); its Debug form is complete.
            (Ok(a), Ok(b)) if format!("{a:?}") == format!("{b:?}") => checked.push(qualified),
            (Ok(a), Ok(b)) => wrong.push(format!(
                "{at}: `{}` is not the default; what changes:\n{}",
                &line[2..],
                debug_diff(&a, &b)
            )),
            (Err(e), _) => wrong.push(format!("{at}: the example without it is refused: {e}")),
            (_, Err(e)) => wrong.push(format!("{at}: `{}` is refused: {e}", &line[2..])),
        }
    }
    println!("{} commented defaults checked: {checked:?}", checked.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Guards the parsing above against finding nothing (the example has 40-odd).
    assert!(checked.len() >= 30, "only {checked:?}");
    for key in [
        "include",
        "agent.state_dir",
        "mqtt.keep_alive",
        "alarms.comm_loss_delay",
        "summary.interval",
        "data.mode",
        "record.max_size",
        "devices.backoff_max",
        "rules.scope",
    ] {
        assert!(checked.iter().any(|c| c == key), "{key} was not checked");
    }
}
