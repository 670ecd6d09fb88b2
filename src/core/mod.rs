//! Pure core: no sockets, no files, no clock reads. Time is always passed in.
pub mod model;
pub mod decode;
pub mod plan;
