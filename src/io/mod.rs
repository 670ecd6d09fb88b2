//! The I/O shell: tasks that own sockets, files and timers (`poller`, `publisher`, `http`,
//! `record`), and beside them the pure machines that decide for them without reading a clock
//! (`schedule` for the pollers, `session` for the sinks, `backoff` for both).

pub(crate) mod alarm_state;
pub(crate) mod audit;
pub(crate) mod backoff;
pub mod durable;
pub mod health;
pub mod http;
pub(crate) mod inbound;
pub mod modbus;
pub(crate) mod notify;
pub mod poller;
pub mod publisher;
pub(crate) mod read_plan;
pub mod record;
pub mod report;
pub(crate) mod samples;
pub(crate) mod schedule;
pub mod seq;
pub(crate) mod session;
pub mod sparkplug;
pub mod web;
