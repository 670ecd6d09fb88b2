//! The Sparkplug tests' device and agent (tests/it/sparkplug.rs, tests/interop/sparkplug.rs).

use super::agent::{Agent, Dev};
use super::modbus::{f32_words, Device, Served};

/// pot-1: voltage (u16 x0.1 V: Double), count (u16: UInt16), temp (f32: Float); a high
/// voltage alarm at 8 V.
pub fn sparkplug_agent(state: &std::path::Path, dev: &Served, sink: &str) -> Agent {
    Agent::new("gw")
        .state_dir(state)
        .sinks(sink)
        .section("[alarms]\nflood_threshold = 100000")
        .device(
            Dev::tcp("pot-1", dev.addr)
                .unit(1)
                .poll("100ms")
                .timeout("500ms")
                .tags(r#"[
                    { name = "voltage", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "V" },
                    { name = "count", table = "holding", address = 1, type = "u16", unit = "" },
                    { name = "temp", table = "holding", address = 2, type = "f32", unit = "C" },
                ]"#),
        )
        .rule("[[rules]]\nname = \"hi\"\ndevices = [\"pot-1\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\npriority = \"high\"")
}

pub fn serve(v: f64, count: u16, temp: f32) -> Device {
    let d = Device::default();
    set(&d, v, count, temp);
    d
}

pub fn set(d: &Device, v: f64, count: u16, temp: f32) {
    let t = f32_words(temp, "ABCD");
    d.set_holding(1, 0, &[(v * 10.0).round() as u16, count, t[0], t[1]]);
}
