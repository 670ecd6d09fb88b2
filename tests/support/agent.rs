//! The one builder of agent configs for tests: `Agent::new("gw")...build()` gives a validated
//! `Config`, `.write(dir)` a file for the binary. Everything a test does not set is left to the
//! code's defaults, so a config shows only what its test is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use alsentry::config::Config;
use alsentry::sim::{DeviceKind, SimHandle};

/// Where built configs claim to live: relative includes resolve against the shipped
/// `config/` folder (its `templates/`).
fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/test-agent.toml")
}

#[derive(Debug, Clone)]
pub struct Agent {
    id: String,
    site: String,
    area: String,
    state_dir: Option<PathBuf>,
    shipped_templates: bool,
    sinks: String,
    sections: Vec<String>,
    devices: Vec<Dev>,
    rules: Vec<String>,
}

impl Agent {
    /// Agent `id` at site "s", area "a", no sink yet.
    pub fn new(id: &str) -> Agent {
        Agent {
            id: id.into(),
            site: "s".into(),
            area: "a".into(),
            state_dir: None,
            shipped_templates: false,
            sinks: String::new(),
            sections: Vec::new(),
            devices: Vec::new(),
            rules: Vec::new(),
        }
    }

    pub fn at(mut self, site: &str, area: &str) -> Agent {
        self.site = site.into();
        self.area = area.into();
        self
    }

    pub fn state_dir(mut self, dir: &Path) -> Agent {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// One `[mqtt]` sink at `url` with every other key at its default.
    pub fn mqtt(self, url: &str) -> Agent {
        self.sinks(&format!("[mqtt]\nurl = \"{url}\"\n"))
    }

    /// The sink tables as written (`[mqtt]` with more keys, or several `[[mqtt]]`).
    pub fn sinks(mut self, toml: &str) -> Agent {
        self.sinks = toml.to_string();
        self
    }

    /// Includes the shipped register maps (config/templates/{cell,kiln,calciner}.toml).
    pub fn shipped_templates(mut self) -> Agent {
        self.shipped_templates = true;
        self
    }

    /// A whole table as written: `[alarms]`, `[data]`, `[http]`, `[templates.x]`...
    pub fn section(mut self, toml: &str) -> Agent {
        self.sections.push(toml.to_string());
        self
    }

    pub fn device(mut self, d: Dev) -> Agent {
        self.devices.push(d);
        self
    }

    pub fn devices(mut self, ds: impl IntoIterator<Item = Dev>) -> Agent {
        self.devices.extend(ds);
        self
    }

    /// One `[[rules]]` table (or several) as written.
    pub fn rule(mut self, toml: &str) -> Agent {
        self.rules.push(toml.to_string());
        self
    }

    pub fn text(&self) -> String {
        let mut t = String::new();
        if self.shipped_templates {
            t += "include = [\"templates/cell.toml\", \"templates/kiln.toml\", \"templates/calciner.toml\"]\n";
        }
        t += &format!(
            "[agent]\nid = \"{}\"\nsite = \"{}\"\narea = \"{}\"\n",
            self.id, self.site, self.area
        );
        if let Some(s) = &self.state_dir {
            t += &format!("state_dir = \"{}\"\n", s.display());
        }
        t += "\n";
        t += &self.sinks;
        for s in &self.sections {
            t += "\n";
            t += s;
            t += "\n";
        }
        for d in &self.devices {
            t += "\n";
            t += &d.toml();
        }
        for r in &self.rules {
            t += "\n";
            t += r;
            t += "\n";
        }
        t
    }

    /// The validated config; panics with every problem and the text when it is refused.
    pub fn build(&self) -> Config {
        let text = self.text();
        Config::from_str(&config_path(), &text)
            .unwrap_or_else(|e| panic!("{e}\n--- the config ---\n{text}"))
    }

    /// Writes `dir/alsentry.toml` (for the binary) and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        assert!(
            !self.shipped_templates,
            "relative includes do not resolve from {}",
            dir.display()
        );
        let p = dir.join("alsentry.toml");
        std::fs::write(&p, self.text()).unwrap();
        p
    }
}

/// One `[[devices]]` entry.
#[derive(Debug, Clone)]
pub struct Dev {
    name: String,
    endpoint: String,
    unit: Option<u8>,
    units: Option<String>,
    poll: Option<String>,
    timeout: Option<String>,
    backoff_max: Option<String>,
    template: Option<String>,
    tags: Option<String>,
}

impl Dev {
    /// A Modbus TCP device at `addr`; `name` may be a pattern such as "pot-{unit:03}".
    pub fn tcp(name: &str, addr: SocketAddr) -> Dev {
        Dev {
            name: name.into(),
            endpoint: format!("tcp://{addr}"),
            unit: None,
            units: None,
            poll: None,
            timeout: None,
            backoff_max: None,
            template: None,
            tags: None,
        }
    }

    /// A device of a running simulator, read with the shipped template of its kind.
    pub fn sim(h: &SimHandle, name: &str) -> Dev {
        let ep = h
            .endpoint(name)
            .unwrap_or_else(|| panic!("no sim device {name}"));
        let template = match ep.kind {
            DeviceKind::Cell => "cell",
            DeviceKind::Kiln => "kiln",
            DeviceKind::Calciner => "calciner",
        };
        Dev::tcp(name, ep.addr).unit(ep.unit).template(template)
    }

    pub fn unit(mut self, unit: u8) -> Dev {
        self.unit = Some(unit);
        self
    }

    pub fn units(mut self, units: &str) -> Dev {
        self.units = Some(units.into());
        self
    }

    pub fn poll(mut self, d: &str) -> Dev {
        self.poll = Some(d.into());
        self
    }

    pub fn timeout(mut self, d: &str) -> Dev {
        self.timeout = Some(d.into());
        self
    }

    pub fn backoff_max(mut self, d: &str) -> Dev {
        self.backoff_max = Some(d.into());
        self
    }

    pub fn template(mut self, t: &str) -> Dev {
        self.template = Some(t.into());
        self
    }

    /// The inline tag list as written: `[{ name = "x", table = "holding", address = 0 }]`.
    pub fn tags(mut self, toml: &str) -> Dev {
        self.tags = Some(toml.into());
        self
    }

    fn toml(&self) -> String {
        let mut t = format!(
            "[[devices]]\nname = \"{}\"\nendpoint = \"{}\"\n",
            self.name, self.endpoint
        );
        if let Some(u) = self.unit {
            t += &format!("unit = {u}\n");
        }
        for (key, v) in [
            ("units", &self.units),
            ("poll", &self.poll),
            ("timeout", &self.timeout),
            ("backoff_max", &self.backoff_max),
            ("template", &self.template),
        ] {
            if let Some(v) = v {
                t += &format!("{key} = \"{v}\"\n");
            }
        }
        if let Some(tags) = &self.tags {
            t += &format!("tags = {tags}\n");
        }
        t
    }
}
