//! alsentry: an edge alarm daemon for aluminium plants.
//!
//! Modbus acquisition → typed samples → ring-buffered windows → early-warning rules →
//! ISA-18.2 alarms → MQTT. The `core` modules are pure (no I/O, `now` passed in); `io`
//! holds the tasks that own sockets and files.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod app;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod demo;
pub mod evaluate;
pub mod explain;
pub mod io;
// The layering rule, checked on the source tree.
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod outbox;
pub mod probe;
pub mod replay;
pub mod sim;
pub mod telemetry;
pub mod tune;
