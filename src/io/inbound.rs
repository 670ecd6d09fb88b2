//! Operator commands on their way to the engine task: the payload and where it came from, so
//! that the one reply goes back the same way. A sink admits what arrives on its command topic
//! here before handing it over.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::Mono;
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

/// A burst ends when no command came for this long.
const BURST_QUIET: Duration = Duration::from_millis(50);
/// The engine's messages wait at most this long for a burst...
const BURST_MAX_HOLD: Duration = Duration::from_secs(2);
/// ...and are then taken for at least this long, whatever comes in.
const BURST_COOL: Duration = Duration::from_millis(500);

/// While commands stream in, a sink reads them before it stores the engine's messages. Storing
/// an alarm waits for an fsync, and a broker holds only so many messages for a client that
/// does not read (Mosquitto: 20 in flight, 1,000 queued, then it drops them), so a burst of
/// commands read between fsyncs would be lost at the broker, unanswered. Taken off the wire
/// at once they are all answered (`busy` past the queue). Bounded: a stream of commands holds
/// the engine's messages back at most [`BURST_MAX_HOLD`] at a time, then lets them through for
/// [`BURST_COOL`], so commands cannot starve alarm delivery. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct BurstGate {
    hold_until: Option<Mono>,
    held_since: Option<Mono>,
    cool_until: Option<Mono>,
}

impl BurstGate {
    /// A command arrived at `now`.
    pub fn on_command(&mut self, now: Mono) {
        if self.cool_until.is_some_and(|c| now < c) {
            return;
        }
        self.held_since.get_or_insert(now);
        self.hold_until = Some(now + BURST_QUIET);
    }

    /// Whether the engine's messages may be taken at `now`.
    pub fn open(&mut self, now: Mono) -> bool {
        let (Some(until), Some(since)) = (self.hold_until, self.held_since) else {
            return true;
        };
        let too_long = now.since(since) >= BURST_MAX_HOLD;
        if now < until && !too_long {
            return false;
        }
        if too_long {
            self.cool_until = Some(now + BURST_COOL);
        }
        self.hold_until = None;
        self.held_since = None;
        true
    }

    /// When the gate opens by itself, while it is closed.
    pub fn wake(&self) -> Option<Mono> {
        let (until, since) = (self.hold_until?, self.held_since?);
        Some(until.min(since + BURST_MAX_HOLD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_holds_the_engine_messages_back_for_a_bounded_time() {
        let ms = |m: i64| Mono::from_millis(m);
        let mut g = BurstGate::default();
        assert!(g.open(ms(0)) && g.wake().is_none());
        g.on_command(ms(10));
        assert!(!g.open(ms(20)));
        assert_eq!(g.wake(), Some(ms(60)));
        assert!(g.open(ms(60)), "quiet for 50 ms: the burst is over");
        // A stream of commands every 10 ms: held at most 2 s, then open for 500 ms.
        let mut t = 1_000;
        while !g.open(ms(t)) || t == 1_000 {
            g.on_command(ms(t));
            t += 10;
            assert!(t <= 3_100, "held too long");
        }
        assert!(t >= 3_000);
        g.on_command(ms(t + 10));
        assert!(
            g.open(ms(t + 20)),
            "cooling down: the engine's messages go through"
        );
        g.on_command(ms(t + 600));
        assert!(!g.open(ms(t + 610)), "held again after the cool-down");
    }

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
