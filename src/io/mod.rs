//! The I/O shell: tasks that own sockets, files and timers.

pub mod http;
pub mod modbus;
pub mod poller;
pub mod publisher;
pub mod read_plan;
pub mod record;
pub mod samples;
pub mod seq;
