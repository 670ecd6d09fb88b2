//! Scenario files: the plant layout and a timeline of faults (TOML, `config/scenarios/`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::{FaultKind, FaultSpec};
pub use super::schedule::ScheduleCfg;
use crate::core::duration;
use crate::core::expand::{self, parse_int_ranges, Var};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cell,
    Kiln,
    Calciner,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cell => "cell",
            DeviceKind::Kiln => "kiln",
            DeviceKind::Calciner => "calciner",
        }
    }

    /// Signal names of the model, in index order.
    pub fn signals(self) -> &'static [&'static str] {
        match self {
            DeviceKind::Cell => &super::cell::sig::NAMES,
            DeviceKind::Kiln => &super::kiln::sig::NAMES,
            DeviceKind::Calciner => &super::calciner::sig::NAMES,
        }
    }
}

/// `[plant]`: global settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlantCfg {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Model step, e.g. "100ms". Values are a function of seed and step index only.
    #[serde(default = "default_tick")]
    pub tick: String,
    /// Default potline current setpoint for cell groups, kA.
    #[serde(default = "default_line")]
    pub line_current_ka: f64,
    /// Cells that behave like a plant's (controller, beam moves, feeding cycle, cell-to-cell
    /// variation; docs/SIMULATOR.md "Realistic cells"). Off: the ideal cell of earlier releases.
    #[serde(default)]
    pub realism: bool,
}

fn default_seed() -> u64 {
    1
}
fn default_tick() -> String {
    "100ms".to_string()
}
fn default_line() -> f64 {
    500.0
}

impl Default for PlantCfg {
    fn default() -> Self {
        PlantCfg {
            name: String::new(),
            seed: default_seed(),
            tick: default_tick(),
            line_current_ka: default_line(),
            realism: false,
        }
    }
}

/// `[[groups]]`: a set of devices of one kind behind one gateway or one port each.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCfg {
    /// Group id, used to target faults at a whole group (a potline, a furnace).
    pub id: String,
    pub kind: DeviceKind,
    /// Device name pattern: `{unit}`, `{index}` (1-based), `{port}`, with optional `:03` padding.
    pub name: String,
    /// Gateway layout: one TCP endpoint, unit ids from `units` (or 1..=count).
    pub listen: Option<String>,
    pub units: Option<String>,
    pub count: Option<u32>,
    /// Port-per-device layout: `host` + `ports = "5100-5499"`, each device on `unit` (default 1).
    pub host: Option<String>,
    pub ports: Option<String>,
    pub unit: Option<u8>,
    /// Also serve these devices over Modbus RTU on this serial device (same unit ids).
    pub serial: Option<String>,
    pub baud: Option<u32>,
    /// Cell groups: this potline's current setpoint, kA (default `[plant] line_current_ka`).
    pub line_current_ka: Option<f64>,
}

/// `[[faults]]`: one fault on chosen devices at a time offset.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultCfg {
    pub kind: String,
    /// Device names or group ids. Line faults take cell group ids (or any cell of the line).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Offset from the simulator start, e.g. "90s", "10m".
    pub at: String,
    pub duration: String,
    #[serde(default)]
    pub params: toml::Table,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    plant: PlantCfg,
    #[serde(default)]
    groups: Vec<GroupCfg>,
    #[serde(default)]
    faults: Vec<FaultCfg>,
    schedule: Option<ScheduleCfg>,
}

/// One simulated device after expansion.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub kind: DeviceKind,
    pub group: usize,
    pub unit: u8,
    /// Listener key: the configured TCP address (several devices can share one).
    pub listen: String,
    /// Port-per-device layout: the device answers any unit id on its port.
    pub own_port: bool,
}

/// A parsed, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub plant: PlantCfg,
    pub groups: Vec<GroupCfg>,
    pub tick: Duration,
    pub devices: Vec<DeviceSpec>,
    /// The scripted `[[faults]]` (the `[schedule]`'s depend on the seed: [`Self::faults_for_seed`]).
    pub faults: Vec<FaultSpec>,
    pub schedule: Option<ScheduleCfg>,
}

/// Expands `{unit}`, `{index}`, `{port}` with optional zero padding (`{unit:03}`), as the
/// agent expands its `[[devices]]` names.
pub fn expand_name(pattern: &str, vars: &[(&str, u32)]) -> Result<String, String> {
    let vars: Vec<(&str, Var<'_>)> = vars
        .iter()
        .map(|(n, v)| (*n, Var::Int(u64::from(*v))))
        .collect();
    expand::fill(pattern, &vars).map_err(|e| e.to_string())
}

/// A duration in the agent's grammar ("100ms", "90s", "1h30m").
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, ScenarioError> {
    duration::parse_duration(s).map_err(|e| invalid(format!("{what}: {e}")))
}

impl Scenario {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text).map_err(|e| match e {
            ScenarioError::Invalid(m) => invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text)
    }

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text)?;
        let tick = parse_duration("[plant] tick", &file.plant.tick)?;
        if tick < Duration::from_millis(10) || tick > Duration::from_secs(10) {
            return Err(invalid("[plant] tick must be between 10ms and 10s"));
        }
        if file.groups.is_empty() {
            return Err(invalid("no [[groups]]: the plant has no devices"));
        }
        let mut devices = Vec::new();
        let mut group_ids = HashMap::new();
        for (gi, g) in file.groups.iter().enumerate() {
            let ctx = |m: String| invalid(format!("group `{}`: {m}", g.id));
            if group_ids.insert(g.id.clone(), gi).is_some() {
                return Err(ctx("duplicate group id".into()));
            }
            match (&g.listen, &g.ports) {
                (Some(listen), None) => {
                    let units: Vec<u32> = match (&g.units, g.count) {
                        (Some(u), _) => parse_int_ranges(u, 1, 247).map_err(|e| {
                            ctx(format!("units: {e}; use `ports` for more devices"))
                        })?,
                        (None, Some(n)) if (1..=247).contains(&n) => (1..=n).collect(),
                        (None, Some(n)) if n > 0 => {
                            return Err(ctx(format!(
                                "unit ids must be within 1-247 (count {n}); use `ports` for more devices"
                            )))
                        }
                        _ => return Err(ctx("give `units = \"1-8\"` or `count`".into())),
                    };
                    if let Some(n) = g.count {
                        if n as usize != units.len() {
                            return Err(ctx("`count` disagrees with `units`".into()));
                        }
                    }
                    for (i, &u) in units.iter().enumerate() {
                        let name = expand_name(&g.name, &[("unit", u), ("index", i as u32 + 1)])
                            .map_err(ctx)?;
                        devices.push(DeviceSpec {
                            name,
                            kind: g.kind,
                            group: gi,
                            unit: u as u8,
                            listen: listen.clone(),
                            own_port: false,
                        });
                    }
                }
                (None, Some(ports)) => {
                    let ports = parse_int_ranges(ports, 1, 65_535)
                        .map_err(|e| ctx(format!("ports: {e}")))?;
                    let host = g.host.clone().unwrap_or_else(|| "127.0.0.1".to_string());
                    let unit = g.unit.unwrap_or(1);
                    for (i, &p) in ports.iter().enumerate() {
                        let name = expand_name(
                            &g.name,
                            &[
                                ("unit", u32::from(unit)),
                                ("index", i as u32 + 1),
                                ("port", p),
                            ],
                        )
                        .map_err(ctx)?;
                        devices.push(DeviceSpec {
                            name,
                            kind: g.kind,
                            group: gi,
                            unit,
                            listen: format!("{host}:{p}"),
                            own_port: true,
                        });
                    }
                }
                _ => {
                    return Err(ctx(
                        "give exactly one of `listen` (gateway) or `ports` (one port per device)"
                            .into(),
                    ))
                }
            }
            if g.serial.is_some() && g.ports.is_some() {
                return Err(ctx(
                    "`serial` needs the gateway layout (`listen` + `units`)".into(),
                ));
            }
        }
        let mut names = HashMap::new();
        for (i, d) in devices.iter().enumerate() {
            if let Some(j) = names.insert(d.name.clone(), i) {
                return Err(invalid(format!(
                    "device name `{}` is used twice (devices {j} and {i}); fix the name patterns",
                    d.name
                )));
            }
        }
        // Several groups may share a gateway; unit ids must then not collide.
        let mut seen = HashMap::new();
        for d in devices.iter().filter(|d| !d.own_port) {
            if let Some(other) = seen.insert((d.listen.clone(), d.unit), d.name.clone()) {
                return Err(invalid(format!(
                    "`{}` and `{other}` both answer unit {} on {}",
                    d.name, d.unit, d.listen
                )));
            }
        }
        let mut faults = Vec::new();
        for (i, f) in file.faults.iter().enumerate() {
            let spec = FaultSpec::resolve(i, f, &file.groups, &group_ids, &devices, &names, tick)
                .map_err(|m| invalid(format!("fault #{} ({}): {m}", i + 1, f.kind)))?;
            faults.push(spec);
        }
        if let Some(sch) = &file.schedule {
            // Expanding once here reports schedule errors at load time, not at run time.
            sch.expand(file.plant.seed, faults.len(), &file.groups, &devices, tick)
                .map_err(invalid)?;
        }
        Ok(Scenario {
            plant: file.plant,
            groups: file.groups,
            tick,
            devices,
            faults,
            schedule: file.schedule,
        })
    }

    /// Every fault a run with `seed` has: the scripted ones, then the `[schedule]`'s.
    pub fn faults_for_seed(&self, seed: u64) -> Vec<FaultSpec> {
        let mut all = self.faults.clone();
        if let Some(sch) = &self.schedule {
            match sch.expand(seed, all.len(), &self.groups, &self.devices, self.tick) {
                Ok(more) => all.extend(more),
                // Validated at load with the scenario's seed; another seed cannot fail it.
                Err(e) => tracing::warn!("scenario schedule: {e}"),
            }
        }
        all
    }

    /// How long a run must last to see every fault of `seed` end (for tools that stop on it).
    pub fn end_for_seed(&self, seed: u64) -> Duration {
        let last = self
            .faults_for_seed(seed)
            .iter()
            .map(|f| f.end_tick)
            .max()
            .unwrap_or(0);
        let horizon = self
            .schedule
            .as_ref()
            .and_then(|s| s.horizon().ok())
            .unwrap_or_default();
        Duration::from_nanos((self.tick.as_nanos() as u64).saturating_mul(last)).max(horizon)
    }

    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }

    /// Kinds of fault used, for listing.
    pub fn fault_kinds(&self) -> Vec<&'static str> {
        self.faults.iter().map(|f| f.kind.name()).collect()
    }
}

impl std::str::FromStr for Scenario {
    type Err = ScenarioError;

    fn from_str(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text)
    }
}

/// Default for signal-level sensor faults when the scenario names none.
pub fn default_signal(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cell => "voltage",
        DeviceKind::Kiln => "flue_temp",
        DeviceKind::Calciner => "furnace_temp",
    }
}

pub(crate) fn kind_accepts(kind: DeviceKind, fault: &FaultKind) -> bool {
    use FaultKind::*;
    match fault {
        AnodeEffect { .. }
        | NoiseBurst { .. }
        | HotCell { .. }
        | Tapping { .. }
        | AnodeChange { .. }
        | BeamMove { .. } => kind == DeviceKind::Cell,
        LineCurrentDrop { .. } | PotlineOutage => kind == DeviceKind::Cell,
        CurveLag { .. } | DraftLoss { .. } | IncompleteCombustion { .. } => {
            kind != DeviceKind::Cell
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_expand_with_padding() {
        assert_eq!(
            expand_name("pot-{unit:03}", &[("unit", 7)]).unwrap(),
            "pot-007"
        );
        assert_eq!(
            expand_name("k{index}-{port}", &[("index", 2), ("port", 5101)]).unwrap(),
            "k2-5101"
        );
        assert!(expand_name("pot-{nope}", &[("unit", 1)]).is_err());
    }

    #[test]
    fn gateway_and_port_layouts_expand() {
        let s = Scenario::from_str(
            r#"
            [[groups]]
            id = "line1"
            kind = "cell"
            name = "pot-{unit:03}"
            listen = "127.0.0.1:5020"
            units = "1-3"
            [[groups]]
            id = "kilns"
            kind = "kiln"
            name = "kiln-{index:02}"
            host = "127.0.0.1"
            ports = "6000-6001"
            "#,
        )
        .unwrap();
        let names: Vec<_> = s.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["pot-001", "pot-002", "pot-003", "kiln-01", "kiln-02"]
        );
        assert_eq!(s.devices[4].listen, "127.0.0.1:6001");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Scenario::from_str(
            r#"
            [[groups]]
            id = "g"
            kind = "cell"
            name = "pot-{unit}"
            listen = "127.0.0.1:5020"
            count = 2
            [[faults]]
            kind = "anode_effect"
            devices = ["pot-9"]
            at = "1s"
            duration = "20m"
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pot-9"), "{e}");
        let e = Scenario::from_str(
            r#"
            [[groups]]
            id = "g"
            kind = "kiln"
            name = "k{unit}"
            listen = "127.0.0.1:5021"
            count = 1
            [[faults]]
            kind = "draft_loss"
            devices = ["g"]
            at = "1s"
            duration = "5s"
            params = { to_pascal = 3.0 }
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fault #1 (draft_loss)") && e.contains("to_pascal"),
            "{e}"
        );
        let e = Scenario::from_str("[[groups]]\nid='g'\nkind='oven'\nname='x'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oven"), "{e}");
    }

    #[test]
    fn realism_keys_are_checked() {
        let base = "[[groups]]\nid = \"g\"\nkind = \"cell\"\nname = \"pot-{unit}\"\nlisten = \"127.0.0.1:5020\"\ncount = 2\n";
        let fault = |kind: &str, dur: &str, params: &str| {
            Scenario::from_str(&format!(
                "{base}[[faults]]\nkind = \"{kind}\"\ndevices = [\"pot-1\"]\nat = \"1m\"\nduration = \"{dur}\"\nparams = {{ {params} }}\n"
            ))
        };
        let err =
            |kind: &str, dur: &str, params: &str| fault(kind, dur, params).unwrap_err().to_string();
        assert!(err(
            "anode_effect",
            "10m",
            "precursor_kind = \"none\", precursor = \"5m\""
        )
        .contains("0s"));
        assert!(err("anode_effect", "10m", "precursor_kind = \"slowish\"").contains("slowish"));
        assert!(err("anode_effect", "10m", "slope_from = 9.0, slope_to = 3.0").contains("slope"));
        assert!(err("anode_change", "5m", "flag = \"10m\"").contains("flag"));
        assert!(err("frozen", "5m", "sigma = 0.1").contains("sigma"));
        assert!(err("tapping", "5m", "rise = 0.1").contains("rise"));
        assert!(err("beam_move", "5s", "mm = 99.0").contains("mm"));
        // Defaults: the precursor kind follows the precursor's length.
        let kind_of =
            |params: &str| match fault("anode_effect", "30m", params).unwrap().faults[0].kind {
                FaultKind::AnodeEffect { precursor_kind, .. } => precursor_kind.as_str(),
                _ => unreachable!(),
            };
        assert_eq!(kind_of("precursor = \"10m\""), "slow");
        assert_eq!(kind_of("precursor = \"2m\""), "fast");
        assert_eq!(kind_of("precursor = \"0s\""), "none");
        assert_eq!(kind_of("precursor_kind = \"none\""), "none");
        let e = Scenario::from_str(&format!(
            "{base}[schedule]\nhorizon = \"2h\"\nslow_aes = 3\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("3 anode effects"), "{e}");
        let e = Scenario::from_str(&format!(
            "{base}[schedule]\nhorizon = \"6h\"\nline_dip = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("line_dip"), "{e}");
    }
}
