//! The layers of the crate, checked on the source tree (a test; nothing here is compiled into
//! the agent).
//!
//! ```text
//! core  <-  config  <-  { io, outbox (store), clock, metrics, telemetry (observe), broker }  <-  app  <-  main, cli
//! tools (demo, evaluate, explain, probe, replay, tune) may use anything; nothing uses a tool.
//! sim (the plant simulator) uses core only (and clock.rs, the one place that reads clocks).
//! ```
//!
//! `core` is the pure part: besides using nothing else of the crate, it names no tokio, no
//! `std::fs`, no `std::net` and no clock (`Instant`, `SystemTime`); time is passed in.
//!
//! The scan is lexical: comments and string literals are skipped, then every `crate::` and
//! `super::` path is resolved to the top-level module it names. `ALLOWED_FOR_NOW` lists the
//! edges that still break the rule, each with the branch expected to remove it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules and the top-level modules each may use. A module may always use itself.
const LAYERS: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("config", &["core"]),
    // The edges: they own sockets, files and timers (io), the on-disk outbox (store), and what
    // the agent says about itself (observe). They may use each other.
    ("io", EDGES),
    ("outbox", EDGES),
    ("clock", EDGES),
    ("metrics", EDGES),
    ("telemetry", EDGES),
    ("broker", EDGES),
    ("app", APP),
    // The simulator uses the agent's pure helpers; it serves in real time, so it may also read
    // the clock where every clock read lives (clock.rs; clippy.toml keeps them there).
    ("sim", &["core", "clock"]),
];

const EDGES: &[&str] = &[
    "core",
    "config",
    "io",
    "outbox",
    "clock",
    "metrics",
    "telemetry",
    "broker",
];

const APP: &[&str] = &[
    "core",
    "config",
    "io",
    "outbox",
    "clock",
    "metrics",
    "telemetry",
    "broker",
];

/// The tools built into the binary: they may use anything, and nothing may use them.
const TOOLS: &[&str] = &["demo", "evaluate", "explain", "probe", "replay", "tune"];

/// The entry: the command line names every tool's arguments.
const ENTRY: &[&str] = &["cli"];

/// Edges that still break the rule: (file, module it uses, why it is still there). Delete an
/// entry when the branch that removes the edge is merged; the test fails on an entry that no
/// longer matches anything, so the list cannot go stale.
const ALLOWED_FOR_NOW: &[(&str, &str, &str)] = &[];

/// Words `core` must not name: I/O and clocks belong to the edges. `std::X` also matches
/// `std::{X, ..}`.
const IMPURE: &[(&str, &str)] = &[
    ("tokio", "tokio (tasks, sockets, timers)"),
    ("std::fs", "files"),
    ("std::net", "sockets"),
    ("std::env", "the environment"),
    ("std::process", "processes"),
    ("std::thread", "threads and sleeping"),
    ("Instant", "a clock (std::time::Instant)"),
    ("SystemTime", "a clock (std::time::SystemTime)"),
    ("println", "stdout"),
    ("print", "stdout"),
    ("eprintln", "stderr"),
    ("eprint", "stderr"),
];

// ---------------------------------------------------------------------------------------------
// A small lexer: enough of Rust to find paths outside comments and literals.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Open,
    Close,
    Comma,
    Other,
}

/// Tokens of `src` with their line numbers; comments, strings and char literals dropped.
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let skip_to = |i: &mut usize, line: &mut usize, end: usize| {
        *line += c[*i..end.min(c.len())]
            .iter()
            .filter(|&&x| x == '\n')
            .count();
        *i = end;
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < c.len() {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            skip_to(&mut i, &mut line, j);
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && next == Some('"')) {
            let mut j = if ch == '"' { i + 1 } else { i + 2 };
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            skip_to(&mut i, &mut line, j + 1);
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"..." / r#"..."# / br#"..."#: ends at a quote followed by as many hashes.
            let mut j = i + hashes.1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes.0).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes.0;
                    break;
                }
                j += 1;
            }
            skip_to(&mut i, &mut line, j);
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                skip_to(&mut i, &mut line, j + 1);
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && next == Some(':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((
                match ch {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    _ => Tok::Other,
                },
                line,
            ));
            i += 1;
        }
    }
    out
}

/// At a raw string's start: (number of hashes, length of the prefix up to the quote).
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    // Not the tail of an identifier such as `bar"`.
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') || c.get(j) == Some(&'c') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&x| x == '#').count();
    (c.get(j + hashes) == Some(&'"')).then_some((hashes, j + hashes + 1 - i))
}

/// A use of another part of the crate, or of something impure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    line: usize,
    /// The top-level module named (`config`), or the impure word (`tokio`).
    target: String,
}

/// Top-level crate modules named by `crate::` and `super::` paths in the file at `module`
/// (its module path, e.g. `["core", "engine"]`), with the lines they are on. Inline modules
/// (`mod tests { .. }`) are followed so that `super::` resolves as the compiler does.
fn crate_uses(module: &[String], src: &str) -> Vec<Use> {
    let toks = lex(src);
    let mut out = Vec::new();
    // Module path at each brace depth: inline `mod x {` pushes x.
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let mut k = 0;
    while k < toks.len() {
        let (tok, line) = &toks[k];
        match tok {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(d, _)| *d > depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), Some((Tok::Open, _))) = (ident(k + 1), toks.get(k + 2)) {
                    inline.push((depth + 1, name.to_string()));
                }
            }
            Tok::Ident(w)
                if (w == "crate" || w == "super")
                    && toks.get(k + 1).map(|t| &t.0) == Some(&Tok::Path) =>
            {
                // Not the tail of a longer path (`foo::super` does not occur; `pub(crate)` has
                // no `::`).
                let here: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(_, m)| m.clone()))
                    .collect();
                let mut j = k;
                let mut base: Option<Vec<String>> = Some(Vec::new());
                if w == "super" {
                    let mut path = here.clone();
                    while ident(j) == Some("super")
                        && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::Path)
                    {
                        if path.pop().is_none() {
                            base = None;
                        }
                        j += 2;
                    }
                    base = base.map(|_| path);
                } else {
                    j += 2;
                }
                // Past the whole `super::super::` chain: its later links are not new paths.
                let Some(base) = base else {
                    k = j;
                    continue;
                };
                let firsts = heads(&toks, j);
                for first in firsts {
                    let top = match base.first() {
                        Some(t) => t.clone(),
                        None => first,
                    };
                    if top != "self" && top != "*" {
                        out.push(Use {
                            line: *line,
                            target: top,
                        });
                    }
                }
                k = j;
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    out
}

/// The first names of the path items at `j`: `a::..` gives `a`, `{a, b::c}` gives `a`, `b`.
fn heads(toks: &[(Tok, usize)], j: usize) -> Vec<String> {
    let mut out = Vec::new();
    match toks.get(j) {
        Some((Tok::Ident(n), _)) => out.push(n.clone()),
        Some((Tok::Open, _)) => {
            let mut level = 0;
            let mut expect = true;
            for (t, _) in &toks[j..] {
                match t {
                    Tok::Open => {
                        level += 1;
                        expect = level == 1;
                    }
                    Tok::Close => {
                        level -= 1;
                        if level == 0 {
                            break;
                        }
                    }
                    Tok::Comma if level == 1 => expect = true,
                    Tok::Ident(n) if expect && level == 1 => {
                        out.push(n.clone());
                        expect = false;
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

/// Impure words named in `src`, with their lines.
fn impure_uses(src: &str) -> Vec<Use> {
    let toks = lex(src);
    let mut out = Vec::new();
    for (k, (tok, line)) in toks.iter().enumerate() {
        let Tok::Ident(w) = tok else { continue };
        let path_next = toks.get(k + 1).map(|t| &t.0) == Some(&Tok::Path);
        for (word, _) in IMPURE {
            let hit = match word.split_once("::") {
                Some((a, b)) => w == a && path_next && heads(&toks, k + 2).iter().any(|h| h == b),
                None => w == word,
            };
            if hit {
                out.push(Use {
                    line: *line,
                    target: word.to_string(),
                });
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file under `src/`: `src/core/engine.rs` → `[core, engine]`,
/// `src/core/mod.rs` → `[core]`, `src/lib.rs` → `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The files of the crate as (path relative to the crate, module path, text).
fn sources() -> Vec<(String, Vec<String>, String)> {
    let src = src_dir();
    rust_files(&src)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).ok()?.to_path_buf();
            let text = std::fs::read_to_string(&p).ok()?;
            Some((format!("src/{}", rel.display()), module_of(&rel), text))
        })
        .collect()
}

/// Every use that breaks the layering, as "file:line: uses X (reason)"; `allowed` entries that
/// matched are recorded in `used_allowances`.
fn layering_violations(
    files: &[(String, Vec<String>, String)],
    used_allowances: &mut BTreeSet<(String, String)>,
) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut out = Vec::new();
    for (file, module, text) in files {
        let Some(top) = module.first() else { continue };
        // The binary's entry, the command line and the tools may use anything; this file is a
        // test.
        if top == "main"
            || top == "layers"
            || ENTRY.contains(&top.as_str())
            || TOOLS.contains(&top.as_str())
        {
            continue;
        }
        let may: &[&str] = match allowed.get(top.as_str()) {
            Some(m) => m,
            None => {
                out.push(format!(
                    "{file}: module `{top}` has no place in the layers (src/layers.rs LAYERS)"
                ));
                continue;
            }
        };
        for u in crate_uses(module, text) {
            if u.target == *top || may.contains(&u.target.as_str()) {
                continue;
            }
            let known = LAYERS.iter().any(|(m, _)| *m == u.target)
                || TOOLS.contains(&u.target.as_str())
                || ENTRY.contains(&u.target.as_str())
                || u.target == "app";
            if !known {
                // Items of the crate root (none today) or macros: not a module edge.
                continue;
            }
            if ALLOWED_FOR_NOW
                .iter()
                .any(|(f, t, _)| f == file && *t == u.target)
            {
                used_allowances.insert((file.clone(), u.target.clone()));
                continue;
            }
            let why = if TOOLS.contains(&u.target.as_str()) {
                "nothing may use a tool".to_string()
            } else if may.is_empty() {
                format!("`{top}` uses nothing else of the crate")
            } else {
                format!("`{top}` may use only: {}", may.join(", "))
            };
            out.push(format!(
                "{file}:{}: `{top}` uses `{}` ({why})",
                u.line, u.target
            ));
        }
    }
    out
}

fn impurities(files: &[(String, Vec<String>, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (file, module, text) in files {
        if module.first().map(String::as_str) != Some("core") {
            continue;
        }
        for u in impure_uses(text) {
            let what = IMPURE
                .iter()
                .find(|(w, _)| *w == u.target)
                .map_or("", |(_, d)| *d);
            out.push(format!(
                "{file}:{}: core names `{}`: {what}; core is pure, pass values (and `now`) in",
                u.line, u.target
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str) -> Vec<String> {
        path.split("::").map(str::to_string).collect()
    }

    fn targets(module: &str, src: &str) -> Vec<String> {
        crate_uses(&m(module), src)
            .into_iter()
            .map(|u| u.target)
            .collect()
    }

    #[test]
    fn core_uses_nothing_outside_core_and_does_no_io() {
        let files = sources();
        assert!(
            files
                .iter()
                .filter(|(_, m, _)| m.first().is_some_and(|t| t == "core"))
                .count()
                > 10,
            "the scan found core's files"
        );
        let mut problems = impurities(&files);
        for (file, module, text) in &files {
            if module.first().map(String::as_str) != Some("core") {
                continue;
            }
            for u in crate_uses(module, text) {
                if u.target != "core" {
                    problems.push(format!(
                        "{file}:{}: core uses `crate::{}`",
                        u.line, u.target
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn modules_use_only_the_layers_below_them() {
        let files = sources();
        let mut used = BTreeSet::new();
        let problems = layering_violations(&files, &mut used);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let stale: Vec<String> = ALLOWED_FOR_NOW
            .iter()
            .filter(|(f, t, _)| !used.contains(&(f.to_string(), t.to_string())))
            .map(|(f, t, why)| format!("{f} no longer uses `{t}` ({why}): delete the entry"))
            .collect();
        assert!(stale.is_empty(), "{}", stale.join("\n"));
    }

    #[test]
    fn a_config_import_or_a_clock_read_in_core_is_caught() {
        let files = vec![
            (
                "src/core/x.rs".to_string(),
                m("core::x"),
                "use crate::config::Config;\nfn f() { let t = std::time::Instant::now(); }\n"
                    .to_string(),
            ),
            (
                "src/core/y.rs".to_string(),
                m("core::y"),
                "use std::time::{Duration, SystemTime};\nasync fn g() { tokio::task::yield_now().await }\nuse std::{fmt, fs};\n".to_string(),
            ),
        ];
        let impure = impurities(&files);
        for word in ["Instant", "SystemTime", "tokio", "std::fs"] {
            assert!(
                impure.iter().any(|p| p.contains(&format!("`{word}`"))),
                "{word}: {impure:?}"
            );
        }
        let mut used = BTreeSet::new();
        let layered = layering_violations(&files, &mut used);
        assert!(
            layered
                .iter()
                .any(|p| p.starts_with("src/core/x.rs:1: `core` uses `config`")),
            "{layered:?}"
        );
    }

    #[test]
    fn paths_are_resolved_as_the_compiler_does() {
        assert_eq!(
            targets("core::engine", "use super::alarm::Alarm;"),
            ["core"]
        );
        assert_eq!(targets("core", "use super::config::X;"), ["config"]);
        assert_eq!(
            targets(
                "io::poller",
                "use crate::{clock::Clock, config::{Device, Tag}};"
            ),
            ["clock", "config"]
        );
        assert_eq!(
            targets("core::engine", "mod tests { use super::super::model::Ts; }"),
            ["core"],
            "inside an inline module super is the file's module"
        );
        assert_eq!(
            targets("core::engine", "fn f() { let _ = crate::config::X; }"),
            ["config"]
        );
        // Comments, strings and lifetimes are not code.
        assert!(targets(
            "core::engine",
            "// crate::config\n/* crate::io */ fn f<'a>(x: &'a str) -> &'a str { \"crate::app\"; r#\"crate::io\"#; x }"
        )
        .is_empty());
        assert!(impure_uses("let s = \"tokio\"; // Instant\nlet c = 'x';").is_empty());
        assert_eq!(
            impure_uses("use std::time::{Duration, Instant};")[0].target,
            "Instant"
        );
    }

    #[test]
    fn every_top_level_module_has_a_layer() {
        let dir = src_dir();
        let mut tops: BTreeSet<String> = BTreeSet::new();
        for p in rust_files(&dir) {
            if let Some(top) = p
                .strip_prefix(&dir)
                .ok()
                .and_then(|r| module_of(r).first().cloned())
            {
                tops.insert(top);
            }
        }
        let placed: BTreeSet<String> = LAYERS
            .iter()
            .map(|(m, _)| m.to_string())
            .chain(TOOLS.iter().chain(ENTRY).map(|s| s.to_string()))
            .chain(["main".to_string(), "layers".to_string()])
            .collect();
        let unplaced: Vec<&String> = tops.difference(&placed).collect();
        assert!(unplaced.is_empty(), "modules without a layer: {unplaced:?}");
    }
}
