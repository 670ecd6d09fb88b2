//! The read plan of a configured device: its tags as spans of the Modbus tables, within the
//! device's request limits. The poller reads by it; `check --explain` prints it.

use crate::config::Device;
use crate::core::plan::{Limits, Planner, TagSpan};

pub fn planner_for(d: &Device) -> Planner {
    let spans = d
        .tags
        .iter()
        .map(|t| TagSpan {
            table: t.encoding.table,
            start: t.address,
            width: t.encoding.width(),
        })
        .collect();
    Planner::new(
        spans,
        Limits {
            max_gap: d.max_gap,
            max_registers: d.max_registers,
            max_bits: d.max_bits,
        },
    )
}
