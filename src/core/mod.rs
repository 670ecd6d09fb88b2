//! Pure core: no sockets, no files, no clock reads. Time is always passed in.
//! `layers.rs` (a test) keeps it so: core uses nothing else of the crate.
pub mod alarm;
pub mod command;
pub mod decode;
pub mod driver;
pub mod duration;
pub mod engine;
pub mod eval;
pub mod expand;
pub mod expr;
pub mod flood;
pub mod message;
pub mod model;
pub mod outbound;
pub mod payload;
pub mod plan;
pub mod rule;
pub mod spec;
pub mod stats;
pub mod time;
pub mod window;
