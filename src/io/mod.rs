//! The I/O shell: tasks that own sockets, files and timers.

pub mod http;
pub mod modbus;
pub mod notify;
pub mod poller;
pub mod publisher;
pub mod record;
pub mod seq;
