//! Interop: the tests that need software nobody here wrote and that a bare machine lacks
//! (Mosquitto, openssl, systemd-analyze, mbpoll, pymodbus, chromium). Every test here is
//! `#[ignore = "needs TOOL; .ci/run runs it"]`, so plain `cargo test` lists it as ignored
//! rather than passing it unrun. `.ci/run` installs the tools and runs
//! `cargo test --test interop -- --ignored`; once a test runs, a missing tool fails it.
//! The scripts and the Python server the tests drive live next to this file.
//!
//! Where a test belongs: the module of its subject below; a hermetic test goes in tests/it/.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

/// Shared with tests/it/: the agent-config builder, the Mosquitto launcher, the Modbus test
/// device, the MQTT subscriber, network faults, the tool gate.
#[path = "../support/mod.rs"]
mod support;

/// The shipped Mosquitto configs (deploy/compose/mosquitto/): the bridge and the plant ACL.
mod bridge;
/// Delivery through Mosquitto: a one-minute outage, the broker SIGKILLed, QoS as published,
/// mutual TLS (openssl), MQTT 5 properties.
mod delivery;
/// Disposal (issue 17) against a pymodbus server: confirm, dry_run, kill switch, read-back
/// mismatch, and the words of f32 CDAB, scaled i16 and u32 writes as pymodbus stores them.
mod disposal;
/// Modbus peers: the binary with the example config against pymodbus and Mosquitto, mbpoll
/// decoding, mbpoll and pymodbus reading the simulator.
mod modbus;
/// Alarm state and commands through Mosquitto: a 5 MiB retained command, MQTT 5
/// Retain-As-Published, the real binary SIGKILLed and restarted with its alarm states.
mod restart;
/// `format = "sparkplug"` decoded by pysparkplug: births, DDATA, Rebirth, a primary host
/// outage, the NDEATH Will after SIGKILL; the hand-written codec against the upstream .proto.
mod sparkplug;
/// The operator station in headless Chromium (WebDriver) against Mosquitto; the screenshots
/// in docs/screenshots/.
mod station;
/// The shipped systemd unit as systemd-analyze sees it.
mod systemd;
/// `alsentry tune`'s HTML report in headless Chromium, and the screenshot in docs/.
mod tune;
