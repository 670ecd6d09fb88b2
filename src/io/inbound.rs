//! Operator commands on their way to the engine task: the payload and where it came from, so
//! that the one reply goes back the same way. A sink admits what arrives on its command topic
//! here before handing it over.

use tokio::sync::oneshot;

use crate::core::command::{Reply, MAX_BYTES};

/// Where a command came from, and so where its reply goes.
#[derive(Debug)]
pub enum CommandOrigin {
    /// The command topic of sink `sink`. `retained`: delivered with RETAIN set, i.e. from the
    /// broker's retained store (or, with MQTT 5 Retain-As-Published, published retained);
    /// such a command is refused, never executed.
    Mqtt { sink: usize, retained: bool },
    /// Inside the agent (an operator page): the reply goes back on `reply`.
    Local { reply: oneshot::Sender<Reply> },
}

/// A command payload for the engine task.
#[derive(Debug)]
pub struct InboundCommand {
    pub origin: CommandOrigin,
    pub payload: Vec<u8>,
}

/// What a sink does with a publish on its command topic.
#[derive(Debug)]
pub enum Admitted {
    /// Hand it to the engine task (which answers it).
    Command(InboundCommand),
    /// Retained and larger than any command: dropped and counted, no reply. The broker
    /// delivers it again at every reconnect, so a reply would be repeated forever.
    DroppedRetainedOversized,
}

/// Admits a publish that arrived on sink `sink`'s command topic. An oversized command that
/// was not retained still gets its reply ("command larger than ..."): only its first bytes
/// travel to the engine, enough to tell.
pub fn admit(sink: usize, retained: bool, mut payload: Vec<u8>) -> Admitted {
    if payload.len() > MAX_BYTES {
        if retained {
            return Admitted::DroppedRetainedOversized;
        }
        payload.truncate(MAX_BYTES + 1);
        payload.shrink_to_fit();
    }
    Admitted::Command(InboundCommand {
        origin: CommandOrigin::Mqtt { sink, retained },
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_retained_commands_are_dropped_others_go_on() {
        let big = vec![b'x'; 5 << 20];
        assert!(matches!(
            admit(0, true, big.clone()),
            Admitted::DroppedRetainedOversized
        ));
        let Admitted::Command(c) = admit(1, false, big) else {
            panic!("an oversized live command is answered")
        };
        assert_eq!(c.payload.len(), MAX_BYTES + 1);
        assert!(matches!(
            c.origin,
            CommandOrigin::Mqtt {
                sink: 1,
                retained: false
            }
        ));
        let Admitted::Command(c) = admit(0, true, b"{}".to_vec()) else {
            panic!("a small retained command goes on, to be refused with a reply")
        };
        assert!(matches!(
            c.origin,
            CommandOrigin::Mqtt { retained: true, .. }
        ));
    }
}
