//! The daily energy and emissions report (docs/REPORT.md): per cell and per area, for each day
//! of the plant's time zone, anode effects (count, frequency, duration, minutes), PFC emissions
//! by the slope method, mean voltage and energy per tonne against the national benchmark and
//! baseline, and how much of the day the data covers.
//!
//! Pure: [`Reports`] is fed samples and alarm transitions with their times and emits a
//! [`DayReport`] per device and one for the area when a day ends. The live agent
//! (`io/report.rs`) and `alsentry replay --report` feed the same accumulator, so both compute
//! the same figures from the same samples. The partial day is [`Reports::save`]d and
//! [`Reports::restore`]d across restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::engine::{AlarmEvent, SampleBatch};
use super::model::{Quality, Ts};
use super::payload::{
    energy_kwh_t, AH_PER_KG, ENERGY_BASELINE_KWH_T, ENERGY_BENCHMARK_KWH_T, KPI_CURRENT,
    KPI_VOLTAGE,
};
use super::time::rfc3339_ms;

/// Version of the payload contract.
pub const REPORT_SCHEMA: &str = "alsentry/report/1";
/// How a report's topic ends (`{topic_root}/{site}/{area}/{device}/report/daily`).
pub const REPORT_LEAF: &str = "/report/daily";
/// The device name of the area's report (as in `{area}/_area/report/daily`).
pub const AREA: &str = "_area";
/// The controller's anode-effect flag, when a cell has one (the cell template's name).
pub const AE_TAG: &str = "ae_active";

const DAY_MS: f64 = 86_400_000.0;

/// `[report]` (docs/REPORT.md). The defaults are the sources' figures, marked there.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Off: no report is kept or published (`enabled`, default true).
    pub enabled: bool,
    /// The rule whose alarm's active span is an anode effect when the cell has no `ae_active`
    /// tag (`ae_rule`, default "anode_effect").
    pub ae_rule: String,
    /// Slope coefficients, (kg PFC / t Al) / (AE-min / pot-day).
    pub slope_cf4: f64,
    pub slope_c2f6: f64,
    /// 100-year global warming potentials, t CO2e per t.
    pub gwp_cf4: f64,
    pub gwp_c2f6: f64,
    /// A good voltage sample covers the time until the next one, at most this long.
    pub coverage_gap_ms: i64,
    /// A voltage reading above this (or at or below 0 V) is a sensor fault, not a cell voltage:
    /// left out of the mean and the coverage, and counted (`implausible_samples`).
    pub voltage_max: f64,
    /// From `[summary]`: current efficiency and rectifier efficiency (fractions).
    pub current_efficiency: f64,
    pub rectifier_efficiency: f64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            enabled: true,
            ae_rule: "anode_effect".to_string(),
            slope_cf4: 0.143,
            slope_c2f6: 0.0173,
            gwp_cf4: 7_390.0,
            gwp_c2f6: 12_200.0,
            coverage_gap_ms: 60_000,
            voltage_max: 100.0,
            current_efficiency: 0.93,
            rectifier_efficiency: 0.98,
        }
    }
}

/// One day of the plant's time zone: its date and its bounds in UTC milliseconds (23 or 25
/// hours on a day the clocks change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    /// `YYYY-MM-DD`, local.
    pub date: String,
    pub start: Ts,
    pub end: Ts,
}

/// The local day that holds `ts`.
pub fn day_of(ts: Ts, tz: &TimeZone) -> Day {
    let at = Timestamp::from_millisecond(ts).unwrap_or(Timestamp::UNIX_EPOCH);
    let date = at.to_zoned(tz.clone()).date();
    let start = start_of(date, tz).unwrap_or(ts);
    let end = date
        .tomorrow()
        .ok()
        .and_then(|d| start_of(d, tz))
        .unwrap_or(start + DAY_MS as Ts);
    Day {
        date: date.to_string(),
        start,
        end,
    }
}

fn start_of(date: Date, tz: &TimeZone) -> Option<Ts> {
    date.to_zoned(tz.clone())
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

/// Anode effects of one source over the day. An effect counts, with its whole duration, in
/// the day it ends; one still going when the day ends is `open` there and counts in the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AeSpans {
    pub count: u64,
    pub total_ms: i64,
    pub max_ms: i64,
    /// Start of the effect in progress.
    pub open: Option<Ts>,
}

impl AeSpans {
    fn start(&mut self, at: Ts) {
        if self.open.is_none() {
            self.open = Some(at);
        }
    }

    fn end(&mut self, at: Ts) {
        if let Some(since) = self.open.take() {
            let d = (at - since).max(0);
            self.count += 1;
            self.total_ms += d;
            self.max_ms = self.max_ms.max(d);
        }
    }

    /// The next day starts with the effect in progress, if any.
    fn carry(&self) -> AeSpans {
        AeSpans {
            open: self.open,
            ..AeSpans::default()
        }
    }
}

/// One device's partial day: what is saved across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDay {
    /// Voltage samples, good ones, and the sum of the good values.
    pub v_samples: u64,
    pub v_good: u64,
    #[serde(with = "exact")]
    pub v_sum: f64,
    /// Good current samples and their sum (kA).
    pub i_good: u64,
    #[serde(with = "exact")]
    pub i_sum: f64,
    /// Time covered by good voltage samples.
    pub covered_ms: i64,
    /// The last good voltage sample's cover still running: (from, until).
    pub cover: Option<(Ts, Ts)>,
    /// Anode effects from the `ae_rule` alarm and from the `ae_active` tag.
    pub alarm_ae: AeSpans,
    pub tag_ae: AeSpans,
    /// Whether a good `ae_active` sample was seen this day (then it is the source).
    pub tag_seen: bool,
    /// Samples stamped before this day began, counted and left out.
    pub late: u64,
    /// Good-quality voltage readings outside (0, voltage_max], left out.
    pub implausible: u64,
}

impl DeviceDay {
    fn close_cover(&mut self, end: Ts) {
        if let Some((from, until)) = self.cover {
            self.covered_ms += (until.min(end) - from).max(0);
            self.cover = (until > end).then_some((end, until));
        }
    }

    fn next_day(&self) -> DeviceDay {
        DeviceDay {
            cover: self.cover,
            alarm_ae: self.alarm_ae.carry(),
            tag_ae: self.tag_ae.carry(),
            ..DeviceDay::default()
        }
    }
}

/// A sum saved as its bits: JSON text would round the last digit, and a restart must give
/// the same figures as a run without one.
mod exact {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// What is kept across restarts (versioned by the caller's file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SavedReports {
    pub day: Option<Day>,
    /// By device name, so that a device added or removed between runs finds its own.
    pub devices: BTreeMap<String, DeviceDay>,
}

/// A cell taking part: a device with a `voltage` tag.
#[derive(Debug, Clone)]
struct Cell {
    name: Arc<str>,
    voltage: u16,
    current: Option<u16>,
    ae_tag: Option<u16>,
}

/// The report accumulator over every cell of one agent (its area).
#[derive(Debug)]
pub struct Reports {
    opts: ReportOptions,
    tz: TimeZone,
    timezone: String,
    cells: Vec<Cell>,
    /// Device index in the spec → index in `cells`.
    by_device: Vec<Option<usize>>,
    day: Option<Day>,
    acc: Vec<DeviceDay>,
}

impl Reports {
    /// `devices`: in the spec's order, each with its tag names (raw tags first). `timezone` is
    /// an IANA name (validated by the configuration; UTC if unknown).
    pub fn new(
        devices: &[(Arc<str>, Vec<Arc<str>>)],
        opts: ReportOptions,
        timezone: &str,
    ) -> Reports {
        let mut cells = Vec::new();
        let mut by_device = vec![None; devices.len()];
        for (i, (name, tags)) in devices.iter().enumerate() {
            let find = |n: &str| tags.iter().position(|t| &**t == n).map(|p| p as u16);
            let Some(voltage) = find(KPI_VOLTAGE.0) else {
                continue;
            };
            by_device[i] = Some(cells.len());
            cells.push(Cell {
                name: name.clone(),
                voltage,
                current: find(KPI_CURRENT.0),
                ae_tag: find(AE_TAG),
            });
        }
        let acc = vec![DeviceDay::default(); cells.len()];
        Reports {
            opts,
            tz: TimeZone::get(timezone).unwrap_or(TimeZone::UTC),
            timezone: timezone.to_string(),
            cells,
            by_device,
            day: None,
            acc,
        }
    }

    /// Built from a compiled configuration.
    pub fn from_spec(spec: &super::spec::Spec, opts: ReportOptions, timezone: &str) -> Reports {
        let devices: Vec<(Arc<str>, Vec<Arc<str>>)> = spec
            .devices()
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.tags.tags.iter().map(|t| t.name.clone()).collect(),
                )
            })
            .collect();
        Reports::new(&devices, opts, timezone)
    }

    pub fn options(&self) -> &ReportOptions {
        &self.opts
    }

    /// Whether any device takes part (has a `voltage` tag).
    pub fn has_cells(&self) -> bool {
        !self.cells.is_empty()
    }

    /// Whether device `name` is a cell of this report.
    pub fn is_cell(&self, name: &str) -> bool {
        self.cells.iter().any(|c| &*c.name == name)
    }

    /// The day being accumulated.
    pub fn day(&self) -> Option<&Day> {
        self.day.as_ref()
    }

    /// Starts the first day at `ts` when none is open. Reports of the open day when `ts` is
    /// past it (a sample of the next day, or the clock passing midnight).
    fn roll(&mut self, ts: Ts, emitted: Ts, out: &mut Vec<DayReport>) {
        match &self.day {
            None => self.day = Some(day_of(ts, &self.tz)),
            Some(d) if ts >= d.end => {
                out.extend(self.close(emitted, false));
                self.day = Some(day_of(ts, &self.tz));
            }
            Some(_) => {}
        }
    }

    /// One sample (raw tag index as in [`SampleBatch`]), stamped `ts`. Returns the reports of
    /// a day that this sample shows to be over.
    pub fn sample(
        &mut self,
        device: u32,
        ts: Ts,
        tag: u16,
        value: f64,
        q: Quality,
    ) -> Vec<DayReport> {
        let mut out = Vec::new();
        let Some(ci) = self.by_device.get(device as usize).copied().flatten() else {
            return out;
        };
        self.roll(ts, ts, &mut out);
        let Some(day) = &self.day else { return out };
        let (start, gap) = (day.start, self.opts.coverage_gap_ms);
        let cell = &self.cells[ci];
        let acc = &mut self.acc[ci];
        if ts < start {
            acc.late += 1;
            return out;
        }
        let good = q.is_good() && value.is_finite();
        if tag == cell.voltage {
            acc.v_samples += 1;
            if let Some((from, until)) = acc.cover.take() {
                acc.covered_ms += (until.min(ts) - from).max(0);
            }
            let plausible = value > 0.0 && value <= self.opts.voltage_max;
            if good && !plausible {
                acc.implausible += 1;
            } else if good {
                acc.v_good += 1;
                acc.v_sum += value;
                acc.cover = Some((ts, ts + gap));
            }
        } else if Some(tag) == cell.current {
            if good {
                acc.i_good += 1;
                acc.i_sum += value;
            }
        } else if Some(tag) == cell.ae_tag && good {
            acc.tag_seen = true;
            if value >= 0.5 {
                acc.tag_ae.start(ts);
            } else {
                acc.tag_ae.end(ts);
            }
        }
        out
    }

    /// Every sample of one poll.
    pub fn batch(&mut self, b: &SampleBatch) -> Vec<DayReport> {
        let mut out = Vec::new();
        for &(tag, value, q) in &b.values {
            out.extend(self.sample(b.device, b.ts, tag, value, q));
        }
        out
    }

    /// An alarm transition: the `ae_rule` alarm's active span is an anode effect (from the
    /// moment it became active to the moment it stopped being active; acknowledgement,
    /// shelving and the like do not change it).
    pub fn event(&mut self, ev: &AlarmEvent) -> Vec<DayReport> {
        let mut out = Vec::new();
        if *ev.rule != *self.opts.ae_rule {
            return out;
        }
        let Some(ci) = self.cells.iter().position(|c| c.name == ev.device) else {
            return out;
        };
        self.roll(ev.transition.at, ev.transition.at, &mut out);
        let acc = &mut self.acc[ci];
        match ev.active_since {
            Some(since) => acc.alarm_ae.start(since),
            // `since` is when the alarm left its active state: the transition's own time, or
            // for a state restored at start, when it ended before the restart.
            None => acc.alarm_ae.end(ev.since.min(ev.transition.at)),
        }
        out
    }

    /// The clock says `now`: the open day's reports when it is over, so a day is reported at
    /// its end even when no sample comes (a link down at midnight).
    pub fn advance(&mut self, now: Ts) -> Vec<DayReport> {
        let mut out = Vec::new();
        if self.day.as_ref().is_some_and(|d| now >= d.end) {
            out.extend(self.close(now, false));
            self.day = Some(day_of(now, &self.tz));
        }
        out
    }

    /// The open day's reports now, marked partial, and nothing open any more (the end of a
    /// replay: the last day of data is usually not whole).
    pub fn finish(&mut self, now: Ts) -> Vec<DayReport> {
        if self.day.is_none() {
            return Vec::new();
        }
        let out = self.close(now, true);
        self.day = None;
        out
    }

    /// Reports for the open day, and the accumulators reset for the next one.
    fn close(&mut self, now: Ts, partial: bool) -> Vec<DayReport> {
        let Some(day) = self.day.clone() else {
            return Vec::new();
        };
        // A partial day ends at the last thing seen, not at midnight.
        let end = if partial {
            now.clamp(day.start, day.end)
        } else {
            day.end
        };
        let mut reports = Vec::with_capacity(self.cells.len() + 1);
        let mut area = AreaSums::default();
        for ci in 0..self.cells.len() {
            let mut acc = std::mem::take(&mut self.acc[ci]);
            acc.close_cover(end);
            let next = acc.next_day();
            let cell = &self.cells[ci];
            let r = self.device_report(&day, end, partial, now, cell, &acc);
            area.add(&r, &acc);
            reports.push(r);
            self.acc[ci] = next;
        }
        if !self.cells.is_empty() {
            reports.push(self.area_report(&day, end, partial, now, &area));
        }
        reports
    }

    fn base(&self, day: &Day, end: Ts, partial: bool, now: Ts, device: &str) -> DayReport {
        DayReport {
            schema: REPORT_SCHEMA,
            device: device.to_string(),
            day: day.date.clone(),
            timezone: self.timezone.clone(),
            from: day.start,
            to: end,
            hours: (end - day.start) as f64 / 3_600_000.0,
            partial,
            ts: now,
            pots: 1,
            pot_days: (end - day.start) as f64 / DAY_MS,
            anode_effects: AnodeEffects::default(),
            pfc: Pfc::default(),
            energy: Energy::default(),
            coverage: Coverage::default(),
        }
    }

    fn device_report(
        &self,
        day: &Day,
        end: Ts,
        partial: bool,
        now: Ts,
        cell: &Cell,
        acc: &DeviceDay,
    ) -> DayReport {
        let mut r = self.base(day, end, partial, now, &cell.name);
        let (ae, source) = if cell.ae_tag.is_some() && acc.tag_seen {
            (&acc.tag_ae, AeSource::AeActive)
        } else {
            (&acc.alarm_ae, AeSource::Alarm)
        };
        r.anode_effects = AnodeEffects::from_spans(ae, source, r.pot_days);
        let v_mean = (acc.v_good > 0).then(|| acc.v_sum / acc.v_good as f64);
        let i_mean = (acc.i_good > 0).then(|| acc.i_sum / acc.i_good as f64);
        r.energy = Energy::new(&self.opts, v_mean, i_mean);
        let production = i_mean.map(|i| production_t(i, self.opts.current_efficiency, r.hours));
        r.pfc = Pfc::new(&self.opts, r.anode_effects.minutes, r.pot_days, production);
        r.coverage = Coverage::new(acc, r.hours);
        r
    }

    fn area_report(&self, day: &Day, end: Ts, partial: bool, now: Ts, a: &AreaSums) -> DayReport {
        let mut r = self.base(day, end, partial, now, AREA);
        // Cells that sent nothing all day are not pot-days the agent saw.
        let pots = self.cells.len() as u64 - a.without_data;
        r.pots = pots;
        r.pot_days *= pots as f64;
        let source = match (a.by_tag, a.by_alarm) {
            (true, false) => AeSource::AeActive,
            (false, _) => AeSource::Alarm,
            (true, true) => AeSource::Mixed,
        };
        r.anode_effects = AnodeEffects::from_spans(&a.ae, source, r.pot_days);
        r.anode_effects.open = a.open;
        let v_mean = (a.day.v_good > 0).then(|| a.day.v_sum / a.day.v_good as f64);
        let i_mean = (a.i_cells > 0).then(|| a.i_mean_sum / a.i_cells as f64);
        r.energy = Energy::new(&self.opts, v_mean, i_mean);
        // The area emits what its cells emit: each cell's own AEM times its own production.
        r.pfc = Pfc::new(&self.opts, r.anode_effects.minutes, r.pot_days, None);
        if a.pfc_cells > 0 {
            r.pfc.production_t = Some(a.production_t);
            r.pfc.cf4_kg = Some(a.cf4_kg);
            r.pfc.c2f6_kg = Some(a.c2f6_kg);
            r.pfc.co2e_t = Some(a.co2e_t);
            r.pfc.cells_without_current = pots - a.pfc_cells;
        }
        let hours = r.hours * pots as f64;
        r.coverage = Coverage::new(&a.day, hours);
        r.coverage.cells_without_data = a.without_data;
        r
    }

    /// The partial day, to keep across a restart.
    pub fn save(&self) -> SavedReports {
        SavedReports {
            day: self.day.clone(),
            devices: self
                .cells
                .iter()
                .zip(&self.acc)
                .map(|(c, a)| (c.name.to_string(), a.clone()))
                .collect(),
        }
    }

    /// Takes up a saved partial day (devices matched by name). When that day is over by
    /// `now`, its reports come back at once: the agent was down at midnight.
    pub fn restore(&mut self, saved: SavedReports, now: Ts) -> Vec<DayReport> {
        let Some(day) = saved.day else {
            return Vec::new();
        };
        for (c, acc) in self.cells.iter().zip(self.acc.iter_mut()) {
            if let Some(d) = saved.devices.get(&*c.name) {
                *acc = d.clone();
            }
        }
        self.day = Some(day);
        self.advance(now)
    }
}

/// Aluminium produced by one cell: I × t × CE / (2,980 Ah/kg), in tonnes (8.053 × I(kA) × CE
/// kg per pot-day, docs/DOMAIN.md B).
pub fn production_t(current_ka: f64, ce: f64, hours: f64) -> f64 {
    current_ka * hours * ce / AH_PER_KG
}

#[derive(Debug, Default)]
struct AreaSums {
    ae: AeSpans,
    open: u64,
    by_tag: bool,
    by_alarm: bool,
    /// Samples, sums and coverage added over the cells.
    day: DeviceDay,
    i_mean_sum: f64,
    i_cells: u64,
    without_data: u64,
    pfc_cells: u64,
    production_t: f64,
    cf4_kg: f64,
    c2f6_kg: f64,
    co2e_t: f64,
}

impl AreaSums {
    fn add(&mut self, r: &DayReport, acc: &DeviceDay) {
        let ae = &r.anode_effects;
        if acc.v_samples == 0 && acc.implausible == 0 && ae.count == 0 && ae.open == 0 {
            self.without_data += 1;
            return;
        }
        self.ae.count += ae.count;
        self.ae.total_ms += (ae.minutes * 60_000.0).round() as i64;
        self.ae.max_ms = self
            .ae
            .max_ms
            .max((ae.max_duration_s * 1_000.0).round() as i64);
        self.open += ae.open;
        match ae.source {
            AeSource::AeActive => self.by_tag = true,
            _ => self.by_alarm = true,
        }
        let d = &mut self.day;
        d.v_samples += acc.v_samples;
        d.v_good += acc.v_good;
        d.v_sum += acc.v_sum;
        d.covered_ms += acc.covered_ms;
        d.late += acc.late;
        d.implausible += acc.implausible;
        if let Some(i) = r.energy.current_mean_ka {
            self.i_mean_sum += i;
            self.i_cells += 1;
        }
        if let (Some(p), Some(cf4), Some(c2f6), Some(co2e)) = (
            r.pfc.production_t,
            r.pfc.cf4_kg,
            r.pfc.c2f6_kg,
            r.pfc.co2e_t,
        ) {
            self.pfc_cells += 1;
            self.production_t += p;
            self.cf4_kg += cf4;
            self.c2f6_kg += c2f6;
            self.co2e_t += co2e;
        }
    }
}

/// Where the anode effects of a report come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AeSource {
    /// The `ae_rule` alarm's active span.
    #[default]
    Alarm,
    /// The controller's `ae_active` flag.
    AeActive,
    /// Area only: some cells by their flag, others by the alarm.
    Mixed,
}

impl AeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AeSource::Alarm => "alarm",
            AeSource::AeActive => "ae_active",
            AeSource::Mixed => "mixed",
        }
    }
}

/// A figure as published: null when it cannot be computed (no good sample, no current).
fn num(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AnodeEffects {
    /// Effects that ended this day.
    pub count: u64,
    /// count / pot-days.
    pub per_pot_day: f64,
    /// Summed duration, minutes (AE-minutes).
    pub minutes: f64,
    /// AE-minutes per pot-day (AEM of the slope method).
    pub minutes_per_pot_day: f64,
    pub mean_duration_s: Option<f64>,
    pub max_duration_s: f64,
    /// Effects still going at the end of the day (counted in the day they end).
    pub open: u64,
    pub source: AeSource,
}

impl AnodeEffects {
    fn from_spans(s: &AeSpans, source: AeSource, pot_days: f64) -> AnodeEffects {
        let minutes = s.total_ms as f64 / 60_000.0;
        let per = |x: f64| if pot_days > 0.0 { x / pot_days } else { 0.0 };
        AnodeEffects {
            count: s.count,
            per_pot_day: per(s.count as f64),
            minutes,
            minutes_per_pot_day: per(minutes),
            mean_duration_s: (s.count > 0).then(|| s.total_ms as f64 / 1_000.0 / s.count as f64),
            max_duration_s: s.max_ms as f64 / 1_000.0,
            open: u64::from(s.open.is_some()),
            source,
        }
    }
}

/// PFC emissions by the slope method: E = S × AEM × MP for CF4 and C2F6, CO2e = Σ E × GWP.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pfc {
    pub method: &'static str,
    pub slope_cf4: f64,
    pub slope_c2f6: f64,
    pub gwp_cf4: f64,
    pub gwp_c2f6: f64,
    /// Metal produced (MP), t; null without a good current sample.
    pub production_t: Option<f64>,
    pub cf4_kg: Option<f64>,
    pub c2f6_kg: Option<f64>,
    pub co2e_t: Option<f64>,
    /// Area only: cells left out of the PFC sums for want of current.
    pub cells_without_current: u64,
}

impl Pfc {
    fn new(o: &ReportOptions, ae_minutes: f64, pot_days: f64, production: Option<f64>) -> Pfc {
        let aem = if pot_days > 0.0 {
            ae_minutes / pot_days
        } else {
            0.0
        };
        let cf4 = production.map(|mp| o.slope_cf4 * aem * mp).and_then(num);
        let c2f6 = production.map(|mp| o.slope_c2f6 * aem * mp).and_then(num);
        Pfc {
            method: "slope",
            slope_cf4: o.slope_cf4,
            slope_c2f6: o.slope_c2f6,
            gwp_cf4: o.gwp_cf4,
            gwp_c2f6: o.gwp_c2f6,
            production_t: production.and_then(num),
            cf4_kg: cf4,
            c2f6_kg: c2f6,
            co2e_t: cf4
                .zip(c2f6)
                .map(|(a, b)| (a * o.gwp_cf4 + b * o.gwp_c2f6) / 1_000.0)
                .and_then(num),
            cells_without_current: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Energy {
    pub voltage_mean_v: Option<f64>,
    pub current_mean_ka: Option<f64>,
    pub current_efficiency: f64,
    pub rectifier_efficiency: f64,
    pub energy_dc_kwh_t: Option<f64>,
    pub energy_ac_kwh_t: Option<f64>,
    pub benchmark_kwh_t: f64,
    pub baseline_kwh_t: f64,
    pub vs_benchmark_pct: Option<f64>,
    pub vs_baseline_pct: Option<f64>,
}

impl Energy {
    fn new(o: &ReportOptions, v_mean: Option<f64>, i_mean: Option<f64>) -> Energy {
        let e = v_mean.map(|v| energy_kwh_t(v, o.current_efficiency, o.rectifier_efficiency));
        let ac = e.and_then(|(_, ac)| num(ac));
        Energy {
            voltage_mean_v: v_mean.and_then(num),
            current_mean_ka: i_mean.and_then(num),
            current_efficiency: o.current_efficiency,
            rectifier_efficiency: o.rectifier_efficiency,
            energy_dc_kwh_t: e.and_then(|(dc, _)| num(dc)),
            energy_ac_kwh_t: ac,
            benchmark_kwh_t: ENERGY_BENCHMARK_KWH_T,
            baseline_kwh_t: ENERGY_BASELINE_KWH_T,
            vs_benchmark_pct: ac.map(|a| (a / ENERGY_BENCHMARK_KWH_T - 1.0) * 100.0),
            vs_baseline_pct: ac.map(|a| (a / ENERGY_BASELINE_KWH_T - 1.0) * 100.0),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coverage {
    /// Voltage samples received, and good ones.
    pub samples: u64,
    pub good_samples: u64,
    /// good / received; null without any sample.
    pub good_ratio: Option<f64>,
    /// Hours of the day covered by good voltage samples, and their share of the day: below 1
    /// the day had gaps (link down, agent stopped) or bad readings.
    pub covered_h: f64,
    pub share: f64,
    /// Samples stamped before the day, not counted anywhere (docs/REPORT.md, late data).
    pub late_samples: u64,
    /// Good-quality voltage readings outside (0, `voltage_max`]: sensor faults, left out of
    /// the mean and the coverage.
    pub implausible_samples: u64,
    /// Area only: cells that sent nothing all day, left out of `pots`.
    pub cells_without_data: u64,
}

impl Coverage {
    fn new(d: &DeviceDay, hours: f64) -> Coverage {
        let covered_h = d.covered_ms as f64 / 3_600_000.0;
        Coverage {
            samples: d.v_samples,
            good_samples: d.v_good,
            good_ratio: (d.v_samples > 0).then(|| d.v_good as f64 / d.v_samples as f64),
            covered_h,
            share: if hours > 0.0 {
                (covered_h / hours).min(1.0)
            } else {
                0.0
            },
            late_samples: d.late,
            implausible_samples: d.implausible,
            cells_without_data: 0,
        }
    }
}

/// One day's report for one cell or for the area (`device` = [`AREA`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DayReport {
    pub schema: &'static str,
    pub device: String,
    /// Local date, `YYYY-MM-DD`.
    pub day: String,
    pub timezone: String,
    pub from: Ts,
    pub to: Ts,
    pub hours: f64,
    /// Written before the day ended (the end of a replay's data).
    pub partial: bool,
    /// When it was made.
    pub ts: Ts,
    pub pots: u64,
    pub pot_days: f64,
    pub anode_effects: AnodeEffects,
    pub pfc: Pfc,
    pub energy: Energy,
    pub coverage: Coverage,
}

/// A figure for a metrics sink (Sparkplug B): typed as the sink needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    U64(u64),
    F64(f64),
    Bool(bool),
    Text(String),
}

/// What type a figure has (a metrics sink declares its metrics before any report exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    U64,
    F64,
    Bool,
    Text,
}

/// Every figure [`DayReport::figures`] can give, in its order, with its type. Names are
/// `report/daily/` + the JSON path (`/` for nesting), so [`figures_of_payload`] reads them
/// back from the JSON report.
pub const FIGURES: &[(&str, FigureKind)] = &[
    ("report/daily/day", FigureKind::Text),
    ("report/daily/partial", FigureKind::Bool),
    ("report/daily/pot_days", FigureKind::F64),
    ("report/daily/anode_effects/count", FigureKind::U64),
    ("report/daily/anode_effects/per_pot_day", FigureKind::F64),
    ("report/daily/anode_effects/minutes", FigureKind::F64),
    (
        "report/daily/anode_effects/minutes_per_pot_day",
        FigureKind::F64,
    ),
    (
        "report/daily/anode_effects/mean_duration_s",
        FigureKind::F64,
    ),
    ("report/daily/anode_effects/open", FigureKind::U64),
    ("report/daily/pfc/production_t", FigureKind::F64),
    ("report/daily/pfc/cf4_kg", FigureKind::F64),
    ("report/daily/pfc/c2f6_kg", FigureKind::F64),
    ("report/daily/pfc/co2e_t", FigureKind::F64),
    ("report/daily/energy/voltage_mean_v", FigureKind::F64),
    ("report/daily/energy/energy_ac_kwh_t", FigureKind::F64),
    ("report/daily/energy/vs_benchmark_pct", FigureKind::F64),
    ("report/daily/energy/vs_baseline_pct", FigureKind::F64),
    ("report/daily/coverage/share", FigureKind::F64),
    ("report/daily/coverage/good_ratio", FigureKind::F64),
];

/// The figures of a JSON report (`alsentry/report/1`, as [`DayReport::payload`] writes it),
/// for a sink that only has the outbox record: the same pairs as [`DayReport::figures`]
/// (a figure that is null or missing is left out). None if it is not a report.
pub fn figures_of_payload(v: &serde_json::Value) -> Option<Vec<(String, Figure)>> {
    if v["schema"].as_str() != Some(REPORT_SCHEMA) {
        return None;
    }
    let mut out = Vec::new();
    for (name, kind) in FIGURES {
        let path = name.trim_start_matches("report/daily");
        let Some(x) = v.pointer(path) else { continue };
        let f = match kind {
            FigureKind::U64 => x.as_u64().map(Figure::U64),
            FigureKind::F64 => x.as_f64().map(Figure::F64),
            FigureKind::Bool => x.as_bool().map(Figure::Bool),
            FigureKind::Text => x.as_str().map(|s| Figure::Text(s.to_string())),
        };
        if let Some(f) = f {
            out.push((name.to_string(), f));
        }
    }
    Some(out)
}

/// Who publishes: the topic's parts and the payload's identity fields.
#[derive(Debug, Serialize)]
struct ReportPayload<'a> {
    schema: &'static str,
    agent: &'a str,
    site: &'a str,
    area: &'a str,
    device: &'a str,
    day: &'a str,
    timezone: &'a str,
    from: String,
    to: String,
    hours: f64,
    partial: bool,
    ts: String,
    pots: u64,
    pot_days: f64,
    anode_effects: &'a AnodeEffects,
    pfc: &'a Pfc,
    energy: &'a Energy,
    coverage: &'a Coverage,
}

impl DayReport {
    /// `{topic_root}/{site}/{area}/{device}/report/daily` (`_area` for the area).
    pub fn topic(&self, who: &super::payload::Identity) -> String {
        format!(
            "{}/{}/{}/{}{REPORT_LEAF}",
            who.topic_root, who.site, who.area, self.device
        )
    }

    /// The JSON payload (`schemas/report.schema.json`).
    pub fn payload(&self, who: &super::payload::Identity) -> Vec<u8> {
        let p = ReportPayload {
            schema: self.schema,
            agent: &who.agent,
            site: &who.site,
            area: &who.area,
            device: &self.device,
            day: &self.day,
            timezone: &self.timezone,
            from: rfc3339_ms(self.from),
            to: rfc3339_ms(self.to),
            hours: self.hours,
            partial: self.partial,
            ts: rfc3339_ms(self.ts),
            pots: self.pots,
            pot_days: self.pot_days,
            anode_effects: &self.anode_effects,
            pfc: &self.pfc,
            energy: &self.energy,
            coverage: &self.coverage,
        };
        serde_json::to_vec(&p).unwrap_or_default()
    }

    /// The report's figures as (name, value) pairs, for a metrics sink such as Sparkplug B
    /// (names as in the JSON, `/` for nesting). Figures that cannot be computed are left out.
    pub fn figures(&self) -> Vec<(String, Figure)> {
        let mut out: Vec<(String, Figure)> = Vec::new();
        let mut f = |n: &str, v: Figure| out.push((format!("report/daily/{n}"), v));
        f("day", Figure::Text(self.day.clone()));
        f("partial", Figure::Bool(self.partial));
        f("pot_days", Figure::F64(self.pot_days));
        let a = &self.anode_effects;
        f("anode_effects/count", Figure::U64(a.count));
        f("anode_effects/per_pot_day", Figure::F64(a.per_pot_day));
        f("anode_effects/minutes", Figure::F64(a.minutes));
        f(
            "anode_effects/minutes_per_pot_day",
            Figure::F64(a.minutes_per_pot_day),
        );
        if let Some(m) = a.mean_duration_s {
            f("anode_effects/mean_duration_s", Figure::F64(m));
        }
        f("anode_effects/open", Figure::U64(a.open));
        let p = &self.pfc;
        for (n, v) in [
            ("pfc/production_t", p.production_t),
            ("pfc/cf4_kg", p.cf4_kg),
            ("pfc/c2f6_kg", p.c2f6_kg),
            ("pfc/co2e_t", p.co2e_t),
        ] {
            if let Some(v) = v {
                f(n, Figure::F64(v));
            }
        }
        let e = &self.energy;
        for (n, v) in [
            ("energy/voltage_mean_v", e.voltage_mean_v),
            ("energy/energy_ac_kwh_t", e.energy_ac_kwh_t),
            ("energy/vs_benchmark_pct", e.vs_benchmark_pct),
            ("energy/vs_baseline_pct", e.vs_baseline_pct),
        ] {
            if let Some(v) = v {
                f(n, Figure::F64(v));
            }
        }
        f("coverage/share", Figure::F64(self.coverage.share));
        if let Some(g) = self.coverage.good_ratio {
            f("coverage/good_ratio", Figure::F64(g));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alarm::{Cause, Transition};
    use crate::core::model::{BadReason, Priority};

    const H: i64 = 3_600_000;
    /// 2026-11-28T00:00:00Z.
    const T0: Ts = 1_795_824_000_000;

    fn cells(n: usize, ae_tag: bool) -> Vec<(Arc<str>, Vec<Arc<str>>)> {
        (1..=n)
            .map(|i| {
                let mut tags: Vec<Arc<str>> = vec!["voltage".into(), "current".into()];
                if ae_tag {
                    tags.push("ae_active".into());
                }
                (Arc::from(format!("pot-{i}").as_str()), tags)
            })
            .collect()
    }

    fn ev(device: &str, rule: &str, at: Ts, active_since: Option<Ts>) -> AlarmEvent {
        AlarmEvent {
            device: device.into(),
            rule: rule.into(),
            tag: "voltage".into(),
            unit: "V".into(),
            priority: Priority::Critical,
            transition: Transition {
                from: if active_since.is_some() {
                    "normal"
                } else {
                    "active_unacked"
                },
                to: if active_since.is_some() {
                    "active_unacked"
                } else {
                    "returned_unacked"
                },
                at,
                cause: Cause::Condition,
                by: None,
                note: None,
            },
            value: None,
            limit: None,
            quality: Quality::Good,
            message: String::new(),
            since: at,
            active_since,
            acked_by: None,
            shelved_until: None,
        }
    }

    /// Voltage 4.1 V and current 500 kA every minute over [from, to).
    fn steady(r: &mut Reports, dev: u32, from: Ts, to: Ts) -> Vec<DayReport> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            out.extend(r.sample(dev, t, 0, 4.1, Quality::Good));
            out.extend(r.sample(dev, t, 1, 500.0, Quality::Good));
            t += 60_000;
        }
        out
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_day_with_two_anode_effects_gives_the_hand_computed_figures() {
        let mut r = Reports::new(&cells(1, false), ReportOptions::default(), "UTC");
        assert!(steady(&mut r, 0, T0, T0 + 24 * H).is_empty());
        // AE 1: 90 s at 03:00; AE 2: 30 s at 15:00.
        r.event(&ev("pot-1", "anode_effect", T0 + 3 * H, Some(T0 + 3 * H)));
        r.event(&ev("pot-1", "anode_effect", T0 + 3 * H + 90_000, None));
        r.event(&ev("pot-1", "anode_effect", T0 + 15 * H, Some(T0 + 15 * H)));
        r.event(&ev("pot-1", "anode_effect", T0 + 15 * H + 30_000, None));
        // Another rule is not an anode effect.
        r.event(&ev("pot-1", "cell_noise", T0 + 16 * H, Some(T0 + 16 * H)));
        let out = r.advance(T0 + 24 * H);
        assert_eq!(out.len(), 2);
        let d = &out[0];
        assert_eq!((d.device.as_str(), d.day.as_str()), ("pot-1", "2026-11-28"));
        assert!(!d.partial && close(d.hours, 24.0) && close(d.pot_days, 1.0));
        let ae = &d.anode_effects;
        assert_eq!((ae.count, ae.open, ae.source), (2, 0, AeSource::Alarm));
        assert!(close(ae.minutes, 2.0) && close(ae.per_pot_day, 2.0));
        assert_eq!(ae.mean_duration_s, Some(60.0));
        assert!(close(ae.max_duration_s, 90.0));
        // MP = 500 kA × 24 h × 0.93 / 2980 Ah/kg = 3.7449664 t; AEM = 2 min/pot-day.
        let mp = 500.0 * 24.0 * 0.93 / 2980.0;
        let p = &d.pfc;
        assert!(close(p.production_t.unwrap(), mp));
        assert!(close(p.cf4_kg.unwrap(), 0.143 * 2.0 * mp));
        assert!(close(p.c2f6_kg.unwrap(), 0.0173 * 2.0 * mp));
        let co2e = (0.143 * 2.0 * mp * 7390.0 + 0.0173 * 2.0 * mp * 12200.0) / 1000.0;
        assert!(
            close(p.co2e_t.unwrap(), co2e),
            "{} vs {co2e}",
            p.co2e_t.unwrap()
        );
        // 4.10 V at 93 % CE: 2980 × 4.1 / 0.93 = 13,137.6 DC; / 0.98 = 13,405.7 AC.
        let e = &d.energy;
        assert!(close(e.voltage_mean_v.unwrap(), 4.1));
        assert!(close(e.energy_dc_kwh_t.unwrap(), 2980.0 * 4.1 / 0.93));
        assert!(close(
            e.energy_ac_kwh_t.unwrap(),
            2980.0 * 4.1 / 0.93 / 0.98
        ));
        assert!(e.vs_baseline_pct.unwrap() > 0.0 && e.vs_benchmark_pct.unwrap() > 3.0);
        let c = &d.coverage;
        assert_eq!((c.samples, c.good_samples), (1440, 1440));
        assert!(close(c.share, 1.0) && close(c.covered_h, 24.0));
        let a = &out[1];
        assert_eq!((a.device.as_str(), a.pots), (AREA, 1));
        assert!(close(a.pfc.co2e_t.unwrap(), co2e));
    }

    #[test]
    fn the_area_sums_its_cells_and_gaps_show_in_the_coverage() {
        let mut r = Reports::new(&cells(2, false), ReportOptions::default(), "UTC");
        steady(&mut r, 0, T0, T0 + 24 * H);
        // pot-2: only 12 h of data, and 60 bad voltage readings among them.
        steady(&mut r, 1, T0, T0 + 12 * H);
        for k in 0..60 {
            r.sample(
                1,
                T0 + 12 * H + k * 60_000,
                0,
                f64::NAN,
                Quality::Bad(BadReason::Timeout),
            );
        }
        r.event(&ev("pot-2", "anode_effect", T0 + H, Some(T0 + H)));
        r.event(&ev("pot-2", "anode_effect", T0 + H + 120_000, None));
        let out = r.advance(T0 + 24 * H + 1);
        let p2 = &out[1];
        assert_eq!(p2.coverage.samples, 720 + 60);
        assert!(close(p2.coverage.good_ratio.unwrap(), 720.0 / 780.0));
        // 719 gaps of 1 min between good samples, then the last one covers 1 min (the gap cap).
        assert!(
            close(p2.coverage.covered_h, 12.0),
            "{}",
            p2.coverage.covered_h
        );
        assert!(close(p2.coverage.share, 0.5));
        let a = &out[2];
        assert_eq!((a.pots, a.anode_effects.count), (2, 1));
        assert!(close(a.pot_days, 2.0) && close(a.anode_effects.per_pot_day, 0.5));
        assert!(close(a.coverage.share, 0.75));
        assert!(close(a.pfc.co2e_t.unwrap(), p2.pfc.co2e_t.unwrap()));
        assert!(close(
            a.pfc.production_t.unwrap(),
            2.0 * 500.0 * 24.0 * 0.93 / 2980.0
        ));
    }

    #[test]
    fn sensor_faults_stay_out_of_the_mean_and_silent_cells_out_of_the_area() {
        let mut r = Reports::new(&cells(3, false), ReportOptions::default(), "UTC");
        steady(&mut r, 0, T0, T0 + 24 * H);
        // A stuck 0xFFFF register (655.35 V) and 0 V: good quality, but not cell voltages.
        for _ in 0..3 {
            r.sample(0, T0 + 24 * H - 1, 0, 655.35, Quality::Good);
            r.sample(0, T0 + 24 * H - 1, 0, 0.0, Quality::Good);
        }
        // An anode effect at 40 V is a cell voltage.
        r.sample(1, T0 + H, 0, 40.0, Quality::Good);
        r.sample(1, T0 + H + 60_000, 0, 4.0, Quality::Good);
        let out = r.advance(T0 + 24 * H);
        let p1 = &out[0];
        assert!(close(p1.energy.voltage_mean_v.unwrap(), 4.1));
        let c = &p1.coverage;
        assert_eq!(
            (c.implausible_samples, c.samples, c.good_samples),
            (6, 1446, 1440)
        );
        assert!(close(out[1].energy.voltage_mean_v.unwrap(), 22.0));
        // pot-3 sent nothing: it has its report (coverage 0), and is not a pot of the area.
        assert_eq!((out[2].coverage.samples, out[2].coverage.share), (0, 0.0));
        let a = &out[3];
        assert_eq!((a.pots, a.coverage.cells_without_data), (2, 1));
        assert!(close(a.pot_days, 2.0));
    }

    #[test]
    fn the_controller_flag_is_the_source_when_the_cell_has_one() {
        let mut r = Reports::new(&cells(1, true), ReportOptions::default(), "UTC");
        steady(&mut r, 0, T0, T0 + H);
        r.sample(0, T0 + 600_000, 2, 0.0, Quality::Good);
        r.sample(0, T0 + 601_000, 2, 1.0, Quality::Good);
        // A bad reading of the flag neither starts nor ends the effect.
        r.sample(
            0,
            T0 + 620_000,
            2,
            f64::NAN,
            Quality::Bad(BadReason::Timeout),
        );
        r.sample(0, T0 + 646_000, 2, 0.0, Quality::Good);
        // The alarm saw it 3 s later: the flag wins.
        r.event(&ev(
            "pot-1",
            "anode_effect",
            T0 + 604_000,
            Some(T0 + 604_000),
        ));
        r.event(&ev("pot-1", "anode_effect", T0 + 640_000, None));
        let out = r.advance(T0 + 24 * H);
        let ae = &out[0].anode_effects;
        assert_eq!((ae.count, ae.source), (1, AeSource::AeActive));
        assert_eq!(ae.mean_duration_s, Some(45.0));
        // Without a single good flag reading that day, the alarm is the source.
        let mut r = Reports::new(&cells(1, true), ReportOptions::default(), "UTC");
        r.event(&ev(
            "pot-1",
            "anode_effect",
            T0 + 604_000,
            Some(T0 + 604_000),
        ));
        r.event(&ev("pot-1", "anode_effect", T0 + 640_000, None));
        let out = r.advance(T0 + 24 * H);
        assert_eq!(out[0].anode_effects.source, AeSource::Alarm);
        assert_eq!(out[0].anode_effects.mean_duration_s, Some(36.0));
    }

    #[test]
    fn an_effect_across_midnight_counts_whole_in_the_day_it_ends() {
        let mut r = Reports::new(&cells(1, false), ReportOptions::default(), "UTC");
        steady(&mut r, 0, T0, T0 + 24 * H);
        r.event(&ev(
            "pot-1",
            "anode_effect",
            T0 + 24 * H - 20_000,
            Some(T0 + 24 * H - 20_000),
        ));
        // The first sample of the next day closes the day.
        let out = steady(&mut r, 0, T0 + 24 * H, T0 + 24 * H + 60_000);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].anode_effects.count, out[0].anode_effects.open),
            (0, 1)
        );
        assert_eq!(out[1].anode_effects.open, 1);
        r.event(&ev("pot-1", "anode_effect", T0 + 24 * H + 40_000, None));
        let out = r.finish(T0 + 24 * H + 60_000);
        assert!(out[0].partial);
        assert_eq!(out[0].day, "2026-11-29");
        assert_eq!(out[0].anode_effects.count, 1);
        assert_eq!(out[0].anode_effects.mean_duration_s, Some(60.0));
    }

    #[test]
    fn days_follow_the_plant_time_zone_with_23_and_25_hour_days() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-29: clocks go 02:00 → 03:00 (23 h); 2026-10-25: 03:00 → 02:00 (25 h).
        let spring = day_of(1_774_771_200_000, &tz); // 2026-03-29T08:00:00Z
        assert_eq!(spring.date, "2026-03-29");
        assert_eq!(spring.end - spring.start, 23 * H);
        assert_eq!(spring.start, 1_774_738_800_000); // 2026-03-28T23:00:00Z
        let autumn = day_of(1_792_915_200_000, &tz); // 2026-10-25T08:00:00Z
        assert_eq!(autumn.date, "2026-10-25");
        assert_eq!(autumn.end - autumn.start, 25 * H);
        let sh = TimeZone::get("Asia/Shanghai").unwrap();
        let d = day_of(T0, &sh); // 08:00 in Shanghai
        assert_eq!((d.date.as_str(), d.start), ("2026-11-28", T0 - 8 * H));
        // A 23-hour day is 23/24 pot-days and produces 23/24 of a day's metal.
        let mut r = Reports::new(&cells(1, false), ReportOptions::default(), "Europe/Berlin");
        steady(&mut r, 0, spring.start, spring.end);
        let out = r.advance(spring.end);
        let d = &out[0];
        assert!(close(d.hours, 23.0) && close(d.pot_days, 23.0 / 24.0));
        assert!(close(d.coverage.share, 1.0));
        assert!(close(
            d.pfc.production_t.unwrap(),
            500.0 * 23.0 * 0.93 / 2980.0
        ));
    }

    #[test]
    fn late_samples_are_counted_not_added_and_a_restart_loses_nothing() {
        let events = |r: &mut Reports| {
            r.event(&ev("pot-1", "anode_effect", T0 + 2 * H, Some(T0 + 2 * H)));
            r.event(&ev("pot-1", "anode_effect", T0 + 2 * H + 50_000, None));
        };
        // Uninterrupted.
        let mut whole = Reports::new(&cells(1, false), ReportOptions::default(), "UTC");
        steady(&mut whole, 0, T0, T0 + 5 * H);
        events(&mut whole);
        steady(&mut whole, 0, T0 + 5 * H, T0 + 24 * H);
        let a = whole.advance(T0 + 24 * H);
        // Stopped at 05:00 and started again from the saved state (through JSON, as on disk).
        let mut first = Reports::new(&cells(1, false), ReportOptions::default(), "UTC");
        steady(&mut first, 0, T0, T0 + 5 * H);
        events(&mut first);
        let text = serde_json::to_string(&first.save()).unwrap();
        let mut second = Reports::new(&cells(1, false), ReportOptions::default(), "UTC");
        assert!(second
            .restore(serde_json::from_str(&text).unwrap(), T0 + 5 * H)
            .is_empty());
        steady(&mut second, 0, T0 + 5 * H, T0 + 24 * H);
        let b = second.advance(T0 + 24 * H);
        assert_eq!(a, b);
        // A sample from the day before the open one is counted as late, nothing else.
        second.sample(0, T0 + 23 * H, 0, 9.0, Quality::Good);
        let c = second.advance(T0 + 48 * H);
        assert_eq!((c[0].coverage.late_samples, c[0].coverage.samples), (1, 0));
        // Down across midnight: the saved day is reported at start.
        let mut third = Reports::new(&cells(1, false), ReportOptions::default(), "UTC");
        let out = third.restore(serde_json::from_str(&text).unwrap(), T0 + 30 * H);
        assert_eq!(out.len(), 2);
        assert!(close(out[0].coverage.covered_h, 5.0));
        assert_eq!(out[0].anode_effects.count, 1);
    }

    #[test]
    fn the_payload_and_the_figures_name_the_same_things() {
        let mut r = Reports::new(&cells(1, false), ReportOptions::default(), "Asia/Shanghai");
        steady(&mut r, 0, T0, T0 + H);
        let out = r.finish(T0 + H);
        let who = crate::core::payload::Identity {
            topic_root: "alsentry".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        };
        assert_eq!(out[0].topic(&who), "alsentry/s/a/pot-1/report/daily");
        assert_eq!(out[1].topic(&who), "alsentry/s/a/_area/report/daily");
        let j: serde_json::Value = serde_json::from_slice(&out[0].payload(&who)).unwrap();
        assert_eq!(j["schema"], REPORT_SCHEMA);
        assert_eq!(j["day"], "2026-11-28");
        assert_eq!(j["from"], "2026-11-27T16:00:00.000Z");
        assert_eq!(j["anode_effects"]["source"], "alarm");
        for (name, _) in out[0].figures() {
            let mut v = &j;
            for part in name.trim_start_matches("report/daily/").split('/') {
                v = &v[part];
            }
            assert!(!v.is_null(), "{name} not in the payload");
        }
    }

    /// A Sparkplug sink only has the outbox record: reading the figures back from the JSON
    /// gives exactly `figures()`, each declared in `FIGURES` with its type.
    #[test]
    fn the_figures_read_back_from_the_json_equal_the_report_s_own() {
        let mut r = Reports::new(&cells(2, false), ReportOptions::default(), "Asia/Shanghai");
        steady(&mut r, 0, T0, T0 + H);
        r.event(&ev("pot-1", "anode_effect", T0 + 60_000, Some(T0 + 60_000)));
        r.event(&ev("pot-1", "anode_effect", T0 + 150_000, None));
        let out = r.finish(T0 + H);
        assert_eq!(out.len(), 3);
        let who = crate::core::payload::Identity {
            topic_root: "alsentry".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        };
        for rep in &out {
            let j: serde_json::Value = serde_json::from_slice(&rep.payload(&who)).unwrap();
            let back = figures_of_payload(&j).unwrap();
            assert_eq!(back, rep.figures(), "{}", rep.device);
            for (name, f) in &back {
                let kind = match f {
                    Figure::U64(_) => FigureKind::U64,
                    Figure::F64(_) => FigureKind::F64,
                    Figure::Bool(_) => FigureKind::Bool,
                    Figure::Text(_) => FigureKind::Text,
                };
                assert!(FIGURES.contains(&(name.as_str(), kind)), "{name}");
            }
        }
        let area = out.iter().find(|r| r.device == AREA).unwrap().figures();
        assert!(area.contains(&("report/daily/anode_effects/count".into(), Figure::U64(1))));
        assert!(figures_of_payload(&serde_json::json!({"schema": "alsentry/summary/1"})).is_none());
    }
}
