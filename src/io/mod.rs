//! The I/O shell: tasks that own sockets, files and timers (`poller`, `publisher`, `http`,
//! `record`), and beside them the pure machines that decide for them without reading a clock
//! (`schedule` for the pollers, `session` for the sinks, `backoff` for both).

pub mod alarm_state;
pub mod backoff;
pub mod health;
pub mod http;
pub mod inbound;
pub mod modbus;
pub mod notify;
pub mod poller;
pub mod publisher;
pub mod read_plan;
pub mod record;
pub mod samples;
pub mod schedule;
pub mod seq;
pub mod session;
pub mod web;
