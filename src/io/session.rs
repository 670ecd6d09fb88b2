//! The publisher's session with one broker, as a pure state machine in the manner of
//! rumqttc's `state.rs`, minus its hidden clock reads: every event carries `now` (the
//! monotonic timeline; wall time where a record's age matters) and the answers say what to
//! do. The sink task (`publisher.rs`) owns the MQTT client, the outbox and the timers; it
//! only turns network events into calls here and the answers into I/O.
//!
//! What it decides:
//! * **Connection**: when to (re)connect: at once at start, then after each failure with
//!   exponential backoff and jitter from 500 ms up to `reconnect_max`.
//! * **In flight**: which outbox record each `Outgoing::Publish(pkid)` and `PubAck(pkid)`
//!   belongs to. rumqttc reports the publishes it writes in the order they were handed over
//!   (a packet-id collision reports `AwaitAck` first and the publish later, still in order),
//!   so the oldest waiting record got `pkid`. At most `window` publishes are in flight; live
//!   QoS 0 data has its own budget so a burst of data never takes the window from alarms.
//!   A connection that ends forgets everything in flight: the outbox sends it again.
//! * **Replay**: a backlog stored before this connection goes out at most `replay_rate` per
//!   second (token bucket, burst a tenth of the rate) and is flagged replayed; the first
//!   connection of a run replays only what the outbox itself flags (a restart's backlog).
//! * **Status cadence**: on every connection, every 30 s, at once when devices go up or
//!   down, and within 5 s when messages were dropped.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::backoff::Backoff;
use crate::clock::Mono;
use crate::core::model::Ts;

/// First wait after a failed connection.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Periodic status; a change of devices up/down or of the drop counters sends one at once.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// New drops send a status at most this often.
pub const DROPS_STATUS_GAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Publishes handed to the client and not yet settled, at most (alarms, status, replies).
    pub window: usize,
    /// Live QoS 0 data handed to the client and not yet written, at most.
    pub data_window: usize,
    /// Backlog messages per second after a reconnect.
    pub replay_rate: u32,
    /// Longest wait between connection attempts.
    pub reconnect_max: Duration,
    /// Jitter seed, per sink.
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection; the next attempt is due at `retry_at` (None: at once).
    Idle,
    /// A connection attempt is under way: waiting for CONNACK.
    Connecting,
    Connected,
}

/// What the task should do about a lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// A CONNACK had come (as opposed to a failed attempt).
    pub was_connected: bool,
    /// Failures in a row, this one included.
    pub failures: u32,
    pub retry_in: Duration,
}

/// A publish settled: acknowledge `id` (None: it went around the outbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled<Id> {
    pub id: Option<Id>,
    pub latency: Duration,
}

/// Which budget a publish handed to the client counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Main,
    Data,
}

/// What decides whether a status is sent early.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusKey {
    pub up: usize,
    pub down: usize,
    pub drops: u64,
}

#[derive(Debug)]
pub struct Session<Id> {
    cfg: SessionConfig,
    phase: Phase,
    failures: u32,
    retry_at: Option<Mono>,
    backoff: Backoff,
    ever_connected: bool,
    /// Wall time of this connection's CONNACK: records created before it waited across a
    /// disconnection (`i64::MIN` on the first connection of a run).
    connected_at: Ts,
    /// Still draining records stored before this connection (rate-limited).
    replaying: bool,
    throttle: Throttle,
    /// The throttle stopped the pump: wake up then.
    wake_at: Option<Mono>,
    flight: Flight<Id>,
    last_status: Option<(Mono, StatusKey)>,
}

impl<Id: Copy> Session<Id> {
    pub fn new(cfg: SessionConfig, now: Mono) -> Session<Id> {
        Session {
            phase: Phase::Idle,
            failures: 0,
            retry_at: None,
            backoff: Backoff::new(RECONNECT_MIN, cfg.reconnect_max, cfg.seed),
            ever_connected: false,
            connected_at: i64::MIN,
            replaying: false,
            throttle: Throttle::new(cfg.replay_rate, now),
            wake_at: None,
            flight: Flight::default(),
            last_status: None,
            cfg,
        }
    }

    // -- connection ------------------------------------------------------------------------

    /// True when a connection attempt should start now.
    pub fn should_connect(&self, now: Mono) -> bool {
        self.phase == Phase::Idle && self.retry_at.is_none_or(|t| now >= t)
    }

    /// An attempt started (a fresh client and event loop exist).
    pub fn connecting(&mut self) {
        self.phase = Phase::Connecting;
        self.retry_at = None;
    }

    #[cfg(test)]
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// CONNACK at `now` (wall time `wall`). The task then requeues the outbox's in-flight
    /// records, subscribes, and sends the status ahead of any backlog.
    pub fn connack(&mut self, now: Mono, wall: Ts) {
        self.phase = Phase::Connected;
        self.failures = 0;
        self.flight.clear();
        self.connected_at = if self.ever_connected { wall } else { i64::MIN };
        self.ever_connected = true;
        self.replaying = true;
        self.throttle.reset(now);
        self.wake_at = None;
    }

    /// The connection (or the attempt, or setting it up) failed at `now`. Everything in flight
    /// is forgotten: the task requeues the outbox.
    pub fn lost(&mut self, now: Mono) -> Lost {
        let was_connected = self.phase == Phase::Connected;
        self.phase = Phase::Idle;
        self.flight.clear();
        self.wake_at = None;
        self.failures += 1;
        let retry_in = self.backoff.delay(self.failures);
        self.retry_at = Some(now + retry_in);
        Lost {
            was_connected,
            failures: self.failures,
            retry_in,
        }
    }

    /// The next time something is due without any network event: a connection attempt or
    /// the replay throttle's next token.
    pub fn next_wake(&self) -> Option<Mono> {
        let retry = match self.phase {
            Phase::Idle => self.retry_at,
            _ => None,
        };
        match (retry, self.wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // -- pumping the outbox ----------------------------------------------------------------

    /// How many outbox records may be handed to the client now (0 when not connected, the
    /// window is full, or the replay throttle has no token yet: then [`Session::next_wake`]
    /// says when).
    pub fn room(&mut self, now: Mono) -> usize {
        if self.phase != Phase::Connected {
            return 0;
        }
        if let Some(at) = self.wake_at {
            if now < at {
                return 0;
            }
            self.wake_at = None;
        }
        let room = self.cfg.window.saturating_sub(self.flight.len());
        if room == 0 || !self.replaying {
            return room;
        }
        let tokens = self.throttle.available(now);
        if tokens == 0 {
            self.wake_at = Some(self.throttle.next_at());
            return 0;
        }
        room.min(tokens)
    }

    /// The outbox had nothing more to send: the replay is over.
    pub fn drained(&mut self) {
        self.replaying = false;
    }

    /// Whether a record about to be sent is a replay (flagged `replayed` by the outbox, or
    /// created before this connection). A replay takes a token; the first live record ends
    /// the replay.
    pub fn is_replay(&mut self, created: Ts, flagged: bool) -> bool {
        let replay = flagged || created < self.connected_at;
        if replay {
            self.throttle.take();
        } else {
            self.replaying = false;
        }
        replay
    }

    // -- in flight -------------------------------------------------------------------------

    /// A publish in the main lane was handed to the client; `id` is its outbox record (None:
    /// sent around the outbox, e.g. the status).
    pub fn handed(&mut self, id: Option<Id>) {
        self.flight.awaiting_pkid.push_back((id, Lane::Main));
    }

    /// True while the main lane has room (for a status or a reply sent around the outbox).
    pub fn has_room(&self) -> bool {
        self.flight.len() < self.cfg.window
    }

    /// True while live QoS 0 data may be handed to the client.
    pub fn data_has_room(&self) -> bool {
        self.phase == Phase::Connected && self.flight.data_waiting < self.cfg.data_window
    }

    /// Live data was handed to the client at QoS 0.
    pub fn handed_data(&mut self) {
        self.flight.awaiting_pkid.push_back((None, Lane::Data));
        self.flight.data_waiting += 1;
    }

    /// `Outgoing::Publish(pkid)` at `now`: the oldest waiting publish got `pkid`. QoS 0
    /// (pkid 0) gets no PUBACK and is settled at once.
    pub fn sent(&mut self, pkid: u16, now: Mono) -> Option<Settled<Id>> {
        let (id, lane) = self.flight.awaiting_pkid.pop_front()?;
        if lane == Lane::Data {
            self.flight.data_waiting -= 1;
        }
        if pkid == 0 {
            return Some(Settled {
                id,
                latency: Duration::ZERO,
            });
        }
        self.flight.unacked.insert(pkid, (id, now));
        None
    }

    /// `PubAck(pkid)` at `now` for a publish of this connection.
    pub fn acked(&mut self, pkid: u16, now: Mono) -> Option<Settled<Id>> {
        let (id, sent) = self.flight.unacked.remove(&pkid)?;
        Some(Settled {
            id,
            latency: now.since(sent),
        })
    }

    /// Publishes in the main lane not yet settled.
    pub fn in_flight(&self) -> usize {
        self.flight.len()
    }

    // -- status ----------------------------------------------------------------------------

    /// Whether a status should go out now, given what it would report.
    pub fn status_due(&self, now: Mono, key: StatusKey) -> bool {
        match self.last_status {
            None => true,
            Some((at, last)) => {
                let since = now.since(at);
                since >= STATUS_INTERVAL
                    || (last.up, last.down) != (key.up, key.down)
                    // A steady eviction of data would otherwise send one every tick.
                    || (last.drops != key.drops && since >= DROPS_STATUS_GAP)
            }
        }
    }

    /// A status reporting `key` was sent (or attempted) at `now`.
    pub fn status_sent(&mut self, now: Mono, key: StatusKey) {
        self.last_status = Some((now, key));
    }
}

#[derive(Debug)]
struct Flight<Id> {
    /// Publishes in the order they were handed to the client, waiting for their packet id.
    awaiting_pkid: VecDeque<(Option<Id>, Lane)>,
    /// How many of `awaiting_pkid` are live data.
    data_waiting: usize,
    /// Packet id → (record, when written).
    unacked: HashMap<u16, (Option<Id>, Mono)>,
}

impl<Id> Default for Flight<Id> {
    fn default() -> Self {
        Flight {
            awaiting_pkid: VecDeque::new(),
            data_waiting: 0,
            unacked: HashMap::new(),
        }
    }
}

impl<Id> Flight<Id> {
    fn len(&self) -> usize {
        self.awaiting_pkid.len() + self.unacked.len() - self.data_waiting
    }

    fn clear(&mut self) {
        self.awaiting_pkid.clear();
        self.unacked.clear();
        self.data_waiting = 0;
    }
}

/// Token bucket bounding the replay of a backlog to `rate` messages per second.
#[derive(Debug)]
struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Mono,
}

impl Throttle {
    fn new(rate: u32, now: Mono) -> Throttle {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 10.0).max(1.0);
        Throttle {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn reset(&mut self, now: Mono) {
        self.tokens = self.burst;
        self.last = now;
    }

    fn available(&mut self, now: Mono) -> usize {
        let dt = now.since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = self.last.max(now);
        self.tokens.floor() as usize
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// When the next token is there.
    fn next_at(&self) -> Mono {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const T0: Mono = Mono::from_micros(5_000_000_000);
    const WALL0: Ts = 1_764_000_000_000;

    fn cfg() -> SessionConfig {
        SessionConfig {
            window: 64,
            data_window: 64,
            replay_rate: 1000,
            reconnect_max: Duration::from_secs(2),
            seed: 7,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn connected() -> Session<u64> {
        let mut s = Session::new(cfg(), T0);
        s.connecting();
        s.connack(T0, WALL0);
        s
    }

    fn ids(v: &[Option<Settled<u64>>]) -> Vec<Option<Option<u64>>> {
        v.iter().map(|s| s.map(|x| x.id)).collect()
    }

    #[test]
    fn acks_match_records_by_packet_id_in_any_order() {
        let mut s = connected();
        for id in [10, 11, 12] {
            s.handed(Some(id));
        }
        s.handed(None); // a status sent around the outbox
        let sent: Vec<_> = (1..=4).map(|p| s.sent(p, T0)).collect();
        assert_eq!(ids(&sent), vec![None, None, None, None]);
        assert_eq!(s.in_flight(), 4);
        let t = T0 + ms(25);
        // Out-of-order acks still find their own record, with their latency.
        assert_eq!(s.acked(3, t).unwrap().id, Some(12));
        assert_eq!(
            s.acked(1, t),
            Some(Settled {
                id: Some(10),
                latency: ms(25)
            })
        );
        assert_eq!(s.acked(4, t).unwrap().id, None);
        // A duplicate or unknown ack settles nothing.
        assert_eq!(s.acked(1, t), None);
        assert_eq!(s.acked(9, t), None);
        assert_eq!(s.acked(2, t).unwrap().id, Some(11));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_reused_packet_id_after_its_ack_maps_to_the_new_record() {
        let mut s = connected();
        s.handed(Some(1));
        s.handed(Some(2));
        s.sent(1, T0);
        // Record 2 collided on pkid 1 (rumqttc said AwaitAck); its Publish event only comes
        // after the ack for the first holder of pkid 1.
        assert_eq!(s.acked(1, T0).unwrap().id, Some(1));
        s.sent(1, T0);
        assert_eq!(s.acked(1, T0).unwrap().id, Some(2));
    }

    #[test]
    fn qos0_settles_when_written_and_strays_are_ignored() {
        let mut s = connected();
        assert_eq!(s.sent(5, T0), None, "nothing was waiting");
        s.handed(Some(7));
        assert_eq!(s.sent(0, T0).unwrap().id, Some(7));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn live_data_has_its_own_budget() {
        let mut s = connected();
        for _ in 0..64 {
            assert!(s.data_has_room());
            s.handed_data();
        }
        assert!(!s.data_has_room());
        assert_eq!(s.in_flight(), 0, "data does not take the alarms' window");
        assert_eq!(s.room(T0), 64);
        s.handed(Some(1));
        assert_eq!(
            s.sent(0, T0).unwrap().id,
            None,
            "the oldest waiting is data"
        );
        assert!(s.data_has_room());
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() {
        let mut s = connected();
        s.drained();
        assert_eq!(s.room(T0), 64);
        for id in 0..64 {
            s.handed(Some(id));
        }
        assert_eq!(s.room(T0), 0);
        assert!(!s.has_room());
        for p in 1..=64u16 {
            s.sent(p, T0);
        }
        s.acked(5, T0);
        assert_eq!(s.room(T0), 1);
    }

    #[test]
    fn nothing_goes_out_before_connack_and_a_lost_connection_forgets_the_flight() {
        let mut s: Session<u64> = Session::new(cfg(), T0);
        assert!(s.should_connect(T0));
        s.connecting();
        assert!(!s.should_connect(T0), "one attempt at a time");
        assert_eq!(s.room(T0), 0);
        assert!(!s.data_has_room());
        s.connack(T0, WALL0);
        s.handed(Some(1));
        s.sent(1, T0);
        let lost = s.lost(T0 + ms(10));
        assert!(lost.was_connected);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.room(T0 + ms(10)), 0);
        // A stale PubAck from the dead connection settles nothing.
        assert_eq!(s.acked(1, T0 + ms(20)), None);
    }

    /// The logic the one-minute broker outage of tests/delivery.rs waited out in real time:
    /// attempts back off from 0.5 s to `reconnect_max`, never faster, never slower; the first
    /// attempt after the broker returns connects and resets the backoff.
    #[test]
    fn a_long_outage_retries_at_the_capped_backoff_then_recovers() {
        let clock = ManualClock::new(WALL0);
        let mut s: Session<u64> = Session::new(cfg(), clock.mono());
        s.connecting();
        s.connack(clock.mono(), clock.now());
        clock.advance(1_000);
        let mut attempts = Vec::new();
        let mut lost = s.lost(clock.mono());
        assert!(lost.was_connected);
        let outage_end = clock.mono() + Duration::from_secs(60);
        loop {
            let at = s.next_wake().unwrap();
            assert!(!s.should_connect(at - Duration::from_micros(1)));
            clock.advance_to(at);
            assert!(s.should_connect(clock.mono()));
            attempts.push((lost.failures, lost.retry_in));
            s.connecting();
            if clock.mono() >= outage_end {
                break;
            }
            lost = s.lost(clock.mono());
            assert!(!lost.was_connected);
        }
        let waits: Vec<Duration> = attempts.iter().map(|a| a.1).collect();
        assert!(waits[0] >= ms(400) && waits[0] <= ms(600), "{waits:?}");
        assert!(waits[1] >= ms(800) && waits[1] <= ms(1_200), "{waits:?}");
        for w in &waits[2..] {
            assert!(*w >= ms(1_600) && *w <= ms(2_400), "capped: {waits:?}");
        }
        assert!(
            (25..=40).contains(&attempts.len()),
            "{} attempts",
            attempts.len()
        );
        s.connack(clock.mono(), clock.now());
        assert!(s.is_connected());
        clock.advance(5);
        let again = s.lost(clock.mono());
        assert_eq!(again.failures, 1, "a connection resets the backoff");
        assert!(again.retry_in <= ms(600));
    }

    /// What waited across the outage is a replay (flagged, throttled); what waited only for
    /// the first connection of the run is not, unless the outbox says it survived a restart.
    #[test]
    fn backlog_across_a_disconnection_is_replayed_and_the_first_live_record_ends_it() {
        let mut s: Session<u64> = Session::new(cfg(), T0);
        s.connecting();
        s.connack(T0, WALL0);
        assert!(
            !s.is_replay(WALL0 - 5_000, false),
            "first connection: not a replay"
        );
        assert!(
            s.is_replay(WALL0 - 5_000, true),
            "the outbox's restart backlog"
        );
        s.lost(T0 + ms(10));
        s.connecting();
        s.connack(T0 + ms(60_000), WALL0 + 60_000);
        assert!(
            s.is_replay(WALL0 + 30_000, false),
            "stored during the outage"
        );
        assert!(!s.is_replay(WALL0 + 60_001, false), "live");
        // The replay ended with the first live record: the throttle no longer applies.
        assert_eq!(s.room(T0 + ms(60_000)), 64);
    }

    #[test]
    fn the_replay_throttle_holds_its_rate_in_virtual_time() {
        let clock = ManualClock::new(WALL0);
        let start = clock.mono();
        let mut s: Session<u64> = Session::new(
            SessionConfig {
                replay_rate: 1000,
                ..cfg()
            },
            start,
        );
        s.connecting();
        s.connack(start, clock.now());
        let mut sent = 0u64;
        let mut pkid = 0u16;
        // 300 backlog records; acks come at once, so only the throttle limits.
        while sent < 300 {
            let n = s.room(clock.mono());
            if n == 0 {
                clock.advance_to(s.next_wake().expect("the throttle says when"));
                continue;
            }
            for _ in 0..n.min(300 - sent as usize) {
                assert!(s.is_replay(WALL0 - 1, true));
                s.handed(Some(sent));
                pkid = pkid % 60_000 + 1;
                s.sent(pkid, clock.mono());
                s.acked(pkid, clock.mono());
                sent += 1;
            }
        }
        // A burst of a tenth of the rate, then 1000/s: (300 - 100) / 1000 = 0.2 s.
        let took = clock.mono().since(start);
        assert!(took >= ms(195) && took <= ms(205), "{took:?}");
    }

    #[test]
    fn status_goes_out_on_connect_every_30_s_on_device_changes_and_after_drops() {
        let mut s: Session<u64> = Session::new(cfg(), T0);
        let key = StatusKey {
            up: 3,
            down: 1,
            drops: 0,
        };
        assert!(s.status_due(T0, key), "never sent");
        s.status_sent(T0, key);
        assert!(!s.status_due(T0 + ms(29_999), key));
        assert!(s.status_due(T0 + ms(30_000), key));
        let down = StatusKey {
            up: 2,
            down: 2,
            drops: 0,
        };
        assert!(s.status_due(T0 + ms(1), down), "a device change: at once");
        let drops = StatusKey { drops: 10, ..key };
        assert!(
            !s.status_due(T0 + ms(4_999), drops),
            "drops wait for the gap"
        );
        assert!(s.status_due(T0 + ms(5_000), drops));
        s.status_sent(T0 + ms(5_000), drops);
        let more = StatusKey { drops: 11, ..key };
        assert!(
            !s.status_due(T0 + ms(9_999), more),
            "steady eviction: one per 5 s"
        );
        assert!(s.status_due(T0 + ms(10_000), more));
    }
}
