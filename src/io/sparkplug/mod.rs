//! Sparkplug B 3.0 edge node on the sink's outbox (`[[mqtt]] format = "sparkplug"`,
//! docs/SPARKPLUG.md): the payload codec (`proto`), what the node declares (`model`), the
//! pure session (`session`) and the bdSeq kept across restarts (`BdSeqFile`). The sink task
//! (`io/publisher.rs`) does the I/O.

pub mod model;
pub mod proto;
pub mod session;

use std::path::{Path, PathBuf};

pub use model::{DeviceModel, Model, NodeMetric};
pub use session::{Encoded, Inbound, Out, Session, Val};

/// The bdSeq of the next MQTT connection, in the sink's outbox directory: the NDEATH Will of a
/// connection and its NBIRTH carry the same value, and it goes up by one per connection, across
/// restarts too (a host compares it with the last NBIRTH's).
#[derive(Debug)]
pub struct BdSeqFile {
    path: PathBuf,
}

impl BdSeqFile {
    pub fn new(dir: &Path) -> BdSeqFile {
        BdSeqFile {
            path: dir.join("sparkplug-bdseq"),
        }
    }

    /// The bdSeq for the connection about to be made; the next one is written first (then a
    /// crash before the connection costs a number, never reuses one). 0-255, wrapping.
    pub fn take(&self) -> std::io::Result<u64> {
        let current = match std::fs::read_to_string(&self.path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0) % 256,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        // Durable, directory included: a bdSeq reused after a power loss would let a host
        // take the next session's NDEATH for this one's.
        crate::io::durable::replace(&self.path, format!("{}\n", (current + 1) % 256).as_bytes())?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdseq_goes_up_per_connection_across_restarts_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BdSeqFile::new(dir.path()).take().unwrap(), 0);
        assert_eq!(BdSeqFile::new(dir.path()).take().unwrap(), 1);
        std::fs::write(dir.path().join("sparkplug-bdseq"), "255\n").unwrap();
        let f = BdSeqFile::new(dir.path());
        assert_eq!(f.take().unwrap(), 255);
        assert_eq!(f.take().unwrap(), 0);
    }
}
