//! What the edge node publishes: its node metrics and, per device, its tag and alarm
//! metrics with their Sparkplug datatypes. Built once from the configuration at start (like
//! the sink's other settings, it changes at the next restart).

use super::proto::datatype;
use crate::config::Config;
use crate::core::decode::{DataType, Encoding};
use crate::core::report::{FigureKind, Reports, FIGURES};

/// A metric the node declares in NBIRTH beside the built-in ones (`bdSeq`, `Node Control/*`).
/// The daily report, or anything else with figures of the node, adds one here and sets it
/// with `Session::set_node_metric`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetric {
    pub name: String,
    /// A Sparkplug datatype (`proto::datatype`).
    pub datatype: u32,
}

/// One device: its id and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceModel {
    /// The Sparkplug device id: the device's name.
    pub name: String,
    /// Polled tags, in the device's order: (name, Sparkplug datatype).
    pub tags: Vec<(String, u32)>,
    /// The rules with an alarm on this device, in rule order.
    pub alarms: Vec<String>,
    /// The daily report's figures (a cell, with `[report]` on): (name, Sparkplug datatype).
    pub figures: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    pub node: Vec<NodeMetric>,
    pub devices: Vec<DeviceModel>,
}

/// The Sparkplug datatype of a tag: its register type, or Double when a scale or offset turns
/// the register into a real number.
pub fn tag_datatype(e: &Encoding) -> u32 {
    if e.bit.is_some() || e.dtype == DataType::Bool {
        return datatype::BOOLEAN;
    }
    if e.scale != 1.0 || e.offset != 0.0 {
        return datatype::DOUBLE;
    }
    match e.dtype {
        DataType::Bool => datatype::BOOLEAN,
        DataType::U16 => datatype::UINT16,
        DataType::I16 => datatype::INT16,
        DataType::U32 => datatype::UINT32,
        DataType::I32 => datatype::INT32,
        DataType::U64 => datatype::UINT64,
        DataType::I64 => datatype::INT64,
        DataType::F32 => datatype::FLOAT,
        DataType::F64 => datatype::DOUBLE,
    }
}

/// The Sparkplug datatype of a report figure.
pub fn figure_datatype(k: FigureKind) -> u32 {
    match k {
        FigureKind::U64 => datatype::UINT64,
        FigureKind::F64 => datatype::DOUBLE,
        FigureKind::Bool => datatype::BOOLEAN,
        FigureKind::Text => datatype::STRING,
    }
}

fn report_figures() -> Vec<(String, u32)> {
    FIGURES
        .iter()
        .map(|(n, k)| (n.to_string(), figure_datatype(*k)))
        .collect()
}

impl Model {
    /// The devices of `cfg` (in device order: the health watch's indices) with their tags
    /// and the alarms the compiled rules hold on them.
    pub fn from_config(cfg: &Config) -> Model {
        // The cells exactly as the report task finds them (None: no report published).
        let report = cfg.report.options.enabled.then(|| {
            Reports::from_spec(&cfg.spec, cfg.report.options.clone(), &cfg.agent.timezone)
        });
        let mut devices: Vec<DeviceModel> = cfg
            .devices
            .iter()
            .map(|d| DeviceModel {
                name: d.name.clone(),
                tags: d
                    .tags
                    .iter()
                    .map(|t| (t.name.clone(), tag_datatype(&t.encoding)))
                    .collect(),
                alarms: Vec::new(),
                figures: if report.as_ref().is_some_and(|r| r.is_cell(&d.name)) {
                    report_figures()
                } else {
                    Vec::new()
                },
            })
            .collect();
        for rule in cfg.spec.rules() {
            for inst in &rule.instances {
                let Some(spec_dev) = cfg.spec.devices().get(inst.device as usize) else {
                    continue;
                };
                // Spec devices are named like the configured ones; match by name, not index.
                if let Some(d) = devices.iter_mut().find(|d| *d.name == *spec_dev.name) {
                    if !d.alarms.iter().any(|a| **a == *rule.name) {
                        d.alarms.push(rule.name.to_string());
                    }
                }
            }
        }
        // The area's report (`_area`) is the node's: its figures are node metrics.
        let node = if report.as_ref().is_some_and(Reports::has_cells) {
            report_figures()
                .into_iter()
                .map(|(name, datatype)| NodeMetric { name, datatype })
                .collect()
        } else {
            Vec::new()
        };
        Model { node, devices }
    }
}
