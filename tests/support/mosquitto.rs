//! The one Mosquitto launcher: a private broker process on a loopback port, killed when
//! dropped (even on panic). Used by the gated tests (tests/interop/); Mosquitto missing fails
//! them (see `tools`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::free_port;
use super::tools;

pub struct Mosquitto {
    pub port: u16,
    name: String,
    child: Child,
    log: PathBuf,
}

impl Mosquitto {
    /// A private broker on a free port: anonymous, no persistence.
    pub fn private(dir: &Path) -> Mosquitto {
        Mosquitto::start(dir, free_port(), "")
    }

    /// A private broker on `port` (a restart on the port an agent already knows), with `extra`
    /// appended to its config (more listeners, TLS).
    pub fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        // `user root`: when the test runs as root, Mosquitto would otherwise drop to its own
        // user and could not read key files in the test's private temp dir (no effect as
        // non-root).
        let conf = format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"
        );
        Mosquitto::with_config(dir, "mosquitto", port, &conf)
    }

    /// Runs `conf` as written; the caller put `port` in it. Returns once the port accepts
    /// connections; fails with the broker's log if it exits or does not listen within 10 s.
    pub fn with_config(dir: &Path, name: &str, port: u16, conf: &str) -> Mosquitto {
        let bin = std::env::var_os("MOSQUITTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| tools::require("mosquitto"));
        let conf_path = dir.join(format!("{name}-{port}.conf"));
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.join(format!("{name}-{port}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("mosquitto starts");
        let mut m = Mosquitto {
            port,
            name: name.to_string(),
            child,
            log,
        };
        m.wait_listening();
        m
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {} within 10 s:\n{}",
                self.name,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What the broker wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no clean disconnect, nothing persisted.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
