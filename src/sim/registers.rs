//! The register map: model signals → Modbus register images, per device kind.
//!
//! One table of [`TagDef`]s per kind is the single source of truth: the images, the shipped
//! alsentry templates (`config/templates/*.toml`) and the map in `docs/SIMULATOR.md` are all
//! generated from it (a test keeps the files in step).

use std::fmt::Write as _;

use super::scenario::DeviceKind;
use super::{calciner, cell, kiln, react};

/// The Modbus tables: the agent's own type, so the simulator serves what the agent reads.
pub use crate::core::decode::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Bool,
    U16,
    I16,
    U32,
    F32,
}

impl Ty {
    pub fn as_str(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::U16 => "u16",
            Ty::I16 => "i16",
            Ty::U32 => "u32",
            Ty::F32 => "f32",
        }
    }

    fn words(self) -> u16 {
        match self {
            Ty::U32 | Ty::F32 => 2,
            _ => 1,
        }
    }
}

/// Word/byte order of a 32-bit value, named after the bytes of the big-endian value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Abcd => "ABCD",
            Order::Cdab => "CDAB",
            Order::Badc => "BADC",
            Order::Dcba => "DCBA",
        }
    }
}

/// Lay out the 4 bytes of a big-endian 32-bit value as two registers in `order`.
pub fn words32(bits: u32, order: Order) -> [u16; 2] {
    let [a, b, c, d] = bits.to_be_bytes();
    let w = |x: u8, y: u8| u16::from_be_bytes([x, y]);
    match order {
        Order::Abcd => [w(a, b), w(c, d)],
        Order::Cdab => [w(c, d), w(a, b)],
        Order::Badc => [w(b, a), w(d, c)],
        Order::Dcba => [w(d, c), w(b, a)],
    }
}

/// One documented point. `scale` follows the agent's convention: engineering = raw × scale.
#[derive(Debug, Clone, Copy)]
pub struct TagDef {
    pub name: &'static str,
    pub table: Table,
    pub address: u16,
    pub ty: Ty,
    pub order: Order,
    pub scale: f64,
    pub unit: &'static str,
    pub bit: Option<u8>,
    /// Index into the model's signal array.
    pub signal: usize,
    pub meaning: &'static str,
    pub normal: &'static str,
    pub source: &'static str,
}

#[allow(clippy::too_many_arguments)]
const fn tag(
    name: &'static str,
    table: Table,
    address: u16,
    ty: Ty,
    order: Order,
    scale: f64,
    unit: &'static str,
    signal: usize,
    meaning: &'static str,
    normal: &'static str,
    source: &'static str,
) -> TagDef {
    TagDef {
        name,
        table,
        address,
        ty,
        order,
        scale,
        unit,
        bit: None,
        signal,
        meaning,
        normal,
        source,
    }
}

const fn bit(
    name: &'static str,
    table: Table,
    address: u16,
    bit: u8,
    signal: usize,
    meaning: &'static str,
) -> TagDef {
    TagDef {
        name,
        table,
        address,
        ty: Ty::Bool,
        order: Order::Abcd,
        scale: 1.0,
        unit: "",
        bit: Some(bit),
        signal,
        meaning,
        normal: "",
        source: "[U]",
    }
}

use Order::*;
use Table::{Holding, Input};
use Ty::*;

#[rustfmt::skip]
pub const CELL_MAP: &[TagDef] = {
    use cell::sig as s;
    &[
        tag("voltage", Input, 0, F32, Cdab, 1.0, "V", s::VOLTAGE, "cell voltage", "3.9–4.3 (AE 10–40)", "[S] TRIMET, Qatalum; AE [S] TRIMET"),
        tag("current", Input, 2, F32, Cdab, 1.0, "kA", s::CURRENT, "line current seen by the cell", "setpoint ±1 %", "[S] 300–640 kA Fastmarkets; ripple [U]"),
        tag("bath_temp", Input, 4, I16, Abcd, 0.1, "degC", s::BATH_TEMP, "bath temperature", "945–965", "[S] Qatalum; spread [U]"),
        tag("alumina", Input, 5, U16, Abcd, 0.01, "wt%", s::ALUMINA, "alumina concentration (model estimate)", "2.6–3.4 (2–4)", "[S] liquidus paper; band [U]"),
        tag("resistance", Input, 6, U16, Abcd, 0.001, "uOhm", s::RESISTANCE, "pseudo-resistance (V−1.65)/I", "3.7–6.6", "[S] Banta 2003, [D]"),
        tag("status", Input, 7, U16, Abcd, 1.0, "", s::STATUS, "status bits (below)", "", "[U]"),
        bit("feeding", Input, 7, 0, s::STATUS, "a feed shot is being delivered (2 s)"),
        bit("ae_active", Input, 7, 1, s::STATUS, "anode effect in progress"),
        bit("overfeed", Input, 7, 2, s::STATUS, "controller in overfeed"),
        bit("underfeed", Input, 7, 3, s::STATUS, "controller in underfeed (or feeding stopped)"),
        bit("line_low", Input, 7, 4, s::STATUS, "line current below 97 % of setpoint"),
        bit("tapping", Input, 7, 5, s::STATUS, "controller: metal tapping in progress"),
        bit("anode_change", Input, 7, 6, s::STATUS, "controller: anode change in progress"),
        tag("heartbeat", Input, 8, U16, Abcd, 1.0, "", s::HEARTBEAT, "+1 every model tick (100 ms), wraps", "changing", "[U]"),
        tag("voltage_mv", Input, 9, U16, Abcd, 0.001, "V", s::VOLTAGE, "cell voltage as integer mV", "3900–4300", "[U] encoding"),
        tag("line_current", Input, 10, F32, Abcd, 1.0, "kA", s::CURRENT, "line current, big-endian float", "setpoint ±1 %", "[U]"),
        tag("voltage_badc", Input, 12, F32, Badc, 1.0, "V", s::VOLTAGE, "cell voltage, byte-swapped float", "3.9–4.3", "[U] encoding"),
        tag("resistance_dcba", Input, 14, F32, Dcba, 1.0, "uOhm", s::RESISTANCE, "pseudo-resistance, little-endian float", "3.7–6.6", "[D]"),
        tag("beam_position", Input, 16, F32, Cdab, 1.0, "mm", s::BEAM_POSITION, "anode beam position (up = larger)", "100–350", "[U]"),
        tag("line_current_int", Input, 20, U16, Abcd, 0.1, "kA", s::CURRENT, "line current in 0.1 kA", "setpoint ±1 %", "[U] encoding"),
        tag("voltage_target", Holding, 0, U16, Abcd, 0.001, "V", s::VOLTAGE_TARGET, "controller voltage target", "4.0–4.25", "[U]"),
        tag("line_setpoint", Holding, 1, U16, Abcd, 0.1, "kA", s::LINE_SETPOINT, "potline current setpoint", "400–600", "[S] Fastmarkets"),
        tag("feed_count", Holding, 10, U32, Abcd, 1.0, "", s::FEED_COUNT, "feed shots since commissioning", "+1 per shot (~15–36 s)", "[U]"),
        tag("ae_count", Holding, 12, U16, Abcd, 1.0, "", s::AE_COUNT, "anode effects since commissioning", "+1 per AE", "[U]"),
        tag("uptime", Holding, 13, U32, Cdab, 1.0, "s", s::UPTIME, "seconds since the simulator started", "increasing", "[U]"),
        tag("feed_request", Holding, react::FEED_REQUEST_ADDR, U16, Abcd, 1.0, "", react::FEED_REQUEST, "writable: 1 = extra feeding, ends an alumina depletion (disposal)", "0", "[U]"),
        tag("quench_request", Holding, react::QUENCH_REQUEST_ADDR, U16, Abcd, 1.0, "", react::QUENCH_REQUEST, "writable: 1 = quench routine, ends an anode effect (disposal)", "0", "[U]"),
    ]
};

#[rustfmt::skip]
pub const KILN_MAP: &[TagDef] = {
    use kiln::sig as s;
    &[
        tag("flue_temp", Holding, 0, U16, Abcd, 0.1, "degC", s::FLUE_TEMP, "flue gas temperature of the section", "heating curve, peak 1,200", "[S] ALUMAR peak; curve [U]"),
        tag("draft", Holding, 1, I16, Abcd, 1.0, "Pa", s::DRAFT, "firing-zone flue pressure", "−20 to −40 (−10 to −50)", "[U] Lindsay concept"),
        tag("curve_temp", Holding, 2, U16, Abcd, 0.1, "degC", s::CURVE_TEMP, "heating-curve setpoint", "curve", "[U]"),
        tag("heating_rate", Holding, 3, I16, Abcd, 0.1, "degC/h", s::HEATING_RATE, "flue temperature gradient", "8–15 in preheat", "[U]"),
        tag("co", Holding, 4, U16, Abcd, 1.0, "ppm", s::CO, "exhaust CO", "<500 (~150)", "[U]"),
        tag("o2", Holding, 5, U16, Abcd, 0.01, "%", s::O2, "exhaust O2", "~6", "[U]"),
        tag("exhaust_draft", Holding, 6, I16, Abcd, 1.0, "Pa", s::EXHAUST_DRAFT, "exhaust manifold pressure", "−150 to −300", "[U]"),
        tag("status", Holding, 7, U16, Abcd, 1.0, "", s::STATUS, "status bits (below)", "", "[U]"),
        bit("firing", Holding, 7, 0, s::STATUS, "section in the firing zone"),
        bit("preheat", Holding, 7, 1, s::STATUS, "section in preheat"),
        bit("draft_low", Holding, 7, 2, s::STATUS, "flue pressure above −5 Pa"),
        tag("heartbeat", Holding, 8, U16, Abcd, 1.0, "", s::HEARTBEAT, "+1 every model tick (100 ms), wraps", "changing", "[U]"),
        tag("flue_temp_f32", Holding, 10, F32, Dcba, 1.0, "degC", s::FLUE_TEMP, "flue temperature, little-endian float", "curve", "[U] encoding"),
        tag("cycle_elapsed", Holding, 12, U32, Cdab, 1.0, "s", s::CYCLE_ELAPSED, "seconds into the section's 140 h cycle", "0–504,000", "[U]"),
    ]
};

#[rustfmt::skip]
pub const CALCINER_MAP: &[TagDef] = {
    use calciner::sig as s;
    &[
        tag("furnace_temp", Input, 0, F32, Abcd, 1.0, "degC", s::FURNACE_TEMP, "furnace temperature", "950–1,100", "[S] g7eq; setpoint [U]"),
        tag("o2", Input, 2, U16, Abcd, 0.01, "%", s::O2, "exit O2", "1.5–4 (~2.8)", "[U]"),
        tag("co", Input, 3, U16, Abcd, 1.0, "ppm", s::CO, "exit CO", "<200 (~80)", "[U]"),
        tag("draft", Input, 4, I16, Abcd, 1.0, "Pa", s::DRAFT, "ID-fan draft", "−1,600 to −2,200 (site)", "[U]"),
        tag("cyclone_dp", Input, 5, I16, Abcd, 1.0, "Pa", s::CYCLONE_DP, "cyclone differential pressure", "1,000–1,400 (site)", "[U]"),
        tag("status", Input, 6, U16, Abcd, 1.0, "", s::STATUS, "status bits (below)", "", "[U]"),
        bit("running", Input, 6, 0, s::STATUS, "calciner running"),
        bit("draft_low", Input, 6, 1, s::STATUS, "draft below half its normal suction"),
        bit("co_high", Input, 6, 2, s::STATUS, "CO above 1,000 ppm"),
        tag("heartbeat", Input, 7, U16, Abcd, 1.0, "", s::HEARTBEAT, "+1 every model tick (100 ms), wraps", "changing", "[U]"),
        tag("production", Input, 8, U32, Cdab, 1.0, "kg", s::PRODUCTION, "calcined alumina produced", "+18–28 kg/s", "[U] (300–3,800 t/d [S])"),
        tag("setpoint", Input, 11, U16, Abcd, 0.1, "degC", s::SETPOINT, "furnace temperature setpoint", "980–1,050", "[U]"),
    ]
};

/// Unmapped addresses inside each map's span, kept on purpose so clients meet exception 02.
pub fn gaps(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cell => "input 18–19, holding 2–9",
        DeviceKind::Kiln => "holding 9",
        DeviceKind::Calciner => "input 10",
    }
}

pub fn map(kind: DeviceKind) -> &'static [TagDef] {
    match kind {
        DeviceKind::Cell => CELL_MAP,
        DeviceKind::Kiln => KILN_MAP,
        DeviceKind::Calciner => CALCINER_MAP,
    }
}

/// Which addresses of which table exist for a kind. Computed once per kind.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub input: Vec<bool>,
    pub holding: Vec<bool>,
    /// Discrete inputs mirror the status bits (one per bit tag, address = bit number).
    pub discrete: Vec<bool>,
}

impl Layout {
    pub fn for_kind(kind: DeviceKind) -> Layout {
        let mut l = Layout::default();
        for t in map(kind) {
            let v = match t.table {
                Table::Input => &mut l.input,
                Table::Holding => &mut l.holding,
                _ => continue,
            };
            let end = usize::from(t.address + t.ty.words());
            if v.len() < end {
                v.resize(end, false);
            }
            for a in t.address..t.address + t.ty.words() {
                v[usize::from(a)] = true;
            }
            if let Some(b) = t.bit {
                let b = usize::from(b);
                if l.discrete.len() <= b {
                    l.discrete.resize(b + 1, false);
                }
                l.discrete[b] = true;
            }
        }
        l
    }
}

/// Register contents of one device at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Image {
    pub input: Vec<u16>,
    pub holding: Vec<u16>,
    pub discrete: Vec<bool>,
}

fn scaled_u16(v: f64, scale: f64) -> u16 {
    if v.is_nan() {
        return 0xFFFF;
    }
    (v / scale).round().clamp(0.0, 65535.0) as u16
}

fn scaled_i16(v: f64, scale: f64) -> u16 {
    if v.is_nan() {
        return 0x8000;
    }
    ((v / scale).round().clamp(-32768.0, 32767.0) as i16) as u16
}

fn scaled_u32(v: f64, scale: f64) -> u32 {
    if v.is_nan() {
        return u32::MAX;
    }
    // Counters wrap like the real thing.
    ((v / scale).round().max(0.0) as u64 % (1u64 << 32)) as u32
}

/// Encode model signals into a register image.
pub fn encode(kind: DeviceKind, layout: &Layout, signals: &[f64], image: &mut Image) {
    image.input.resize(layout.input.len(), 0);
    image.holding.resize(layout.holding.len(), 0);
    image.discrete.resize(layout.discrete.len(), false);
    for t in map(kind) {
        let v = signals.get(t.signal).copied().unwrap_or(f64::NAN);
        if let Some(b) = t.bit {
            if let Some(d) = image.discrete.get_mut(usize::from(b)) {
                *d = !v.is_nan() && (v as u32 >> b) & 1 == 1;
            }
            continue;
        }
        let regs = match t.table {
            Table::Input => &mut image.input,
            Table::Holding => &mut image.holding,
            _ => continue,
        };
        let a = usize::from(t.address);
        match t.ty {
            Ty::U16 => regs[a] = scaled_u16(v, t.scale),
            Ty::I16 => regs[a] = scaled_i16(v, t.scale),
            Ty::U32 => regs[a..a + 2].copy_from_slice(&words32(scaled_u32(v, t.scale), t.order)),
            Ty::F32 => {
                regs[a..a + 2].copy_from_slice(&words32(((v / t.scale) as f32).to_bits(), t.order))
            }
            Ty::Bool => {}
        }
    }
}

fn fmt_scale(s: f64) -> String {
    let mut out = format!("{s}");
    if !out.contains('.') && !out.contains('e') {
        out.push_str(".0");
    }
    out
}

/// The alsentry template for a kind, in the agent's config syntax.
pub fn template_toml(kind: DeviceKind) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Register map of the simulated {} (`alsentry sim`). Generated from src/sim/registers.rs;",
        kind.as_str()
    );
    let _ = writeln!(
        out,
        "# see docs/SIMULATOR.md. Unmapped on purpose (exception 02): {}.",
        gaps(kind)
    );
    let _ = writeln!(out, "[templates.{}]", kind.as_str());
    let _ = writeln!(out, "tags = [");
    for t in map(kind) {
        let mut fields = vec![
            format!("name = \"{}\"", t.name),
            format!("table = \"{}\"", t.table.as_str()),
            format!("address = {}", t.address),
            format!("type = \"{}\"", t.ty.as_str()),
        ];
        if t.ty.words() == 2 {
            fields.push(format!("order = \"{}\"", t.order.as_str()));
        }
        if let Some(b) = t.bit {
            fields.push(format!("bit = {b}"));
        }
        if t.scale != 1.0 {
            fields.push(format!("scale = {}", fmt_scale(t.scale)));
        }
        if !t.unit.is_empty() {
            fields.push(format!("unit = \"{}\"", t.unit));
        }
        let _ = writeln!(out, "  {{ {} }},", fields.join(", "));
    }
    let _ = writeln!(out, "]");
    out
}

/// The map as a Markdown table for docs/SIMULATOR.md.
pub fn markdown_table(kind: DeviceKind) -> String {
    let mut out = String::from(
        "| Register | Table | Type | Order | Scale | Unit | Name: meaning | Normal | Source |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in map(kind) {
        let reg = match (t.ty.words(), t.bit) {
            (_, Some(b)) => format!("{}.{b}", t.address),
            (2, None) => format!("{}–{}", t.address, t.address + 1),
            _ => t.address.to_string(),
        };
        let order = if t.ty.words() == 2 {
            t.order.as_str()
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {reg} | {} | {} | {order} | {} | {} | `{}`: {} | {} | {} |",
            t.table.as_str(),
            t.ty.as_str(),
            fmt_scale(t.scale),
            t.unit,
            t.name,
            t.meaning,
            t.normal,
            t.source
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_orders_match_the_test_vector() {
        let bits = 123456.0f32.to_bits();
        assert_eq!(bits, 0x47F1_2000);
        assert_eq!(words32(bits, Order::Abcd), [0x47F1, 0x2000]);
        assert_eq!(words32(bits, Order::Cdab), [0x2000, 0x47F1]);
        assert_eq!(words32(bits, Order::Badc), [0xF147, 0x0020]);
        assert_eq!(words32(bits, Order::Dcba), [0x0020, 0xF147]);
    }

    #[test]
    fn maps_do_not_overlap() {
        for kind in [DeviceKind::Cell, DeviceKind::Kiln, DeviceKind::Calciner] {
            let mut seen = std::collections::HashSet::new();
            for t in map(kind).iter().filter(|t| t.bit.is_none()) {
                for a in t.address..t.address + t.ty.words() {
                    assert!(seen.insert((t.table, a)), "{kind:?} {} overlaps", t.name);
                }
            }
        }
    }

    #[test]
    fn nan_encodes_to_sentinels() {
        assert_eq!(scaled_u16(f64::NAN, 0.1), 0xFFFF);
        assert_eq!(scaled_i16(f64::NAN, 0.1), 0x8000);
        assert_eq!(scaled_i16(-25.0, 1.0), (-25i16) as u16);
        assert_eq!(scaled_u16(4.2, 0.001), 4200);
    }
}
