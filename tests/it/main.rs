//! The integration tests: one binary, so the crate and the broker are linked once and the
//! tests run side by side. Everything here is hermetic (loopback only, ports bound at 0, the
//! Modbus devices, the simulator and the MQTT broker in-process) and runs under plain
//! `cargo test`. A test that needs a tool nobody here wrote (Mosquitto, openssl,
//! systemd-analyze, mbpoll, pymodbus) goes in tests/interop/ instead.
//!
//! Where a test belongs: the module of its subject below. A regression test goes there too,
//! named after the behaviour it guards, with a comment naming the bug it caught. A new module
//! is added here with a line saying what belongs in it.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

/// Shared with tests/interop/: the agent-config builder, the embedded broker, the Modbus test
/// device, the MQTT subscriber, network faults, the agent harness.
#[path = "../support/mod.rs"]
mod support;

/// The command line integrators script against: exit 78 for an invalid configuration, `-c` and
/// `ALSENTRY_CONFIG` everywhere, environment variables in `--help`, JSON-line problems.
mod cli;
/// Time a gateway lives by: wall-clock steps and what the engine does with a `now` that jumps.
mod clock;
/// Commands that cannot be replayed: RETAIN set, oversized, duplicates, a burst beyond the
/// queue.
mod commands;
/// The configuration as users meet it: golden broken configs (tests/cases/), the shipped
/// example (accepted, its meaning, embedded in the README, its commented defaults).
mod config;
/// Getting messages out: ordering, outages behind a proxy, a full outbox, several brokers,
/// status, SIGKILL and restart of the binary, commands and replies, secrets in logs, payload
/// schemas, an outbox that cannot be created or written.
mod delivery;
/// The README's first command, `alsentry demo`.
mod demo;
/// The deploy/ files: compose layout, the systemd unit's hardening.
mod deploy;
/// Actions on rules (issue 17): confirm, dry_run, interlocks, kill switches, read-back and
/// the words written, against an in-process device that accepts writes.
mod disposal;
/// The shipped presets against the simulator's scenarios on simulated time (EARLY-WARNING.md).
mod early_warning;
/// The engine task end to end: what leaves it per sink, and a live run's recording replayed.
mod engine_task;
/// The independent trace generator (tests/gen/potline.py) replayed through the shipped presets.
mod gen;
/// The operations endpoint (/metrics, /healthz, /readyz, /alarms) over a raw socket.
mod http;
/// Running the agent: reload (SIGHUP and command), SIGTERM, /metrics of the binary.
mod operations;
/// End to end: Modbus values decoded, the alarm contract, acknowledgement, retained state.
mod pipeline;
/// Polling under faults: vanished, silent, flapping, slow devices, holes in a block,
/// exceptions, hostile and crafted frames; healthy devices keep their rate.
mod polling;
/// `alsentry probe` (commissioning): the simulator and a served register map read once,
/// table and JSON, devices that do not answer.
mod probe;
/// What holds for any input: config reader, decoder, command parser, outbox segments.
mod properties;
/// `alsentry replay` and `[record]`: file time, recorded files replay to the live alarms.
mod replay;
/// The daily energy and emissions report: replayed figures by hand, a restart mid-day.
mod report;
/// Alarm state across restarts (clean and crash-like), the broker's retained picture, the
/// seq lease deleted or garbled.
mod restart;
/// The agent watching itself (issue 15): poison messages, bounded reloads, supervised
/// pollers, /healthz and /readyz decisions.
mod selfwatch;
/// The simulator as Modbus clients see it: register maps, faults, ground truth, RTU, the
/// shipped scenarios and templates.
mod sim;
/// 420 devices for a minute: everything answers, the engine keeps up, memory stays flat.
mod soak;
/// `format = "sparkplug"`: births, DDATA against the Modbus values, rebirth, commands on
/// DCMD, comm loss, the primary host's STATE and the historical backlog.
mod sparkplug;
/// The operator station at `/`: login, CSRF, roles, rate limiting, the live event stream, actions
/// through the engine to MQTT, the history, `alsentry user`.
mod station;
/// The agent's status payload (typed, device counts from the pollers) and the seq lease.
mod status;
/// `alsentry tune` on simulator recordings: truth from the cells' register, proposals that hold
/// on held-out data, the HTML report.
mod tune;

/// Guards the harness of the agent tests: a panic in a task on a watched runtime fails the
/// test that owns the runtime, even when nobody joins the task.
#[test]
#[should_panic(expected = "1 task(s) of this test panicked")]
fn a_task_panic_fails_its_watched_test() {
    support::harness::run_watched(async {
        let task = tokio::spawn(async { panic!("a task panics on purpose") });
        // Not joined: only waited for.
        while !task.is_finished() {
            tokio::task::yield_now().await;
        }
    });
}
