//! Alarm flood detection per area and ISA-18.2 / EEMUA 191 KPI counters.
//!
//! Feed both with annunciations only (`Transition::is_annunciation`), not with silent
//! activations of hidden alarms.
//!
//! Held-back alarms: the detector never stores the caller's alarms. For a `Low` activation during
//! a flood it returns `FloodDecision::Hold(HeldId)`; the caller keeps its item in a map keyed by
//! that id and, when `FloodEvent::Ended` lists the ids, releases them in order (checking that each
//! alarm is still shown, since it may have cleared or been acknowledged meanwhile).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use super::model::{Priority, Ts};

/// Window for the KPI activation rate (ISA-18.2 counts alarms per 10 minutes).
pub const RATE_WINDOW_MS: i64 = 10 * 60_000;
/// An alarm active continuously for longer than this is stale.
pub const STALE_AFTER_MS: i64 = 24 * 60 * 60_000;
/// How many bad actors a snapshot lists.
pub const BAD_ACTORS: usize = 10;

/// Flood thresholds. Defaults: a flood starts at more than 10 activations in 10 minutes and
/// ends when fewer than 5 happened in the last 10 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodConfig {
    pub window_ms: i64,
    /// A flood starts when the count in the window exceeds this.
    pub start_above: usize,
    /// A flood ends when the count in the window drops below this.
    pub end_below: usize,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            window_ms: RATE_WINDOW_MS,
            start_above: 10,
            end_below: 5,
        }
    }
}

/// Identifies one held-back activation; unique per detector, increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct HeldId(pub u64);

/// What to do with one activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodDecision {
    Publish,
    /// Keep it until the area's flood ends (see the module docs).
    Hold(HeldId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FloodEvent {
    /// Publish one summary alarm for the area. `count` = activations in the window.
    Started { area: String, at: Ts, count: usize },
    /// Clear the summary alarm, then release `held` (in activation order).
    Ended {
        area: String,
        at: Ts,
        started_at: Ts,
        held: Vec<HeldId>,
    },
}

#[derive(Debug, Clone)]
struct Flood {
    started_at: Ts,
    held: Vec<HeldId>,
}

#[derive(Debug, Clone, Default)]
struct AreaWindow {
    recent: VecDeque<Ts>,
    flood: Option<Flood>,
}

/// Per-area flood detector. Call `on_activation` for each annunciation and `tick` periodically
/// (a flood ends only with time passing); `tick` also returns the `Started` events.
#[derive(Debug, Clone, Default)]
pub struct FloodDetector {
    config: FloodConfig,
    areas: BTreeMap<String, AreaWindow>,
    next_held: u64,
    events: Vec<FloodEvent>,
}

impl FloodDetector {
    pub fn new(config: FloodConfig) -> Self {
        FloodDetector {
            config,
            ..FloodDetector::default()
        }
    }

    /// Count one activation. The activation that starts a flood is already subject to it.
    pub fn on_activation(&mut self, area: &str, priority: Priority, now: Ts) -> FloodDecision {
        let config = self.config;
        let window = self.areas.entry(area.to_string()).or_default();
        prune(&mut window.recent, now, config.window_ms);
        window.recent.push_back(now);
        if window.flood.is_none() && window.recent.len() > config.start_above {
            window.flood = Some(Flood {
                started_at: now,
                held: Vec::new(),
            });
            self.events.push(FloodEvent::Started {
                area: area.to_string(),
                at: now,
                count: window.recent.len(),
            });
        }
        match &mut window.flood {
            Some(flood) if priority == Priority::Low => {
                let id = HeldId(self.next_held);
                self.next_held += 1;
                flood.held.push(id);
                FloodDecision::Hold(id)
            }
            _ => FloodDecision::Publish,
        }
    }

    /// Floods started since the last call, then floods that end at `now`.
    pub fn tick(&mut self, now: Ts) -> Vec<FloodEvent> {
        let mut events = std::mem::take(&mut self.events);
        let config = self.config;
        for (area, window) in &mut self.areas {
            prune(&mut window.recent, now, config.window_ms);
            if window.flood.is_some() && window.recent.len() < config.end_below {
                if let Some(flood) = window.flood.take() {
                    events.push(FloodEvent::Ended {
                        area: area.clone(),
                        at: now,
                        started_at: flood.started_at,
                        held: flood.held,
                    });
                }
            }
        }
        // Forget quiet areas so the map stays bounded by the areas currently alarming.
        self.areas
            .retain(|_, window| window.flood.is_some() || !window.recent.is_empty());
        events
    }

    #[cfg(test)]
    pub fn is_flooding(&self, area: &str) -> bool {
        self.areas
            .get(area)
            .is_some_and(|window| window.flood.is_some())
    }

    #[cfg(test)]
    /// Areas in flood, sorted.
    pub fn flooding_areas(&self) -> Vec<&str> {
        self.areas
            .iter()
            .filter(|(_, window)| window.flood.is_some())
            .map(|(area, _)| area.as_str())
            .collect()
    }

    #[cfg(test)]
    /// Activations currently held back across all areas.
    pub fn held_count(&self) -> usize {
        self.areas
            .values()
            .filter_map(|window| window.flood.as_ref())
            .map(|flood| flood.held.len())
            .sum()
    }
}

/// Drop timestamps that fell out of the window `(now - window_ms, now]`.
fn prune(recent: &mut VecDeque<Ts>, now: Ts, window_ms: i64) {
    let window_start = now.saturating_sub(window_ms);
    while recent.front().is_some_and(|&t| t <= window_start) {
        recent.pop_front();
    }
}

/// Activation counts by priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PriorityCounts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
}

impl PriorityCounts {
    fn bump(&mut self, priority: Priority) {
        match priority {
            Priority::Critical => self.critical += 1,
            Priority::High => self.high += 1,
            Priority::Medium => self.medium += 1,
            Priority::Low => self.low += 1,
        }
    }
}

/// One of the most frequent alarms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadActor {
    pub id: String,
    pub activations: u64,
}

/// KPI values at one instant, ready to publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KpiSnapshot {
    pub at: Ts,
    pub activations_total: u64,
    pub activations_by_priority: PriorityCounts,
    /// Activations in the last 10 minutes.
    pub activations_last_10min: usize,
    /// Highest count ever seen in any 10-minute window.
    pub activations_10min_peak: usize,
    /// Alarms active continuously for more than 24 h.
    pub stale_alarms: usize,
    pub chattering_episodes: u64,
    pub floods: u64,
    pub in_flood: bool,
    /// Time during which at least one area was in flood (overlaps counted once).
    pub flood_time_ms: i64,
    /// Top alarms by activations, most frequent first (ties by id).
    pub bad_actors: Vec<BadActor>,
    /// Share of all activations from `bad_actors` (0 when there are none).
    pub bad_actor_share: f64,
}

/// Running KPI counters.
#[derive(Debug, Clone, Default)]
pub struct AlarmKpis {
    activations_total: u64,
    by_priority: PriorityCounts,
    recent: VecDeque<Ts>,
    peak: usize,
    chattering_episodes: u64,
    floods: u64,
    flooding_areas: BTreeSet<String>,
    flood_union_started: Option<Ts>,
    flood_time_ms: i64,
    by_source: HashMap<String, u64>,
}

impl AlarmKpis {
    pub fn new() -> Self {
        AlarmKpis::default()
    }

    /// Count one annunciation of alarm `source_id` (e.g. "pot117/anode_effect").
    pub fn on_activation(&mut self, source_id: &str, priority: Priority, now: Ts) {
        self.activations_total += 1;
        self.by_priority.bump(priority);
        prune(&mut self.recent, now, RATE_WINDOW_MS);
        self.recent.push_back(now);
        self.peak = self.peak.max(self.recent.len());
        *self.by_source.entry(source_id.to_string()).or_insert(0) += 1;
    }

    /// Count one chattering episode (when `Alarm::chattering_episodes` increases).
    pub fn on_chattering_episode(&mut self) {
        self.chattering_episodes += 1;
    }

    /// Feed every event returned by `FloodDetector::tick`.
    pub fn on_flood_event(&mut self, event: &FloodEvent) {
        match event {
            FloodEvent::Started { area, at, .. } => {
                self.floods += 1;
                if self.flooding_areas.is_empty() {
                    self.flood_union_started = Some(*at);
                }
                self.flooding_areas.insert(area.clone());
            }
            FloodEvent::Ended { area, at, .. } => {
                if self.flooding_areas.remove(area) && self.flooding_areas.is_empty() {
                    if let Some(started) = self.flood_union_started.take() {
                        self.flood_time_ms = self
                            .flood_time_ms
                            .saturating_add(at.saturating_sub(started).max(0));
                    }
                }
            }
        }
    }

    /// KPIs at `now`; `active_since` lists `Alarm::active_since` of the currently active alarms.
    pub fn snapshot(&self, now: Ts, active_since: impl IntoIterator<Item = Ts>) -> KpiSnapshot {
        let window_start = now.saturating_sub(RATE_WINDOW_MS);
        let activations_last_10min = self
            .recent
            .iter()
            .filter(|&&t| t > window_start && t <= now)
            .count();
        let stale_alarms = active_since
            .into_iter()
            .filter(|&since| now.saturating_sub(since) > STALE_AFTER_MS)
            .count();
        let ongoing_flood = self
            .flood_union_started
            .map_or(0, |started| now.saturating_sub(started).max(0));

        let mut ranked: Vec<(&String, &u64)> = self.by_source.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let bad_actors: Vec<BadActor> = ranked
            .into_iter()
            .take(BAD_ACTORS)
            .map(|(id, &activations)| BadActor {
                id: id.clone(),
                activations,
            })
            .collect();
        let from_bad_actors: u64 = bad_actors.iter().map(|actor| actor.activations).sum();
        let bad_actor_share = if self.activations_total == 0 {
            0.0
        } else {
            from_bad_actors as f64 / self.activations_total as f64
        };

        KpiSnapshot {
            at: now,
            activations_total: self.activations_total,
            activations_by_priority: self.by_priority,
            activations_last_10min,
            activations_10min_peak: self.peak,
            stale_alarms,
            chattering_episodes: self.chattering_episodes,
            floods: self.floods,
            in_flood: !self.flooding_areas.is_empty(),
            flood_time_ms: self.flood_time_ms.saturating_add(ongoing_flood),
            bad_actors,
            bad_actor_share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn held(decision: FloodDecision) -> HeldId {
        match decision {
            FloodDecision::Hold(id) => id,
            FloodDecision::Publish => panic!("expected Hold"),
        }
    }

    proptest::proptest! {
        #[test]
        fn detector_never_panics_and_releases_every_held_id(
            steps in proptest::collection::vec((-5_000i64..120_000, 0usize..3, 0usize..4), 1..300),
        ) {
            let mut d = FloodDetector::new(FloodConfig::default());
            let mut now: Ts = 0;
            let mut held = Vec::new();
            let mut released = Vec::new();
            for (dt, area, priority) in steps {
                // Time may jump backwards a little (clock steps); nothing may panic.
                now = now.saturating_add(dt);
                let area = ["a", "b", "c"][area];
                if let FloodDecision::Hold(id) = d.on_activation(area, Priority::ALL[priority], now) {
                    proptest::prop_assert_eq!(priority, 3, "only low priority is held");
                    held.push(id);
                }
                for event in d.tick(now) {
                    if let FloodEvent::Ended { held, .. } = event {
                        released.extend(held);
                    }
                }
            }
            for event in d.tick(now.saturating_add(RATE_WINDOW_MS + 1)) {
                if let FloodEvent::Ended { held, .. } = event {
                    released.extend(held);
                }
            }
            released.sort();
            proptest::prop_assert_eq!(released, held);
            proptest::prop_assert_eq!(d.held_count(), 0);
        }
    }

    #[test]
    fn ten_activations_are_not_a_flood() {
        let mut d = FloodDetector::new(FloodConfig::default());
        for i in 0..10 {
            assert_eq!(
                d.on_activation("potroom2", Priority::Low, i * 1_000),
                FloodDecision::Publish
            );
        }
        assert!(d.tick(10_000).is_empty());
        assert!(!d.is_flooding("potroom2"));
    }

    #[test]
    fn flood_starts_holds_low_and_ends_with_held_ids() {
        let mut d = FloodDetector::new(FloodConfig::default());
        for i in 0..10 {
            d.on_activation("potroom2", Priority::Medium, i * 1_000);
        }
        // The 11th activation inside 10 minutes starts the flood and is itself held (low).
        let first = held(d.on_activation("potroom2", Priority::Low, 10_000));
        assert!(d.is_flooding("potroom2"));
        assert_eq!(
            d.on_activation("potroom2", Priority::High, 11_000),
            FloodDecision::Publish
        );
        let second = held(d.on_activation("potroom2", Priority::Low, 12_000));
        assert!(second > first);
        // Another area is unaffected.
        assert_eq!(
            d.on_activation("casthouse", Priority::Low, 12_500),
            FloodDecision::Publish
        );
        assert_eq!(d.held_count(), 2);
        assert_eq!(
            d.tick(13_000),
            vec![FloodEvent::Started {
                area: "potroom2".into(),
                at: 10_000,
                count: 11
            }]
        );
        assert_eq!(d.flooding_areas(), vec!["potroom2"]);
        // 13 activations between 0 s and 12 s. At 10 min + 8 s, the ones up to 8 s are out of
        // the window: 4 left (9, 10, 11, 12 s) -> fewer than 5, the flood ends.
        assert!(d.tick(10 * MIN + 7_000).is_empty(), "5 left in the window");
        assert_eq!(
            d.tick(10 * MIN + 8_000),
            vec![FloodEvent::Ended {
                area: "potroom2".into(),
                at: 10 * MIN + 8_000,
                started_at: 10_000,
                held: vec![first, second],
            }]
        );
        assert!(!d.is_flooding("potroom2"));
        assert_eq!(d.held_count(), 0);
        assert_eq!(
            d.on_activation("potroom2", Priority::Low, 10 * MIN + 9_000),
            FloodDecision::Publish
        );
    }

    #[test]
    fn thresholds_are_configurable() {
        let mut d = FloodDetector::new(FloodConfig {
            window_ms: MIN,
            start_above: 2,
            end_below: 1,
        });
        d.on_activation("a", Priority::Low, 0);
        d.on_activation("a", Priority::Low, 1_000);
        held(d.on_activation("a", Priority::Low, 2_000));
        assert_eq!(d.tick(2_000).len(), 1);
        assert!(d.tick(MIN + 1_999).is_empty());
        let events = d.tick(MIN + 2_000);
        assert!(matches!(&events[..], [FloodEvent::Ended { held, .. }] if held.len() == 1));
    }

    #[test]
    fn flood_event_serializes_with_tag() {
        let json = serde_json::to_string(&FloodEvent::Started {
            area: "potroom2".into(),
            at: 5,
            count: 11,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"event":"started","area":"potroom2","at":5,"count":11}"#
        );
    }

    #[test]
    fn kpis_count_rates_priorities_and_bad_actors() {
        let mut k = AlarmKpis::new();
        for i in 0..12 {
            let id = if i < 6 { "pot117/ae" } else { "pot118/ae" };
            let priority = if i % 3 == 0 {
                Priority::High
            } else {
                Priority::Low
            };
            k.on_activation(id, priority, i * MIN);
        }
        for i in 0..3 {
            k.on_activation(&format!("kiln{i}/temp"), Priority::Critical, 12 * MIN);
        }
        let s = k.snapshot(12 * MIN, []);
        assert_eq!(s.activations_total, 15);
        assert_eq!(
            s.activations_by_priority,
            PriorityCounts {
                critical: 3,
                high: 4,
                medium: 0,
                low: 8
            }
        );
        // Window (2 min, 12 min]: activations at 3..=11 min plus three at 12 min.
        assert_eq!(s.activations_last_10min, 12);
        assert_eq!(s.activations_10min_peak, 12);
        assert_eq!(k.snapshot(30 * MIN, []).activations_last_10min, 0);
        assert_eq!(k.snapshot(30 * MIN, []).activations_10min_peak, 12);
        assert_eq!(
            s.bad_actors[..2],
            [
                BadActor {
                    id: "pot117/ae".into(),
                    activations: 6
                },
                BadActor {
                    id: "pot118/ae".into(),
                    activations: 6
                }
            ]
        );
        assert_eq!(s.bad_actors[2].id, "kiln0/temp");
        assert_eq!(s.bad_actors.len(), 5);
        assert!((s.bad_actor_share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn bad_actors_limited_to_ten() {
        let mut k = AlarmKpis::new();
        for i in 0..20 {
            for _ in 0..=i {
                k.on_activation(&format!("a{i:02}"), Priority::Low, 0);
            }
        }
        let s = k.snapshot(0, []);
        assert_eq!(s.bad_actors.len(), 10);
        assert_eq!(s.bad_actors[0].id, "a19");
        assert_eq!(s.bad_actors[9].id, "a10");
        let top: u64 = (11..=20).sum();
        let all: u64 = (1..=20).sum();
        assert!((s.bad_actor_share - top as f64 / all as f64).abs() < 1e-9);
    }

    #[test]
    fn kpis_stale_chattering_and_flood_time() {
        let mut k = AlarmKpis::new();
        let day = 24 * 60 * MIN;
        let now = 3 * day;
        let s = k.snapshot(now, [now - day - 1, now - day, now - 5]);
        assert_eq!(s.stale_alarms, 1, "exactly 24 h is not yet stale");
        k.on_chattering_episode();
        k.on_chattering_episode();
        let started = |area: &str, at| FloodEvent::Started {
            area: area.into(),
            at,
            count: 11,
        };
        let ended = |area: &str, at| FloodEvent::Ended {
            area: area.into(),
            at,
            started_at: 0,
            held: vec![],
        };
        k.on_flood_event(&started("a", 0));
        k.on_flood_event(&started("b", 5 * MIN));
        k.on_flood_event(&ended("a", 10 * MIN));
        let s = k.snapshot(12 * MIN, []);
        assert!(s.in_flood);
        assert_eq!(s.flood_time_ms, 12 * MIN, "ongoing flood counts up to now");
        k.on_flood_event(&ended("b", 15 * MIN));
        k.on_flood_event(&started("a", 20 * MIN));
        k.on_flood_event(&ended("a", 21 * MIN));
        let s = k.snapshot(30 * MIN, []);
        assert!(!s.in_flood);
        assert_eq!(s.floods, 3);
        assert_eq!(s.flood_time_ms, 16 * MIN, "overlapping floods counted once");
        assert_eq!(s.chattering_episodes, 2);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["flood_time_ms"], 16 * MIN);
        assert_eq!(json["activations_by_priority"]["low"], 0);
    }
}
