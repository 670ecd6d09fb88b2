//! ISA-18.2 alarm lifecycle for one alarm instance, i.e. one (device, rule) pair.
//!
//! The state machine is pure: every call takes `now` and returns at most one [`Transition`]
//! describing a change of the *published* state (what operators see). The caller publishes it.
//!
//! Conventions chosen here (see docs/STANDARDS.md §1):
//! - Deadband belongs to the rule that produces the [`Condition`] (a high alarm at L clears at
//!   L − DB); this module only applies on-delay and off-delay.
//! - A pending on/off delay fires only when a call (`condition` or `tick`) observes it due while
//!   still pending. A contradicting sample drops it even if its deadline passed unobserved, so
//!   the alarm never changes on an assumption a newer sample disproves. `tick` assumes the last
//!   sample still holds; feed `Condition::Unknown` when inputs go bad.
//! - Latching: when the condition clears, an active latching alarm goes to `Latched` (remembering
//!   whether it was acknowledged). `reset` releases the latch: to `Normal` if it was acknowledged,
//!   otherwise to `ReturnedUnacked`, which still needs an acknowledgement.
//! - Shelved, suppressed by design and out of service are orthogonal flags that hide the alarm.
//!   Published precedence: out of service > suppressed > shelved. While hidden the alarm tracks
//!   the process silently; when it becomes visible again it shows `ActiveUnacked` if the
//!   condition is active, `Normal` otherwise (earlier acknowledgements and latches are dropped).
//! - Commands act on the state as of the last `condition`/`tick` call: call `tick(now)` before
//!   applying commands at `now` so that due delays and shelve expiry are applied first.
//!
//! Driving it (engine): per evaluation `alarm.condition(verdict, now)`; every second
//! `alarm.tick(now)`; operator commands after a `tick` at the same `now`; design suppression via
//! `set_suppressed` on every evaluation of the suppressing logic. Publish each `Transition`; feed
//! `Transition::is_annunciation()` ones to `flood::FloodDetector` and `flood::AlarmKpis`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::model::{Priority, Ts};

/// Activations inside this window count towards chattering.
pub const CHATTER_WINDOW_MS: i64 = 60_000;
/// An alarm that activates this many times inside [`CHATTER_WINDOW_MS`] is chattering.
pub const CHATTER_ACTIVATIONS: usize = 3;

/// The rule's verdict for one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The process is abnormal.
    Active,
    /// The process is normal (deadband already applied by the rule).
    Clear,
    /// Inputs are bad: the alarm keeps its state and pending delays restart from scratch.
    Unknown,
}

/// Per-alarm settings from rationalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmSettings {
    pub priority: Priority,
    /// How long the condition must stay `Active` before the alarm activates. Negative = 0.
    pub on_delay_ms: i64,
    /// How long the condition must stay `Clear` before the alarm clears. Negative = 0.
    pub off_delay_ms: i64,
    /// Stay `Latched` after the condition clears, until an operator resets.
    pub latching: bool,
}

/// ISA-18.2 alarm state, ignoring the shelved/suppressed/out-of-service flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// NORM: condition normal, nothing to acknowledge.
    #[default]
    Normal,
    /// UNACK: condition abnormal, not acknowledged.
    ActiveUnacked,
    /// ACKED: condition abnormal, acknowledged.
    ActiveAcked,
    /// RTNUN: condition returned to normal before acknowledgement.
    ReturnedUnacked,
    /// Condition normal but a latching alarm waits for `reset` (see [`Alarm::is_acked`]).
    Latched,
}

impl State {
    /// Stable snake_case name used in payloads.
    pub fn label(&self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::ActiveUnacked => "active_unacked",
            State::ActiveAcked => "active_acked",
            State::ReturnedUnacked => "returned_unacked",
            State::Latched => "latched",
        }
    }
}

/// A flag that hides the alarm from operators; when one applies its label is the published state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    Shelved,
    Suppressed,
    OutOfService,
}

impl Flag {
    pub fn label(&self) -> &'static str {
        match self {
            Flag::Shelved => "shelved",
            Flag::Suppressed => "suppressed",
            Flag::OutOfService => "out_of_service",
        }
    }
}

/// What caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Condition,
    Ack,
    Shelve,
    Unshelve,
    ShelveExpired,
    Reset,
    OutOfService,
    ReturnToService,
    Suppressed,
    Unsuppressed,
    /// Not a change: the state restored at start, published again (docs/MQTT.md).
    Restored,
}

impl Cause {
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Condition => "condition",
            Cause::Ack => "ack",
            Cause::Shelve => "shelve",
            Cause::Unshelve => "unshelve",
            Cause::ShelveExpired => "shelve_expired",
            Cause::Reset => "reset",
            Cause::OutOfService => "out_of_service",
            Cause::ReturnToService => "return_to_service",
            Cause::Suppressed => "suppressed",
            Cause::Unsuppressed => "unsuppressed",
            Cause::Restored => "restored",
        }
    }
}

/// A change of the published state, or an accepted operator command (those are always reported,
/// even when the published label stays the same, e.g. acknowledging a latched alarm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
    pub at: Ts,
    pub cause: Cause,
    pub by: Option<String>,
    pub note: Option<String>,
}

impl Transition {
    /// The alarm was newly annunciated to operators (count it for KPIs and flood detection).
    /// Includes RTNUN → UNACK and becoming visible again with the condition active.
    pub fn is_annunciation(&self) -> bool {
        self.to == State::ActiveUnacked.label() && self.from != State::ActiveUnacked.label()
    }
}

/// Why an operator command was refused. The messages are shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("nothing to acknowledge: the alarm is {state}")]
    NothingToAcknowledge { state: &'static str },
    #[error("the alarm is not latched (it is {state}); only a latched alarm can be reset")]
    NotLatched { state: &'static str },
    #[error("the alarm is not shelved")]
    NotShelved,
    #[error("the alarm is already out of service")]
    AlreadyOutOfService,
    #[error("the alarm is not out of service")]
    NotOutOfService,
    #[error("the alarm is out of service; return it to service first")]
    OutOfService,
    #[error("the alarm is {state} and not shown to operators; this command does not apply")]
    Hidden { state: &'static str },
    #[error("shelve end time {until} ms must be later than now ({now} ms)")]
    InvalidShelveTime { until: Ts, now: Ts },
    #[error("an operator name is required")]
    MissingOperator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    to_active: bool,
    since: Ts,
}

/// What an alarm keeps across a restart (`io/alarm_state.rs` writes it as JSON). Wall-clock
/// times (`Ts`), so a shelve ends when it should however long the agent was down. A pending
/// on/off delay is not kept: it starts again from the next sample. Every field has a default
/// so that a file from an older release still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SavedAlarm {
    pub state: State,
    pub latched_acked: bool,
    pub active: bool,
    pub active_since: Option<Ts>,
    pub since: Ts,
    pub acked_by: Option<String>,
    pub acked_at: Option<Ts>,
    pub shelved_until: Option<Ts>,
    pub shelved_by: Option<String>,
    pub suppressed: bool,
    pub out_of_service: bool,
    /// The last activations, for chattering detection.
    pub recent_activations: Vec<Ts>,
    pub activations: u64,
    pub chattering_episodes: u64,
}

/// One alarm instance. See the module docs for the conventions.
#[derive(Debug, Clone)]
pub struct Alarm {
    settings: AlarmSettings,
    state: State,
    /// Only meaningful in `Latched`: whether the latched alarm was acknowledged.
    latched_acked: bool,
    /// Debounced condition (after on/off delays).
    active: bool,
    active_since: Option<Ts>,
    pending: Option<Pending>,
    since: Ts,
    acked_by: Option<String>,
    acked_at: Option<Ts>,
    shelved_until: Option<Ts>,
    shelved_by: Option<String>,
    suppressed: bool,
    out_of_service: bool,
    recent_activations: VecDeque<Ts>,
    activations: u64,
    chattering_episodes: u64,
}

impl Alarm {
    /// A new alarm in `Normal`, in service, with `since() == 0` until its first transition.
    pub fn new(settings: AlarmSettings) -> Self {
        Alarm {
            settings,
            state: State::Normal,
            latched_acked: false,
            active: false,
            active_since: None,
            pending: None,
            since: 0,
            acked_by: None,
            acked_at: None,
            shelved_until: None,
            shelved_by: None,
            suppressed: false,
            out_of_service: false,
            recent_activations: VecDeque::new(),
            activations: 0,
            chattering_episodes: 0,
        }
    }

    /// The state to persist.
    pub fn save(&self) -> SavedAlarm {
        SavedAlarm {
            state: self.state,
            latched_acked: self.latched_acked,
            active: self.active,
            active_since: self.active_since,
            since: self.since,
            acked_by: self.acked_by.clone(),
            acked_at: self.acked_at,
            shelved_until: self.shelved_until,
            shelved_by: self.shelved_by.clone(),
            suppressed: self.suppressed,
            out_of_service: self.out_of_service,
            recent_activations: self.recent_activations.iter().copied().collect(),
            activations: self.activations,
            chattering_episodes: self.chattering_episodes,
        }
    }

    /// An alarm with `settings` (the configuration in force now) in the state `saved`. The
    /// ack and shelve are kept whatever the limit or priority became; an alarm latched under a
    /// rule that no longer latches is released as `reset` would (to NORM if it was
    /// acknowledged, RTNUN otherwise). Contradictions a hand-edited file could hold are
    /// settled towards what the condition says.
    pub fn restore(settings: AlarmSettings, saved: SavedAlarm) -> Alarm {
        let mut state = saved.state;
        let active = saved.active || matches!(state, State::ActiveUnacked | State::ActiveAcked);
        if state == State::Latched && !settings.latching {
            state = if saved.latched_acked {
                State::Normal
            } else {
                State::ReturnedUnacked
            };
        }
        let acked = match state {
            State::ActiveAcked => true,
            State::Latched => saved.latched_acked,
            State::Normal | State::ActiveUnacked | State::ReturnedUnacked => false,
        };
        let mut recent: VecDeque<Ts> = saved.recent_activations.into_iter().collect();
        while recent.len() > CHATTER_ACTIVATIONS {
            recent.pop_front();
        }
        Alarm {
            settings,
            state,
            latched_acked: state == State::Latched && saved.latched_acked,
            active,
            active_since: if active {
                saved.active_since.or(Some(saved.since))
            } else {
                None
            },
            pending: None,
            since: saved.since,
            acked_by: if acked { saved.acked_by } else { None },
            acked_at: if acked { saved.acked_at } else { None },
            shelved_by: saved.shelved_until.and(saved.shelved_by),
            shelved_until: saved.shelved_until,
            suppressed: saved.suppressed,
            out_of_service: saved.out_of_service,
            recent_activations: recent,
            activations: saved.activations,
            chattering_episodes: saved.chattering_episodes,
        }
    }

    /// Whether nothing distinguishes this alarm from a new one (nothing worth persisting).
    pub fn is_pristine(&self) -> bool {
        self.since == 0
            && !self.active
            && self.state == State::Normal
            && self.flag().is_none()
            && self.activations == 0
    }

    /// New settings from a reloaded configuration; the state is kept.
    pub fn set_settings(&mut self, settings: AlarmSettings) {
        self.settings = settings;
    }

    pub fn settings(&self) -> &AlarmSettings {
        &self.settings
    }

    pub fn priority(&self) -> Priority {
        self.settings.priority
    }

    /// The ISA-18.2 state ignoring flags. While hidden this is the state as it was when hidden,
    /// updated by the process silently; what will be shown again is decided on unhiding.
    pub fn state(&self) -> State {
        self.state
    }

    /// The flag that currently hides the alarm, by precedence.
    pub fn flag(&self) -> Option<Flag> {
        if self.out_of_service {
            Some(Flag::OutOfService)
        } else if self.suppressed {
            Some(Flag::Suppressed)
        } else if self.shelved_until.is_some() {
            Some(Flag::Shelved)
        } else {
            None
        }
    }

    /// What operators see: a flag label if one applies, otherwise the state label.
    pub fn published_state(&self) -> &'static str {
        match self.flag() {
            Some(flag) => flag.label(),
            None => self.state.label(),
        }
    }

    /// When the current activation (debounced condition) started, if the condition is active.
    pub fn active_since(&self) -> Option<Ts> {
        self.active_since
    }

    /// When the current published state began (0 before the first transition).
    pub fn since(&self) -> Ts {
        self.since
    }

    /// Who acknowledged the current activation or latch, if anyone.
    pub fn acked_by(&self) -> Option<&str> {
        self.acked_by.as_deref()
    }

    pub fn acked_at(&self) -> Option<Ts> {
        self.acked_at
    }

    /// Whether nothing is left to acknowledge (true in `Normal` and `ActiveAcked`).
    pub fn is_acked(&self) -> bool {
        match self.state {
            State::Normal | State::ActiveAcked => true,
            State::ActiveUnacked | State::ReturnedUnacked => false,
            State::Latched => self.latched_acked,
        }
    }

    pub fn shelved_until(&self) -> Option<Ts> {
        self.shelved_until
    }

    pub fn shelved_by(&self) -> Option<&str> {
        self.shelved_by.as_deref()
    }

    pub fn is_suppressed(&self) -> bool {
        self.suppressed
    }

    pub fn is_out_of_service(&self) -> bool {
        self.out_of_service
    }

    /// The debounced process condition is active (tracked even while hidden).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Shown to operators: not hidden by a flag and not `Normal`.
    pub fn is_shown(&self) -> bool {
        self.flag().is_none() && self.state != State::Normal
    }

    /// Debounced activations since creation, including silent ones while hidden.
    pub fn activations(&self) -> u64 {
        self.activations
    }

    /// At least [`CHATTER_ACTIVATIONS`] activations in the last [`CHATTER_WINDOW_MS`].
    pub fn is_chattering(&self, now: Ts) -> bool {
        let window_start = now.saturating_sub(CHATTER_WINDOW_MS);
        let recent = self
            .recent_activations
            .iter()
            .filter(|&&t| t > window_start && t <= now)
            .count();
        recent >= CHATTER_ACTIVATIONS
    }

    /// How many times this alarm started chattering (an episode ends when the window drops
    /// below the threshold). Compare before/after a call to feed `AlarmKpis`.
    pub fn chattering_episodes(&self) -> u64 {
        self.chattering_episodes
    }

    /// Feed the rule's verdict at `now`. Also applies a due shelve expiry.
    pub fn condition(&mut self, condition: Condition, now: Ts) -> Option<Transition> {
        let before = self.published_state();
        let was_hidden = self.flag().is_some();
        match condition {
            Condition::Unknown => self.pending = None,
            Condition::Active => self.observe(true, now),
            Condition::Clear => self.observe(false, now),
        }
        let expired = self.expire_shelve(now);
        self.on_flags_changed(was_hidden);
        let cause = if expired {
            Cause::ShelveExpired
        } else {
            Cause::Condition
        };
        self.finish(before, cause, None, None, now, false)
    }

    /// Fire a pending on/off delay that is due at `now` (assuming the last sample still holds)
    /// and expire the shelve. Call it periodically (e.g. every second) and before commands.
    pub fn tick(&mut self, now: Ts) -> Option<Transition> {
        let before = self.published_state();
        let was_hidden = self.flag().is_some();
        self.fire_pending_if_due(now);
        let expired = self.expire_shelve(now);
        self.on_flags_changed(was_hidden);
        let cause = if expired {
            Cause::ShelveExpired
        } else {
            Cause::Condition
        };
        self.finish(before, cause, None, None, now, false)
    }

    /// Operator acknowledgement: UNACK → ACKED, RTNUN → NORM, or acknowledge a latched alarm.
    pub fn ack(
        &mut self,
        by: &str,
        note: Option<&str>,
        now: Ts,
    ) -> Result<Option<Transition>, CommandError> {
        let by = operator(by)?;
        let before = self.published_state();
        if self.flag().is_some() {
            return Err(CommandError::Hidden { state: before });
        }
        match self.state {
            State::ActiveUnacked => {
                self.state = State::ActiveAcked;
                self.set_acked(by, now);
            }
            State::ReturnedUnacked => {
                self.state = State::Normal;
                self.clear_ack();
            }
            State::Latched if !self.latched_acked => {
                self.latched_acked = true;
                self.set_acked(by, now);
            }
            State::Normal | State::ActiveAcked | State::Latched => {
                return Err(CommandError::NothingToAcknowledge { state: before });
            }
        }
        Ok(self.finish(before, Cause::Ack, Some(by), note, now, true))
    }

    /// Shelve until `until` (or extend/shorten an existing shelve). Not allowed out of service.
    pub fn shelve(
        &mut self,
        until: Ts,
        by: &str,
        now: Ts,
    ) -> Result<Option<Transition>, CommandError> {
        let by = operator(by)?;
        if self.out_of_service {
            return Err(CommandError::OutOfService);
        }
        if until <= now {
            return Err(CommandError::InvalidShelveTime { until, now });
        }
        let before = self.published_state();
        self.shelved_until = Some(until);
        self.shelved_by = Some(by.to_string());
        Ok(self.finish(before, Cause::Shelve, Some(by), None, now, true))
    }

    /// End a shelve early; the alarm re-evaluates (e.g. straight to UNACK if active).
    pub fn unshelve(&mut self, by: &str, now: Ts) -> Result<Option<Transition>, CommandError> {
        let by = operator(by)?;
        if self.shelved_until.is_none() {
            return Err(CommandError::NotShelved);
        }
        let before = self.published_state();
        self.shelved_until = None;
        self.shelved_by = None;
        self.on_flags_changed(true);
        Ok(self.finish(before, Cause::Unshelve, Some(by), None, now, true))
    }

    /// Release a latched alarm: to NORM if it was acknowledged, otherwise to RTNUN.
    pub fn reset(&mut self, by: &str, now: Ts) -> Result<Option<Transition>, CommandError> {
        let by = operator(by)?;
        let before = self.published_state();
        if self.flag().is_some() {
            return Err(CommandError::Hidden { state: before });
        }
        if self.state != State::Latched {
            return Err(CommandError::NotLatched { state: before });
        }
        if self.latched_acked {
            self.state = State::Normal;
            self.clear_ack();
        } else {
            self.state = State::ReturnedUnacked;
        }
        self.latched_acked = false;
        Ok(self.finish(before, Cause::Reset, Some(by), None, now, true))
    }

    /// Maintenance: hide the alarm until `return_to_service`. Cancels any shelve.
    pub fn remove_from_service(
        &mut self,
        by: &str,
        now: Ts,
    ) -> Result<Option<Transition>, CommandError> {
        let by = operator(by)?;
        if self.out_of_service {
            return Err(CommandError::AlreadyOutOfService);
        }
        let before = self.published_state();
        self.out_of_service = true;
        self.shelved_until = None;
        self.shelved_by = None;
        Ok(self.finish(before, Cause::OutOfService, Some(by), None, now, true))
    }

    /// Back from maintenance; the alarm re-evaluates (unless still suppressed by design).
    pub fn return_to_service(
        &mut self,
        by: &str,
        now: Ts,
    ) -> Result<Option<Transition>, CommandError> {
        let by = operator(by)?;
        if !self.out_of_service {
            return Err(CommandError::NotOutOfService);
        }
        let before = self.published_state();
        self.out_of_service = false;
        self.on_flags_changed(true);
        Ok(self.finish(before, Cause::ReturnToService, Some(by), None, now, true))
    }

    /// Design suppression driven by logic (e.g. a potline outage suppresses cell alarms).
    /// Idempotent, so the caller may set it on every evaluation; reports a transition only when
    /// the published state changes. Never fails; returns `Result` like the other commands.
    pub fn set_suppressed(
        &mut self,
        suppressed: bool,
        now: Ts,
    ) -> Result<Option<Transition>, CommandError> {
        if self.suppressed == suppressed {
            return Ok(None);
        }
        let before = self.published_state();
        let was_hidden = self.flag().is_some();
        self.suppressed = suppressed;
        self.on_flags_changed(was_hidden);
        let cause = if suppressed {
            Cause::Suppressed
        } else {
            Cause::Unsuppressed
        };
        Ok(self.finish(before, cause, None, None, now, false))
    }

    /// Debounce one observed sample (`true` = Active).
    fn observe(&mut self, active: bool, now: Ts) {
        if active == self.active {
            // The sample confirms the current state: cancel a pending change.
            self.pending = None;
            return;
        }
        match self.pending {
            Some(p) if p.to_active == active => {}
            _ => {
                self.pending = Some(Pending {
                    to_active: active,
                    since: now,
                })
            }
        }
        self.fire_pending_if_due(now);
    }

    fn fire_pending_if_due(&mut self, now: Ts) {
        let Some(mut pending) = self.pending else {
            return;
        };
        if now < pending.since {
            // An injected clock stepped back: restart the delay at `now` instead of waiting for
            // the clock to catch up with the step (an anode effect annunciated an hour late).
            pending.since = now;
            self.pending = Some(pending);
        }
        let delay = if pending.to_active {
            self.settings.on_delay_ms
        } else {
            self.settings.off_delay_ms
        }
        .max(0);
        if now.saturating_sub(pending.since) >= delay {
            self.pending = None;
            if pending.to_active {
                self.activate(now);
            } else {
                self.deactivate();
            }
        }
    }

    fn activate(&mut self, now: Ts) {
        self.active = true;
        self.active_since = Some(now);
        self.activations += 1;
        self.record_for_chattering(now);
        self.state = State::ActiveUnacked;
        self.latched_acked = false;
        self.clear_ack();
    }

    fn deactivate(&mut self) {
        self.active = false;
        self.active_since = None;
        self.state = match (self.state, self.settings.latching) {
            (State::ActiveUnacked, false) => State::ReturnedUnacked,
            (State::ActiveAcked, false) => {
                self.clear_ack();
                State::Normal
            }
            (State::ActiveUnacked, true) => {
                self.latched_acked = false;
                State::Latched
            }
            (State::ActiveAcked, true) => {
                self.latched_acked = true;
                State::Latched
            }
            (other, _) => other,
        };
    }

    fn record_for_chattering(&mut self, now: Ts) {
        let window_start = now.saturating_sub(CHATTER_WINDOW_MS);
        while self
            .recent_activations
            .front()
            .is_some_and(|&t| t <= window_start)
        {
            self.recent_activations.pop_front();
        }
        let was_chattering = self.recent_activations.len() >= CHATTER_ACTIVATIONS;
        self.recent_activations.push_back(now);
        // Only the last CHATTER_ACTIVATIONS matter once the threshold is reached; bound memory.
        while self.recent_activations.len() > CHATTER_ACTIVATIONS {
            self.recent_activations.pop_front();
        }
        if !was_chattering && self.recent_activations.len() >= CHATTER_ACTIVATIONS {
            self.chattering_episodes += 1;
        }
    }

    fn expire_shelve(&mut self, now: Ts) -> bool {
        match self.shelved_until {
            Some(until) if until <= now => {
                self.shelved_until = None;
                self.shelved_by = None;
                true
            }
            _ => false,
        }
    }

    /// On becoming visible again, show the real current state (acks and latches are dropped).
    fn on_flags_changed(&mut self, was_hidden: bool) {
        if was_hidden && self.flag().is_none() {
            self.state = if self.active {
                State::ActiveUnacked
            } else {
                State::Normal
            };
            self.latched_acked = false;
            self.clear_ack();
        }
    }

    fn set_acked(&mut self, by: &str, now: Ts) {
        self.acked_by = Some(by.to_string());
        self.acked_at = Some(now);
    }

    fn clear_ack(&mut self) {
        self.acked_by = None;
        self.acked_at = None;
    }

    fn finish(
        &mut self,
        before: &'static str,
        cause: Cause,
        by: Option<&str>,
        note: Option<&str>,
        now: Ts,
        always: bool,
    ) -> Option<Transition> {
        let after = self.published_state();
        if after == before && !always {
            return None;
        }
        if after != before {
            self.since = now;
        }
        Some(Transition {
            from: before,
            to: after,
            at: now,
            cause,
            by: by.map(str::to_string),
            note: note.map(str::to_string),
        })
    }
}

fn operator(by: &str) -> Result<&str, CommandError> {
    let by = by.trim();
    if by.is_empty() {
        Err(CommandError::MissingOperator)
    } else {
        Ok(by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(on: i64, off: i64, latching: bool) -> AlarmSettings {
        AlarmSettings {
            priority: Priority::High,
            on_delay_ms: on,
            off_delay_ms: off,
            latching,
        }
    }

    fn plain() -> Alarm {
        Alarm::new(settings(0, 0, false))
    }

    fn fire(alarm: &mut Alarm, c: Condition, now: Ts) -> Transition {
        alarm.condition(c, now).expect("a transition")
    }

    fn labels(t: &Transition) -> (&'static str, &'static str) {
        (t.from, t.to)
    }

    #[test]
    fn norm_to_unack_on_activation() {
        let mut a = plain();
        let t = fire(&mut a, Condition::Active, 1_000);
        assert_eq!(labels(&t), ("normal", "active_unacked"));
        assert_eq!(t.cause, Cause::Condition);
        assert_eq!(t.at, 1_000);
        assert!(t.is_annunciation());
        assert_eq!(a.state(), State::ActiveUnacked);
        assert_eq!(a.active_since(), Some(1_000));
        assert_eq!(a.since(), 1_000);
        assert!(a.is_active() && a.is_shown() && !a.is_acked());
        // A repeated Active sample changes nothing.
        assert_eq!(a.condition(Condition::Active, 2_000), None);
    }

    #[test]
    fn unack_to_acked_records_operator_and_note() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        let t = a
            .ack("li.wei", Some("checking cell 117"), 5_000)
            .unwrap()
            .unwrap();
        assert_eq!(labels(&t), ("active_unacked", "active_acked"));
        assert_eq!(t.cause, Cause::Ack);
        assert_eq!(t.by.as_deref(), Some("li.wei"));
        assert_eq!(t.note.as_deref(), Some("checking cell 117"));
        assert!(!t.is_annunciation());
        assert_eq!(a.acked_by(), Some("li.wei"));
        assert_eq!(a.acked_at(), Some(5_000));
        assert_eq!(a.active_since(), Some(0));
        assert_eq!(a.since(), 5_000);
    }

    #[test]
    fn unack_to_rtnun_then_ack_to_norm() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        let t = fire(&mut a, Condition::Clear, 1_000);
        assert_eq!(labels(&t), ("active_unacked", "returned_unacked"));
        assert!(a.is_shown() && !a.is_active());
        assert_eq!(a.active_since(), None);
        let t = a.ack("op", None, 2_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("returned_unacked", "normal"));
        assert!(!a.is_shown());
        assert_eq!(a.acked_by(), None);
    }

    #[test]
    fn acked_to_norm_when_condition_clears() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        a.ack("op", None, 1_000).unwrap();
        let t = fire(&mut a, Condition::Clear, 2_000);
        assert_eq!(labels(&t), ("active_acked", "normal"));
        assert_eq!(a.acked_by(), None);
    }

    #[test]
    fn rtnun_to_unack_when_condition_returns() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        fire(&mut a, Condition::Clear, 1_000);
        let t = fire(&mut a, Condition::Active, 2_000);
        assert_eq!(labels(&t), ("returned_unacked", "active_unacked"));
        assert!(t.is_annunciation());
        assert_eq!(a.active_since(), Some(2_000));
    }

    #[test]
    fn ack_refused_when_nothing_to_acknowledge() {
        let mut a = plain();
        assert_eq!(
            a.ack("op", None, 0),
            Err(CommandError::NothingToAcknowledge { state: "normal" })
        );
        fire(&mut a, Condition::Active, 0);
        a.ack("op", None, 1).unwrap();
        let err = a.ack("op", None, 2).unwrap_err();
        assert_eq!(
            err,
            CommandError::NothingToAcknowledge {
                state: "active_acked"
            }
        );
        assert_eq!(
            err.to_string(),
            "nothing to acknowledge: the alarm is active_acked"
        );
        assert_eq!(a.ack("  ", None, 3), Err(CommandError::MissingOperator));
    }

    #[test]
    fn latched_unacked_needs_ack_after_reset() {
        let mut a = Alarm::new(settings(0, 0, true));
        fire(&mut a, Condition::Active, 0);
        let t = fire(&mut a, Condition::Clear, 1_000);
        assert_eq!(labels(&t), ("active_unacked", "latched"));
        assert!(a.is_shown() && !a.is_acked());
        // Reset releases the latch but the alarm still needs an acknowledgement.
        let t = a.reset("op", 2_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("latched", "returned_unacked"));
        assert_eq!(t.cause, Cause::Reset);
        let t = a.ack("op", None, 3_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("returned_unacked", "normal"));
    }

    #[test]
    fn latched_acked_goes_to_norm_on_reset() {
        let mut a = Alarm::new(settings(0, 0, true));
        fire(&mut a, Condition::Active, 0);
        a.ack("op", None, 500).unwrap();
        let t = fire(&mut a, Condition::Clear, 1_000);
        assert_eq!(labels(&t), ("active_acked", "latched"));
        assert!(a.is_acked());
        assert_eq!(
            a.ack("op", None, 1_500),
            Err(CommandError::NothingToAcknowledge { state: "latched" })
        );
        let t = a.reset("shift.lead", 2_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("latched", "normal"));
        assert_eq!(t.by.as_deref(), Some("shift.lead"));
    }

    #[test]
    fn ack_of_latched_alarm_is_reported_without_label_change() {
        let mut a = Alarm::new(settings(0, 0, true));
        fire(&mut a, Condition::Active, 0);
        fire(&mut a, Condition::Clear, 1_000);
        let t = a.ack("op", None, 2_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("latched", "latched"));
        assert!(a.is_acked());
        assert_eq!(a.since(), 1_000);
        let t = a.reset("op", 3_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("latched", "normal"));
    }

    #[test]
    fn latched_alarm_reactivates_when_condition_returns() {
        let mut a = Alarm::new(settings(0, 0, true));
        fire(&mut a, Condition::Active, 0);
        a.ack("op", None, 500).unwrap();
        fire(&mut a, Condition::Clear, 1_000);
        let t = fire(&mut a, Condition::Active, 2_000);
        assert_eq!(labels(&t), ("latched", "active_unacked"));
        assert!(!a.is_acked());
    }

    #[test]
    fn reset_refused_unless_latched() {
        let mut a = Alarm::new(settings(0, 0, true));
        assert_eq!(
            a.reset("op", 0),
            Err(CommandError::NotLatched { state: "normal" })
        );
        fire(&mut a, Condition::Active, 0);
        assert_eq!(
            a.reset("op", 1),
            Err(CommandError::NotLatched {
                state: "active_unacked"
            })
        );
    }

    #[test]
    fn shelve_hides_and_unshelve_reports_real_state() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        a.ack("op", None, 100).unwrap();
        let t = a.shelve(60_000, "op", 1_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("active_acked", "shelved"));
        assert_eq!(t.cause, Cause::Shelve);
        assert_eq!(a.shelved_until(), Some(60_000));
        assert_eq!(a.shelved_by(), Some("op"));
        assert!(!a.is_shown());
        assert_eq!(
            a.ack("op", None, 1_500),
            Err(CommandError::Hidden { state: "shelved" })
        );
        // The process keeps being tracked silently.
        assert_eq!(a.condition(Condition::Clear, 2_000), None);
        assert!(!a.is_active());
        assert_eq!(a.condition(Condition::Active, 3_000), None);
        assert!(a.is_active());
        assert_eq!(a.active_since(), Some(3_000));
        let t = a.unshelve("op", 4_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("shelved", "active_unacked"));
        assert!(t.is_annunciation());
        assert_eq!(a.acked_by(), None);
        assert_eq!(a.unshelve("op", 5_000), Err(CommandError::NotShelved));
    }

    #[test]
    fn unshelve_with_condition_clear_goes_to_normal() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        a.shelve(60_000, "op", 1_000).unwrap();
        a.condition(Condition::Clear, 2_000);
        let t = a.unshelve("op", 3_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("shelved", "normal"));
    }

    #[test]
    fn shelve_expires_on_tick() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        a.shelve(10_000, "op", 1_000).unwrap();
        assert_eq!(a.tick(9_999), None);
        let t = a.tick(10_000).unwrap();
        assert_eq!(labels(&t), ("shelved", "active_unacked"));
        assert_eq!(t.cause, Cause::ShelveExpired);
        assert_eq!(t.by, None);
        assert_eq!(a.shelved_until(), None);
    }

    #[test]
    fn shelve_expires_on_condition_sample_too() {
        let mut a = plain();
        a.shelve(10_000, "op", 0).unwrap();
        let t = fire(&mut a, Condition::Active, 12_000);
        assert_eq!(labels(&t), ("shelved", "active_unacked"));
        assert_eq!(t.cause, Cause::ShelveExpired);
    }

    #[test]
    fn shelve_validation() {
        let mut a = plain();
        assert_eq!(
            a.shelve(1_000, "op", 1_000),
            Err(CommandError::InvalidShelveTime {
                until: 1_000,
                now: 1_000
            })
        );
        a.shelve(5_000, "op", 1_000).unwrap();
        // Re-shelving changes the end time and is reported.
        let t = a.shelve(9_000, "op2", 2_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("shelved", "shelved"));
        assert_eq!(a.shelved_until(), Some(9_000));
        a.remove_from_service("tech", 3_000).unwrap();
        assert_eq!(a.shelved_until(), None, "out of service cancels the shelve");
        assert_eq!(
            a.shelve(9_000, "op", 4_000),
            Err(CommandError::OutOfService)
        );
    }

    #[test]
    fn suppression_hides_and_unsuppress_reevaluates() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        let t = a.set_suppressed(true, 1_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("active_unacked", "suppressed"));
        assert_eq!(t.cause, Cause::Suppressed);
        assert_eq!(a.set_suppressed(true, 1_500), Ok(None), "idempotent");
        assert_eq!(a.condition(Condition::Clear, 2_000), None);
        assert_eq!(a.condition(Condition::Active, 3_000), None);
        let t = a.set_suppressed(false, 4_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("suppressed", "active_unacked"));
        assert_eq!(t.cause, Cause::Unsuppressed);
    }

    #[test]
    fn unsuppress_with_condition_clear_goes_to_normal() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        a.set_suppressed(true, 1_000).unwrap();
        a.condition(Condition::Clear, 2_000);
        let t = a.set_suppressed(false, 3_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("suppressed", "normal"));
    }

    #[test]
    fn flags_follow_precedence() {
        let mut a = plain();
        a.shelve(100_000, "op", 0).unwrap();
        let t = a.set_suppressed(true, 1_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("shelved", "suppressed"));
        let t = a.set_suppressed(false, 2_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("suppressed", "shelved"));
        a.set_suppressed(true, 3_000).unwrap();
        // The shelve expires silently behind the suppression.
        assert_eq!(a.tick(100_000), None);
        assert_eq!(a.shelved_until(), None);
        let t = a.remove_from_service("tech", 101_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("suppressed", "out_of_service"));
        let t = a.return_to_service("tech", 102_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("out_of_service", "suppressed"));
        assert_eq!(
            a.set_suppressed(false, 103_000).unwrap().unwrap().to,
            "normal"
        );
    }

    #[test]
    fn out_of_service_and_return() {
        let mut a = plain();
        fire(&mut a, Condition::Active, 0);
        let t = a.remove_from_service("tech", 1_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("active_unacked", "out_of_service"));
        assert_eq!(t.cause, Cause::OutOfService);
        assert!(a.is_out_of_service() && !a.is_shown());
        assert_eq!(
            a.remove_from_service("tech", 1_500),
            Err(CommandError::AlreadyOutOfService)
        );
        assert_eq!(
            a.reset("op", 1_600),
            Err(CommandError::Hidden {
                state: "out_of_service"
            })
        );
        a.condition(Condition::Clear, 2_000);
        a.condition(Condition::Active, 3_000);
        let t = a.return_to_service("tech", 4_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("out_of_service", "active_unacked"));
        assert_eq!(t.cause, Cause::ReturnToService);
        assert_eq!(
            a.return_to_service("tech", 5_000),
            Err(CommandError::NotOutOfService)
        );
    }

    #[test]
    fn on_delay_filters_short_flickers() {
        let mut a = Alarm::new(settings(10_000, 0, false));
        // Active for 9 s at a time, interrupted by a clear sample: never activates.
        for cycle in 0..5 {
            let start = cycle * 10_000;
            for t in (start..start + 9_500).step_by(500) {
                assert_eq!(a.condition(Condition::Active, t), None);
                assert_eq!(a.tick(t + 100), None);
            }
            assert_eq!(a.condition(Condition::Clear, start + 9_500), None);
        }
        assert!(!a.is_active());
        assert_eq!(a.activations(), 0);
    }

    #[test]
    fn on_delay_activates_after_holding() {
        let mut a = Alarm::new(settings(10_000, 0, false));
        assert_eq!(a.condition(Condition::Active, 1_000), None);
        assert_eq!(a.condition(Condition::Active, 6_000), None);
        assert_eq!(a.tick(10_999), None);
        // No new sample needed: tick fires the due on-delay.
        let t = a.tick(11_000).unwrap();
        assert_eq!(labels(&t), ("normal", "active_unacked"));
        assert_eq!(a.active_since(), Some(11_000));
    }

    #[test]
    fn on_delay_fires_on_sample_at_deadline() {
        let mut a = Alarm::new(settings(10_000, 0, false));
        a.condition(Condition::Active, 0);
        assert!(a.condition(Condition::Active, 10_000).is_some());
    }

    #[test]
    fn off_delay_holds_alarm_until_clear_long_enough() {
        let mut a = Alarm::new(settings(0, 5_000, false));
        fire(&mut a, Condition::Active, 0);
        assert_eq!(a.condition(Condition::Clear, 1_000), None);
        assert_eq!(a.condition(Condition::Clear, 4_000), None);
        // Active again inside the off-delay: stays active, the pending clear is dropped.
        assert_eq!(a.condition(Condition::Active, 5_000), None);
        assert_eq!(a.condition(Condition::Clear, 6_000), None);
        assert_eq!(a.tick(10_999), None);
        assert!(a.is_active());
        let t = a.tick(11_000).unwrap();
        assert_eq!(labels(&t), ("active_unacked", "returned_unacked"));
    }

    #[test]
    fn unknown_keeps_state_and_restarts_delays() {
        let mut a = Alarm::new(settings(10_000, 10_000, false));
        a.condition(Condition::Active, 0);
        assert_eq!(a.condition(Condition::Unknown, 8_000), None);
        assert_eq!(a.condition(Condition::Active, 9_000), None);
        // The on-delay restarted at 9 s, so 10 s is not enough.
        assert_eq!(a.tick(12_000), None);
        assert!(!a.is_active());
        let t = a.tick(19_000).unwrap();
        assert_eq!(t.to, "active_unacked");
        // Unknown does not clear an active alarm and restarts the off-delay.
        a.condition(Condition::Clear, 20_000);
        assert_eq!(a.condition(Condition::Unknown, 29_000), None);
        assert_eq!(a.tick(40_000), None);
        assert!(a.is_active());
        assert_eq!(a.state(), State::ActiveUnacked);
        a.condition(Condition::Clear, 41_000);
        assert_eq!(a.tick(50_999), None);
        assert_eq!(a.tick(51_000).unwrap().to, "returned_unacked");
    }

    #[test]
    fn negative_delays_count_as_zero() {
        let mut a = Alarm::new(settings(-5, -5, false));
        assert!(a.condition(Condition::Active, 0).is_some());
        assert!(a.condition(Condition::Clear, 0).is_some());
    }

    #[test]
    fn chattering_detected_and_episodes_counted() {
        let mut a = plain();
        let cycle = |a: &mut Alarm, t: Ts| {
            a.condition(Condition::Active, t);
            a.condition(Condition::Clear, t + 1_000);
        };
        cycle(&mut a, 0);
        cycle(&mut a, 20_000);
        assert!(!a.is_chattering(21_000));
        cycle(&mut a, 40_000);
        assert!(a.is_chattering(41_000));
        assert_eq!(a.chattering_episodes(), 1);
        // A fourth activation inside the window is the same episode.
        cycle(&mut a, 50_000);
        assert_eq!(a.chattering_episodes(), 1);
        assert!(a.is_chattering(79_999));
        assert!(
            !a.is_chattering(80_000),
            "the activation at 20 s left the window"
        );
        // Quiet for a while, then three more: a new episode.
        cycle(&mut a, 200_000);
        cycle(&mut a, 210_000);
        assert_eq!(a.chattering_episodes(), 1);
        cycle(&mut a, 220_000);
        assert_eq!(a.chattering_episodes(), 2);
        assert_eq!(a.activations(), 7);
    }

    /// Saved, written as JSON, read back and restored: the same alarm, whatever it went through.
    fn round_trip(a: &Alarm) -> Alarm {
        let json = serde_json::to_string(&a.save()).unwrap();
        let saved: SavedAlarm = serde_json::from_str(&json).unwrap();
        Alarm::restore(*a.settings(), saved)
    }

    fn same(a: &Alarm, b: &Alarm) {
        assert_eq!(a.save(), b.save());
        assert_eq!(a.published_state(), b.published_state());
        assert_eq!(a.is_acked(), b.is_acked());
    }

    #[test]
    fn every_state_survives_save_and_restore() {
        let mut unacked = plain();
        fire(&mut unacked, Condition::Active, 1_000);
        let mut acked = unacked.clone();
        acked.ack("shift-a", None, 2_000).unwrap();
        let mut returned = unacked.clone();
        fire(&mut returned, Condition::Clear, 3_000);
        let mut latched = Alarm::new(settings(0, 0, true));
        fire(&mut latched, Condition::Active, 1_000);
        latched.ack("shift-b", None, 2_000).unwrap();
        fire(&mut latched, Condition::Clear, 3_000);
        let mut shelved = unacked.clone();
        shelved.shelve(7_201_000, "shift-c", 4_000).unwrap();
        let mut oos = unacked.clone();
        oos.remove_from_service("tech", 5_000).unwrap();
        for (name, a) in [
            ("unacked", &unacked),
            ("acked", &acked),
            ("returned", &returned),
            ("latched", &latched),
            ("shelved", &shelved),
            ("oos", &oos),
        ] {
            let b = round_trip(a);
            same(a, &b);
            assert!(!b.is_pristine(), "{name}");
        }
        assert_eq!(round_trip(&acked).acked_by(), Some("shift-a"));
        assert_eq!(round_trip(&shelved).shelved_until(), Some(7_201_000));
        // What was restored acts like the original: the latched alarm resets to NORM.
        let t = round_trip(&latched).reset("op", 6_000).unwrap().unwrap();
        assert_eq!(labels(&t), ("latched", "normal"));
        // A shelve that ended while the agent was down expires at the first tick.
        let t = round_trip(&shelved).tick(7_300_000).unwrap();
        assert_eq!((t.to, t.cause), ("active_unacked", Cause::ShelveExpired));
        assert!(plain().is_pristine());
    }

    #[test]
    fn a_latched_alarm_whose_rule_no_longer_latches_is_released() {
        let mut a = Alarm::new(settings(0, 0, true));
        fire(&mut a, Condition::Active, 0);
        fire(&mut a, Condition::Clear, 1_000);
        let b = Alarm::restore(settings(0, 0, false), a.save());
        assert_eq!(b.state(), State::ReturnedUnacked);
        a.ack("op", None, 2_000).unwrap();
        let b = Alarm::restore(settings(0, 0, false), a.save());
        assert_eq!((b.state(), b.acked_by()), (State::Normal, None));
        // A newer release's file with fields this one does not know, or an older one missing
        // some, still reads.
        let saved: SavedAlarm =
            serde_json::from_str(r#"{"state":"active_acked","acked_by":"x","future":1}"#).unwrap();
        let b = Alarm::restore(settings(0, 0, false), saved);
        assert_eq!(
            (b.published_state(), b.acked_by()),
            ("active_acked", Some("x"))
        );
        assert!(b.is_active());
    }

    #[test]
    fn labels_are_stable() {
        assert_eq!(State::Normal.label(), "normal");
        assert_eq!(State::ActiveUnacked.label(), "active_unacked");
        assert_eq!(State::ActiveAcked.label(), "active_acked");
        assert_eq!(State::ReturnedUnacked.label(), "returned_unacked");
        assert_eq!(State::Latched.label(), "latched");
        assert_eq!(Flag::Shelved.label(), "shelved");
        assert_eq!(Flag::Suppressed.label(), "suppressed");
        assert_eq!(Flag::OutOfService.label(), "out_of_service");
        assert_eq!(Cause::ShelveExpired.as_str(), "shelve_expired");
        assert_eq!(Cause::ReturnToService.as_str(), "return_to_service");
        let json = serde_json::to_string(&Cause::ShelveExpired).unwrap();
        assert_eq!(json, "\"shelve_expired\"");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Cond(Condition),
        Tick,
        Ack,
        Shelve(i64),
        Unshelve,
        Reset,
        OutOfService,
        ReturnToService,
        Suppress(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![
                Just(Condition::Active),
                Just(Condition::Clear),
                Just(Condition::Unknown)
            ]
            .prop_map(Op::Cond),
            2 => Just(Op::Tick),
            1 => Just(Op::Ack),
            1 => (-1_000i64..20_000).prop_map(Op::Shelve),
            1 => Just(Op::Unshelve),
            1 => Just(Op::Reset),
            1 => Just(Op::OutOfService),
            1 => Just(Op::ReturnToService),
            1 => any::<bool>().prop_map(Op::Suppress),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_active_before_on_delay_and_transitions_are_consistent(
            on_delay in 0i64..5_000,
            off_delay in 0i64..5_000,
            latching in any::<bool>(),
            steps in prop::collection::vec((0i64..2_000, op()), 1..120),
        ) {
            let mut alarm = Alarm::new(settings(on_delay, off_delay, latching));
            let mut now: Ts = 1_000_000;
            // Start of the current uninterrupted run of Active samples.
            let mut active_run_since: Option<Ts> = None;
            for (dt, op) in steps {
                now += dt;
                let was_active = alarm.is_active();
                let before = alarm.published_state();
                let result = match op {
                    Op::Cond(c) => {
                        match c {
                            Condition::Active => {
                                active_run_since.get_or_insert(now);
                            }
                            Condition::Clear | Condition::Unknown => active_run_since = None,
                        }
                        Ok(alarm.condition(c, now))
                    }
                    Op::Tick => Ok(alarm.tick(now)),
                    Op::Ack => alarm.ack("op", None, now),
                    Op::Shelve(d) => alarm.shelve(now + d, "op", now),
                    Op::Unshelve => alarm.unshelve("op", now),
                    Op::Reset => alarm.reset("op", now),
                    Op::OutOfService => alarm.remove_from_service("op", now),
                    Op::ReturnToService => alarm.return_to_service("op", now),
                    Op::Suppress(s) => alarm.set_suppressed(s, now),
                };
                if !was_active && alarm.is_active() {
                    let since = active_run_since;
                    prop_assert!(since.is_some(), "activated without an Active sample");
                    prop_assert!(now - since.unwrap_or(now) >= on_delay,
                        "activated at {} but the Active run started at {:?}", now, since);
                    prop_assert_eq!(alarm.active_since(), Some(now));
                }
                match result {
                    Ok(Some(t)) => {
                        prop_assert_eq!(t.from, before);
                        prop_assert_eq!(t.to, alarm.published_state());
                        prop_assert_eq!(t.at, now);
                    }
                    Ok(None) | Err(_) => prop_assert_eq!(before, alarm.published_state()),
                }
                prop_assert_eq!(alarm.is_shown(),
                    alarm.flag().is_none() && alarm.state() != State::Normal);
                if alarm.flag().is_none() {
                    // Visible active/inactive states agree with the debounced condition.
                    match alarm.state() {
                        State::ActiveUnacked | State::ActiveAcked => prop_assert!(alarm.is_active()),
                        State::Normal | State::ReturnedUnacked | State::Latched => {
                            prop_assert!(!alarm.is_active())
                        }
                    }
                    prop_assert!(latching || alarm.state() != State::Latched);
                }
            }
        }
    }
}
