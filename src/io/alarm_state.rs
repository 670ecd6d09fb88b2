//! The alarm state file, `<state_dir>/alarm-state.json`: what the engine's alarms were when
//! the agent stopped or crashed, restored before the first poll (docs/MQTT.md, "Alarm state
//! across restarts").

/// The file's name in `state_dir`.
pub const FILE: &str = "alarm-state.json";
