//! The retained meta messages of compact data (docs/MQTT.md, "Compact data"), kept by the sink
//! like its status: sent around the outbox, again on every connection (a broker restarted
//! without persistence has lost them, and compact data means nothing without them), and when a
//! reload changes one. The latest per topic is all there is to keep.

use std::collections::{BTreeMap, VecDeque};

use super::Message;
use crate::outbox::Class;

/// A meta message: the only retained raw-data message.
pub fn is_data_meta(m: &Message) -> bool {
    m.class == Class::Data && m.retain
}

#[derive(Debug, Default)]
pub struct DataMetas {
    /// Topic -> latest payload (empty: the device is gone and its meta cleared).
    latest: BTreeMap<String, Vec<u8>>,
    /// Topics to send, oldest first, each once.
    due: VecDeque<String>,
}

impl DataMetas {
    /// Keeps `m`; it is due unless the broker already has these very bytes from us.
    pub fn offer(&mut self, m: &Message) {
        if self.latest.get(&m.topic) == Some(&m.payload) {
            return;
        }
        self.latest.insert(m.topic.clone(), m.payload.clone());
        if !self.due.contains(&m.topic) {
            self.due.push_back(m.topic.clone());
        }
    }

    /// A new connection: every meta is due again, ahead of any backlog.
    pub fn connected(&mut self) {
        self.due = self.latest.keys().cloned().collect();
    }

    /// The next meta to publish (retained, QoS 1): its topic and payload.
    pub fn next(&mut self) -> Option<(String, Vec<u8>)> {
        let topic = self.due.pop_front()?;
        let payload = self.latest.get(&topic)?.clone();
        Some((topic, payload))
    }

    /// Puts back what could not be handed to the client.
    pub fn retry(&mut self, topic: String) {
        self.due.push_front(topic);
    }

    /// Whether `m` must not go out live yet: compact data while any meta is still due. Metas
    /// wait for room in the QoS 1 window, live data does not, so data handed now would reach
    /// the broker before the meta that decodes it (after a connect, or a reload that changes a
    /// layout). Held back, it goes through the outbox, which replays after the metas.
    pub fn holds_back(&self, m: &Message) -> bool {
        !self.due.is_empty() && is_compact_data(m)
    }
}

/// A compact data message (`{device}/data/compact`, never retained).
pub fn is_compact_data(m: &Message) -> bool {
    m.class == Class::Data && !m.retain && m.topic.ends_with("/data/compact")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(topic: &str, payload: &str) -> Message {
        Message {
            class: Class::Data,
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            retain: true,
            priority: None,
        }
    }

    #[test]
    fn only_changes_are_due_until_a_connection_makes_every_meta_due() {
        let mut m = DataMetas::default();
        assert!(is_data_meta(&meta("a/data/meta", "{}")));
        assert!(!is_data_meta(&Message {
            retain: false,
            ..meta("a/data/compact", "{}")
        }));
        m.offer(&meta("a", "1"));
        m.offer(&meta("b", "1"));
        m.offer(&meta("a", "2"));
        assert_eq!(
            m.next(),
            Some(("a".into(), b"2".to_vec())),
            "once, the latest"
        );
        assert_eq!(m.next(), Some(("b".into(), b"1".to_vec())));
        assert_eq!(m.next(), None);
        // A reload that changes nothing sends nothing.
        m.offer(&meta("a", "2"));
        assert_eq!(m.next(), None);
        // A cleared one stays cleared at the next connection.
        m.offer(&meta("b", ""));
        m.connected();
        let mut all = Vec::new();
        while let Some((t, p)) = m.next() {
            all.push((t, p));
        }
        assert_eq!(all, vec![("a".into(), b"2".to_vec()), ("b".into(), vec![])]);
        m.retry("a".into());
        assert_eq!(m.next().map(|x| x.0), Some("a".into()));
    }

    #[test]
    fn compact_data_waits_while_a_meta_is_due_and_full_data_never_does() {
        let compact = Message {
            retain: false,
            ..meta("r/s/a/pot-001/data/compact", "{}")
        };
        let full = Message {
            retain: false,
            ..meta("r/s/a/pot-001/data", "{}")
        };
        let mut m = DataMetas::default();
        assert!(
            !m.holds_back(&compact),
            "no meta known: nothing to wait for"
        );
        m.offer(&meta("r/s/a/pot-001/data/meta", "1"));
        assert!(m.holds_back(&compact), "its meta is not handed yet");
        assert!(!m.holds_back(&full));
        assert!(m.next().is_some());
        assert!(!m.holds_back(&compact), "meta handed: data follows it");
        m.connected();
        assert!(
            m.holds_back(&compact),
            "a new connection sends every meta first"
        );
        while m.next().is_some() {}
        assert!(!m.holds_back(&compact));
    }
}
