//! What `tune` reads: the samples, in replay order (in memory when they fit, else read again
//! from the files for each replay), and the truth, from the controller's own anode-effect
//! register: rising edges of `ae_active`, or increments of `ae_count` where a cell has no
//! `ae_active`.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::core::model::{Quality, Ts};
use crate::io::samples::Names;
use crate::replay::order::{self, Item, OrderOptions, Source};
use crate::replay::progress::Progress;
use crate::replay::ReplayError;

/// The cell template's anode-effect register (docs/DOMAIN.md): a status bit and a counter.
pub const AE_ACTIVE: &str = "ae_active";
pub const AE_COUNT: &str = "ae_count";
/// How long an anode effect known only from a counter increment is taken to last.
pub const COUNT_ONLY_DURATION_MS: Ts = 60_000;

/// One sample, resolved to engine indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts: Ts,
    pub device: u32,
    pub tag: u16,
    pub value: f64,
    pub quality: Quality,
}

/// One anode effect, as the cell controller reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnodeEffect {
    pub device: u32,
    pub onset: Ts,
    pub end: Ts,
    /// `ae_active` or `ae_count`.
    pub source: &'static str,
}

/// Where the rows are for each replay.
#[derive(Debug)]
pub enum Rows {
    Memory(Vec<Sample>),
    Files(Vec<Source>),
}

#[derive(Debug)]
pub struct Loaded {
    pub rows: Rows,
    pub effects: Vec<AnodeEffect>,
    /// Devices with an anode-effect register that sent any row: the cells.
    pub cells: usize,
    pub first_ts: Option<Ts>,
    pub last_ts: Option<Ts>,
    pub records: u64,
    pub bad_rows: u64,
    /// The first bad rows, `file:line: message`.
    pub problems: Vec<String>,
}

impl Loaded {
    pub fn cell_hours(&self) -> f64 {
        match (self.first_ts, self.last_ts) {
            (Some(a), Some(b)) => self.cells as f64 * (b - a) as f64 / 3_600_000.0,
            _ => 0.0,
        }
    }
}

#[derive(Debug, Default)]
struct Register {
    active: Option<u16>,
    count: Option<u16>,
    seen: bool,
    /// Last good `ae_active`, and the open effect's onset.
    last_active: Option<bool>,
    open: Option<Ts>,
    from_active: Vec<(Ts, Ts)>,
    last_count: Option<f64>,
    from_count: Vec<Ts>,
}

/// Reads the inputs once, in replay order: finds the anode effects and keeps the rows in memory
/// if there are at most `max_rows_in_memory`.
pub fn load(
    cfg: &Config,
    sources: Vec<Source>,
    opts: &OrderOptions,
    max_rows_in_memory: u64,
    max_problems: usize,
    show_progress: bool,
) -> Result<Loaded, ReplayError> {
    let names = Names::new(cfg);
    let mut regs: Vec<Register> = cfg
        .devices
        .iter()
        .map(|d| Register {
            active: d
                .tags
                .iter()
                .position(|t| t.name == AE_ACTIVE)
                .map(|i| i as u16),
            count: d
                .tags
                .iter()
                .position(|t| t.name == AE_COUNT)
                .map(|i| i as u16),
            ..Register::default()
        })
        .collect();
    let plan = order::plan(&sources, &names, opts)?;
    let records = plan.stats().records;
    let keep = records <= max_rows_in_memory;
    let mut kept = Vec::with_capacity(if keep { records as usize } else { 0 });
    let mut progress = if show_progress {
        Progress::rows("reading", records)
    } else {
        Progress::hidden()
    };
    let (mut bad_rows, mut problems) = (0u64, Vec::new());
    let (mut first, mut last): (Option<Ts>, Option<Ts>) = (None, None);
    plan.for_each(&mut |item| {
        let (row, _) = match item {
            Item::Row { row, file } => (row, file),
            Item::Bad { file, error } => {
                bad_rows += 1;
                if problems.len() < max_problems {
                    problems.push(format!(
                        "{}:{}: {}",
                        sources[file].display, error.line, error.message
                    ));
                }
                return Ok(());
            }
            Item::Derived => return Ok(()),
        };
        progress.row();
        first = Some(first.map_or(row.ts, |f| f.min(row.ts)));
        last = Some(last.map_or(row.ts, |l| l.max(row.ts)));
        if keep {
            kept.push(Sample {
                ts: row.ts,
                device: row.device,
                tag: row.tag,
                value: row.value,
                quality: row.quality,
            });
        }
        let Some(r) = regs.get_mut(row.device as usize) else {
            return Ok(());
        };
        if r.active.is_some() || r.count.is_some() {
            r.seen = true;
        }
        if !row.quality.is_good() {
            return Ok(());
        }
        if Some(row.tag) == r.active {
            let on = row.value >= 0.5;
            match (r.last_active, on) {
                (Some(false), true) => r.open = Some(row.ts),
                (Some(true), false) => {
                    if let Some(onset) = r.open.take() {
                        r.from_active.push((onset, row.ts));
                    }
                }
                _ => {}
            }
            r.last_active = Some(on);
        } else if Some(row.tag) == r.count {
            if r.last_count.is_some_and(|c| row.value > c) {
                r.from_count.push(row.ts);
            }
            r.last_count = Some(row.value);
        }
        Ok(())
    })?;
    progress.finish();
    let mut effects = Vec::new();
    for (d, r) in regs.iter_mut().enumerate() {
        if let Some(onset) = r.open.take() {
            r.from_active.push((onset, last.unwrap_or(onset)));
        }
        // The status bit gives the end too; the counter only that one happened.
        if r.last_active.is_some() {
            effects.extend(r.from_active.iter().map(|&(onset, end)| AnodeEffect {
                device: d as u32,
                onset,
                end,
                source: AE_ACTIVE,
            }));
        } else {
            effects.extend(r.from_count.iter().map(|&onset| AnodeEffect {
                device: d as u32,
                onset,
                end: onset + COUNT_ONLY_DURATION_MS,
                source: AE_COUNT,
            }));
        }
    }
    effects.sort_by_key(|e| (e.onset, e.device));
    Ok(Loaded {
        rows: if keep {
            Rows::Memory(kept)
        } else {
            Rows::Files(sources)
        },
        effects,
        cells: regs.iter().filter(|r| r.seen).count(),
        first_ts: first,
        last_ts: last,
        records,
        bad_rows,
        problems,
    })
}

/// Calls `f` with every good row in replay order, from memory or from the files again.
pub fn for_each_row(
    rows: &Rows,
    cfg: &Config,
    opts: &OrderOptions,
    f: &mut dyn FnMut(&Sample),
) -> Result<(), ReplayError> {
    match rows {
        Rows::Memory(v) => {
            v.iter().for_each(f);
            Ok(())
        }
        Rows::Files(sources) => {
            let names = Names::new(cfg);
            order::plan(sources, &names, opts)?.for_each(&mut |item| {
                if let Item::Row { row, .. } = item {
                    f(&Sample {
                        ts: row.ts,
                        device: row.device,
                        tag: row.tag,
                        value: row.value,
                        quality: row.quality,
                    });
                }
                Ok(())
            })?;
            Ok(())
        }
    }
}

/// Effects per device, for scoring.
pub fn by_device(effects: &[AnodeEffect]) -> BTreeMap<u32, Vec<&AnodeEffect>> {
    let mut m: BTreeMap<u32, Vec<&AnodeEffect>> = BTreeMap::new();
    for e in effects {
        m.entry(e.device).or_default().push(e);
    }
    m
}
