//! `alsentry check --explain`: how each device will be read. Only prints; the plan comes from
//! the acquisition layer ([`crate::io::read_plan`]).

use std::fmt::Write;

use crate::config::Config;
use crate::io::read_plan::planner_for;

/// The Modbus reads of every device, as the pollers will make them.
pub fn read_plan(cfg: &Config) -> String {
    let mut s = String::new();
    for d in &cfg.devices {
        let planner = planner_for(d);
        let _ = writeln!(
            s,
            "{} ({} unit {}, every {}, timeout {}): {} reads",
            d.name,
            d.endpoint,
            d.unit,
            crate::config::units::format_duration_ms(d.poll_ms),
            crate::config::units::format_duration_ms(d.timeout_ms),
            planner.blocks().len()
        );
        for b in planner.blocks() {
            let names: Vec<&str> = b.tags.iter().map(|&i| d.tags[i].name.as_str()).collect();
            let fc = match b.table {
                crate::core::decode::Table::Coil => "FC01",
                crate::core::decode::Table::Discrete => "FC02",
                crate::core::decode::Table::Holding => "FC03",
                crate::core::decode::Table::Input => "FC04",
            };
            let _ = writeln!(
                s,
                "  {fc} {} {}..{} ({} {}): {}",
                b.table,
                b.start,
                u32::from(b.start) + u32::from(b.count) - 1,
                b.count,
                if b.table.is_bits() {
                    "bits"
                } else {
                    "registers"
                },
                names.join(", ")
            );
        }
    }
    s
}
