//! `alsentry probe`: read a device once, exactly as `run` would (its read plan, the Modbus
//! client, the decoder), and show every tag's address, raw words, value and quality. For
//! commissioning: a wrong word order, scale or Modicon offset shows here, not as an alarm.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::tag::{at_scale_precision, format_raw_words, modicon};
use crate::config::{Config, Device};
use crate::core::decode::{decode_at, Image};
use crate::core::model::{BadReason, Quality};
use crate::core::payload::{number_text, Num};
use crate::core::plan::ReadBlock;
use crate::io::modbus::{Connection, ReadData, ReadError};
use crate::io::read_plan::planner_for;

/// Exit code when a probed device does not answer (`EX_UNAVAILABLE` of sysexits.h).
pub const EXIT_NO_ANSWER: u8 = 69;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["device", "all"])))]
pub struct ProbeArgs {
    /// Configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "ALSENTRY_CONFIG",
        default_value = crate::config::DEFAULT_PATH
    )]
    pub config: PathBuf,
    /// The device to read (its name after expansion, e.g. "pot-001"); repeat for several.
    #[arg(short, long, value_name = "NAME")]
    pub device: Vec<String>,
    /// Read every configured device, one after the other.
    #[arg(long)]
    pub all: bool,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One tag as read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagReading {
    pub tag: String,
    pub table: &'static str,
    /// 0-based protocol address.
    pub address: u16,
    /// The same address in Modicon notation ("30001").
    pub modicon: String,
    #[serde(rename = "type")]
    pub dtype: &'static str,
    /// Word order of 32- and 64-bit types.
    pub order: Option<&'static str>,
    /// Bit of the register, for a bool read out of a register.
    pub bit: Option<u8>,
    /// The words (or the bit, 0 or 1) as read, in the form `expect` takes: "0x4083 0x3333".
    pub raw: Option<String>,
    /// Decoded and scaled; null when the quality is bad.
    pub value: Option<Num>,
    pub unit: String,
    /// "good" or "bad:<reason>", as in data payloads.
    pub quality: String,
}

/// One device as read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReading {
    pub device: String,
    pub endpoint: String,
    pub unit: u8,
    /// Modbus requests made.
    pub reads: u32,
    /// Why the device gave no reading (did not answer, or the link broke); null when it did.
    pub error: Option<String>,
    /// What the reads met on the way, e.g. a read refused with exception 02 and retried tag
    /// by tag (an unmapped register inside a read's span).
    pub notes: Vec<String>,
    pub tags: Vec<TagReading>,
}

impl DeviceReading {
    pub fn answered(&self) -> bool {
        self.error.is_none()
    }

    pub fn tag(&self, name: &str) -> Option<&TagReading> {
        self.tags.iter().find(|t| t.tag == name)
    }
}

fn reading_of(d: &Device, ti: usize) -> TagReading {
    let t = &d.tags[ti];
    let e = &t.encoding;
    TagReading {
        tag: t.name.clone(),
        table: e.table.as_str(),
        address: t.address,
        modicon: modicon(e.table, t.address),
        dtype: e.dtype.as_str(),
        order: (!e.table.is_bits() && e.dtype.registers() >= 2).then(|| e.order.as_str()),
        bit: e.bit,
        raw: None,
        value: None,
        unit: t.unit.clone(),
        quality: Quality::Bad(BadReason::ConnectionLost).label(),
    }
}

/// Reads `d` once. Reads follow the device's plan; a read refused with exception 02 is
/// retried tag by tag, so one unmapped register marks only its own tag bad. Other exceptions
/// mark the read's tags bad; a device that does not answer (connect failure, timeout, broken
/// reply, gateway exception 0A/0B) ends the reading with `error` set.
pub async fn read_device(d: &Device) -> DeviceReading {
    let mut out = DeviceReading {
        device: d.name.clone(),
        endpoint: d.endpoint.to_string(),
        unit: d.unit,
        reads: 0,
        error: None,
        notes: Vec::new(),
        tags: (0..d.tags.len()).map(|i| reading_of(d, i)).collect(),
    };
    let timeout = Duration::from_millis(d.timeout_ms.max(1) as u64);
    // As the poller: a connect gets at least a second, whatever the read timeout.
    let mut conn = match Connection::open(&d.endpoint, timeout.max(Duration::from_secs(1))).await {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(no_answer(&out, &e.to_string()));
            return out;
        }
    };
    let planner = planner_for(d);
    // (read, whether it is one tag's retry after exception 02)
    let mut queue: VecDeque<(ReadBlock, bool)> = planner
        .blocks()
        .iter()
        .map(|b| (b.clone(), false))
        .collect();
    while let Some((block, alone)) = queue.pop_front() {
        out.reads += 1;
        let result = conn
            .read(d.unit, block.table, block.start, block.count, timeout)
            .await;
        match result {
            Ok(data) => {
                let image = match &data {
                    ReadData::Registers(words) => Image::Registers {
                        start: block.start,
                        words,
                    },
                    ReadData::Bits(bits) => Image::Bits {
                        start: block.start,
                        bits,
                    },
                };
                for &ti in &block.tags {
                    let tag = &d.tags[ti];
                    let r = &mut out.tags[ti];
                    let at = usize::from(tag.address.saturating_sub(block.start));
                    let width = usize::from(tag.encoding.width());
                    r.raw = match &data {
                        ReadData::Registers(w) => w.get(at..at + width).map(format_raw_words),
                        ReadData::Bits(b) => b.get(at).map(|b| u8::from(*b).to_string()),
                    };
                    match decode_at(&tag.encoding, tag.address, image) {
                        Ok(v) => {
                            r.value = Some(Num(at_scale_precision(&tag.encoding, v)));
                            r.quality = Quality::Good.label();
                        }
                        Err(_) => r.quality = Quality::Bad(BadReason::Decode).label(),
                    }
                }
            }
            Err(ReadError::Exception(2)) if !alone => {
                out.notes.push(format!(
                    "{} {}..{} answered exception 02 (illegal data address): read tag by tag",
                    block.table,
                    block.start,
                    u32::from(block.start) + u32::from(block.count) - 1
                ));
                for (k, &ti) in block.tags.iter().enumerate() {
                    if let Some(b) = planner.block_of(&[ti]) {
                        queue.insert(k, (b, true));
                    }
                }
            }
            Err(ReadError::Exception(code)) if code == 0x0A || code == 0x0B => {
                let why = format!("the gateway answers exception {code:02X} (unit unreachable)");
                out.error = Some(no_answer(&out, &why));
                break;
            }
            Err(ReadError::Exception(code)) => {
                for &ti in &block.tags {
                    out.tags[ti].quality = Quality::Bad(BadReason::Exception(code)).label();
                }
            }
            Err(e) => {
                out.error = Some(no_answer(&out, &e.to_string()));
                break;
            }
        }
    }
    if out.error.is_some() {
        for t in out.tags.iter_mut().filter(|t| t.value.is_none()) {
            t.quality = Quality::Bad(BadReason::ConnectionLost).label();
        }
    }
    out
}

fn no_answer(r: &DeviceReading, why: &str) -> String {
    format!(
        "device \"{}\" at {} (unit {}) did not answer: {why}",
        r.device, r.endpoint, r.unit
    )
}

/// The reading as an aligned table, headed by the device and its endpoint.
pub fn table(r: &DeviceReading) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} at {} unit {}: {} tags, {} reads{}",
        r.device,
        r.endpoint,
        r.unit,
        r.tags.len(),
        r.reads,
        if r.answered() { "" } else { ", DID NOT ANSWER" }
    );
    for n in &r.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    if r.tags.iter().all(|t| t.raw.is_none()) {
        return s;
    }
    let head = [
        "TAG", "TABLE", "ADDRESS", "MODICON", "TYPE", "RAW", "VALUE", "QUALITY",
    ];
    let rows: Vec<[String; 8]> = r
        .tags
        .iter()
        .map(|t| {
            let ty = match (t.order, t.bit) {
                (Some(o), _) => format!("{} {o}", t.dtype),
                (None, Some(b)) => format!("bit {b}"),
                (None, None) => t.dtype.to_string(),
            };
            let value = match t.value {
                Some(Num(v)) if t.unit.is_empty() => number_text(v),
                Some(Num(v)) => format!("{} {}", number_text(v), t.unit),
                None => "-".to_string(),
            };
            [
                t.tag.clone(),
                t.table.to_string(),
                t.address.to_string(),
                t.modicon.clone(),
                ty,
                t.raw.clone().unwrap_or_else(|| "-".into()),
                value,
                t.quality.clone(),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut l = String::from(" ");
        for (c, w) in cells.iter().zip(widths) {
            let _ = write!(l, " {c:<w$}");
        }
        let _ = writeln!(s, "{}", l.trim_end());
    };
    line(&head);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    s
}

#[derive(Serialize)]
struct Document<'a> {
    devices: &'a [DeviceReading],
}

/// `{"devices": [...]}`, for scripts.
pub fn json(readings: &[DeviceReading]) -> String {
    serde_json::to_string_pretty(&Document { devices: readings }).unwrap_or_default()
}

/// The devices `args` names, or why not.
fn selected<'a>(cfg: &'a Config, args: &ProbeArgs) -> Result<Vec<&'a Device>, String> {
    if args.all {
        return Ok(cfg.devices.iter().collect());
    }
    args.device
        .iter()
        .map(|name| {
            cfg.devices.iter().find(|d| &d.name == name).ok_or_else(|| {
                let names: Vec<&str> = cfg.devices.iter().map(|d| d.name.as_str()).collect();
                let shown = names.len().min(10);
                format!(
                    "no device \"{name}\" in the configuration; its devices: {}{}",
                    names[..shown].join(", "),
                    if names.len() > shown { ", ..." } else { "" }
                )
            })
        })
        .collect()
}

/// `alsentry probe`. Exit 0 when every device answered (tags may still be bad: see their
/// quality), 69 when one did not, 78 for an invalid configuration, 1 for an unknown device.
pub fn main(args: ProbeArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return crate::telemetry::config_refused(&args.config, &e, "; not probing"),
    };
    let devices = match selected(&cfg, &args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("probe: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("probe: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut readings = Vec::with_capacity(devices.len());
    for d in devices {
        // One device at a time: a gateway may accept a single connection.
        let r = rt.block_on(read_device(d));
        if let Some(e) = &r.error {
            eprintln!("probe: {e}");
        }
        if !args.json {
            print!("{}", table(&r));
        }
        readings.push(r);
    }
    if args.json {
        println!("{}", json(&readings));
    }
    if readings.iter().all(DeviceReading::answered) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_ANSWER)
    }
}
