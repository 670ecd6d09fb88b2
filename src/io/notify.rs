//! systemd's service notification protocol (`sd_notify`): `READY=1` once the first poll cycle
//! is complete and `WATCHDOG=1` while the engine loop turns, for the unit's `Type=notify` and
//! `WatchdogSec=`. A message is one datagram to the Unix socket named by `$NOTIFY_SOCKET`; the
//! protocol is small enough that a crate would add more than it saves. Without systemd (no
//! `NOTIFY_SOCKET`) everything here does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::clock::Mono;

use tracing::{info, warn};

/// READY=1 is sent at this point at the latest, even if some device has not answered or timed
/// out yet (a long serial line of silent units): systemd's default start timeout is 90 s.
pub const READY_AT_THE_LATEST: Duration = Duration::from_secs(60);

/// Where notifications go. `None` when the process was not started by systemd with
/// `Type=notify` (or `NotifyAccess=`).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        match Self::to(&name.to_string_lossy()) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(error = %e, "NOTIFY_SOCKET is set but unusable; systemd will not hear from us");
                None
            }
        }
    }

    /// To the socket `name` (a path, or `@name` for the abstract namespace).
    pub fn to(name: &str) -> std::io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            #[cfg(not(target_os = "linux"))]
            Some(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "abstract socket names exist only on Linux",
                ))
            }
            None => SocketAddr::from_pathname(name)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends one notification, e.g. "READY=1". A datagram to a local socket does not block.
    pub fn send(&self, state: &str) -> std::io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if it is for us.
fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// When the first poll cycle is complete: every device has delivered a batch (good or bad),
/// or `READY_AT_THE_LATEST` has passed. Pure: the caller passes `now`.
#[derive(Debug)]
pub struct Readiness {
    seen: Vec<bool>,
    missing: usize,
    deadline: Mono,
    done: bool,
}

impl Readiness {
    pub fn new(devices: usize, started: Mono) -> Readiness {
        Readiness {
            seen: vec![false; devices],
            missing: devices,
            deadline: started + READY_AT_THE_LATEST,
            done: false,
        }
    }

    /// A batch of `device` arrived. True once, when this completes the first cycle.
    pub fn on_batch(&mut self, device: u32) -> bool {
        if let Some(s) = self.seen.get_mut(device as usize) {
            if !*s {
                *s = true;
                self.missing -= 1;
            }
        }
        self.check(None)
    }

    /// True once, when the first cycle is complete or the deadline has passed.
    pub fn on_tick(&mut self, now: Mono) -> bool {
        self.check(Some(now))
    }

    /// Devices without a first batch yet.
    pub fn missing(&self) -> usize {
        self.missing
    }

    fn check(&mut self, now: Option<Mono>) -> bool {
        if self.done {
            return false;
        }
        self.done = self.missing == 0 || now.is_some_and(|n| n >= self.deadline);
        self.done
    }
}

/// What the engine task calls: `on_batch` for every batch, `on_tick` on its timer.
#[derive(Debug)]
pub struct Systemd {
    notifier: Option<Notifier>,
    readiness: Readiness,
    /// Half of `WatchdogSec=`, as systemd recommends.
    ping_every: Option<Duration>,
    last_ping: Option<Mono>,
}

impl Systemd {
    /// From the environment systemd gives the service; inert without it.
    pub fn from_env(devices: usize, now: Mono) -> Systemd {
        Self::new(Notifier::from_env(), watchdog_from_env(), devices, now)
    }

    pub fn new(
        notifier: Option<Notifier>,
        watchdog: Option<Duration>,
        devices: usize,
        now: Mono,
    ) -> Systemd {
        Systemd {
            ping_every: notifier.as_ref().and(watchdog).map(|w| w / 2),
            notifier,
            readiness: Readiness::new(devices, now),
            last_ping: None,
        }
    }

    pub fn on_batch(&mut self, device: u32) {
        if self.readiness.on_batch(device) {
            self.ready();
        }
    }

    /// Also the watchdog ping: the engine loop calls it only while it turns.
    pub fn on_tick(&mut self, now: Mono) {
        if self.readiness.on_tick(now) {
            self.ready();
        }
        let Some(every) = self.ping_every else { return };
        if self.last_ping.is_some_and(|t| now.since(t) < every) {
            return;
        }
        self.last_ping = Some(now);
        self.send("WATCHDOG=1");
    }

    fn ready(&self) {
        if self.notifier.is_none() {
            return;
        }
        let missing = self.readiness.missing();
        if missing == 0 {
            info!("first poll cycle complete; telling systemd we are ready");
        } else {
            warn!(
                devices_without_answer = missing,
                "first poll cycle still incomplete after {}s; telling systemd we are ready anyway",
                READY_AT_THE_LATEST.as_secs()
            );
        }
        self.send("READY=1\nSTATUS=polling");
    }

    fn send(&self, state: &str) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.send(state) {
                warn!(error = %e, state, "cannot notify systemd");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_device_delivered_a_batch() {
        let t0 = Mono::from_millis(5_000);
        let mut r = Readiness::new(3, t0);
        assert!(!r.on_batch(0));
        assert!(
            !r.on_batch(0),
            "a second batch of the same device is no progress"
        );
        assert!(!r.on_batch(2));
        assert!(!r.on_tick(t0 + Duration::from_secs(1)));
        assert!(!r.on_batch(7), "an unknown index is ignored");
        assert!(r.on_batch(1));
        assert!(!r.on_batch(1), "READY is reported once");
        assert!(!r.on_tick(t0 + READY_AT_THE_LATEST));
    }

    #[test]
    fn ready_at_the_deadline_when_a_device_never_answers() {
        let t0 = Mono::from_millis(5_000);
        let mut r = Readiness::new(2, t0);
        r.on_batch(0);
        assert!(!r.on_tick(t0 + READY_AT_THE_LATEST - Duration::from_millis(1)));
        assert!(r.on_tick(t0 + READY_AT_THE_LATEST));
        assert_eq!(r.missing(), 1);
        assert!(!r.on_tick(t0 + READY_AT_THE_LATEST * 2));
    }

    #[test]
    fn no_devices_is_ready_at_the_first_tick() {
        let t0 = Mono::from_millis(5_000);
        assert!(Readiness::new(0, t0).on_tick(t0));
    }

    /// A real datagram socket stands in for systemd's.
    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd_side = UnixDatagram::bind(&path).unwrap();
        systemd_side
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        let t0 = Mono::from_millis(5_000);
        let mut s = Systemd::new(Some(n), Some(Duration::from_secs(60)), 1, t0);
        let mut buf = [0u8; 256];
        s.on_tick(t0);
        let len = systemd_side.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        s.on_tick(t0);
        s.on_batch(0);
        let len = systemd_side.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            b"READY=1\nSTATUS=polling",
            "a second tick within half the watchdog interval sends no ping"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_names_are_understood() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("alsentry-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd_side = UnixDatagram::bind_addr(&addr).unwrap();
        systemd_side
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::to(&format!("@{name}"))
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let len = systemd_side.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn without_systemd_nothing_is_sent_and_nothing_fails() {
        let t0 = Mono::from_millis(5_000);
        let mut s = Systemd::new(None, Some(Duration::from_secs(1)), 1, t0);
        s.on_batch(0);
        s.on_tick(t0);
        assert!(s.ping_every.is_none());
    }
}
