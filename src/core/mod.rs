//! Pure core: no sockets, no files, no clock reads. Time is always passed in.
pub mod alarm;
pub mod command;
pub mod decode;
pub mod driver;
pub mod engine;
pub mod expr;
pub mod flood;
pub mod message;
pub mod model;
pub mod outbound;
pub mod payload;
pub mod plan;
pub mod rules;
pub mod stats;
pub mod window;
