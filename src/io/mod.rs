//! The I/O shell: tasks that own sockets, files and timers.

pub mod backoff;
pub mod health;
pub mod http;
pub mod modbus;
pub mod poller;
pub mod publisher;
pub mod record;
pub mod schedule;
pub mod seq;
pub mod session;
