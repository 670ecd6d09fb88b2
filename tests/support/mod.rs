#![allow(dead_code)]
pub mod modbus;
pub mod mqtt;
pub mod net;

use std::path::{Path, PathBuf};

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("alsentry.toml");
    std::fs::write(&p, text).unwrap();
    p
}
