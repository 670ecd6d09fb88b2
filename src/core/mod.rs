//! Pure core: no sockets, no files, no clock reads. Time is always passed in.
//! `layers.rs` (a test) keeps it so: core uses nothing else of the crate.
pub mod action;
pub mod alarm;
pub mod command;
pub mod compact;
pub mod decode;
pub mod driver;
pub(crate) mod duration;
pub mod engine;
pub(crate) mod eval;
pub mod expand;
pub mod expr;
pub(crate) mod flood;
pub mod mbap;
pub(crate) mod message;
pub mod model;
pub(crate) mod outbound;
pub mod payload;
pub mod plan;
pub mod report;
pub mod rule;
pub mod spec;
pub mod stats;
pub(crate) mod time;
pub mod window;
