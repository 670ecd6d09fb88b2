//! Shared by both test binaries (tests/it/, tests/interop/) and by `mod support;` in a
//! single-file test: one agent-config builder (`agent`), one embedded-broker starter
//! (`broker`), one Mosquitto launcher (`mosquitto`), one Modbus test device (`modbus`), one MQTT
//! subscriber (`mqtt`), network fault helpers (`net`), the agent harness (`harness`), what
//! delivery tests share (`delivery`), simulator recordings for `tune` (`simrec`) and the gate
//! for external tools (`tools`).

#![allow(dead_code)]

pub mod agent;
pub mod broker;
pub mod delivery;
pub mod harness;
pub mod modbus;
pub mod mosquitto;
pub mod mqtt;
pub mod net;
pub mod simrec;
pub mod sparkplug;
pub mod tools;
pub mod web;
pub mod webdriver;

use std::path::{Path, PathBuf};

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("alsentry.toml");
    std::fs::write(&p, text).unwrap();
    p
}
