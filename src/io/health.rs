//! Which devices answer their polls. The pollers own this state (each link writes only its
//! own devices, on a change); the status payload and `/readyz` read snapshots from the watch
//! channel. The `alsentry_device_up` gauge is set by the same up/down events but is only for
//! watching: nothing decides anything from a metric.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceHealth {
    names: Arc<[String]>,
    up: Vec<bool>,
}

impl DeviceHealth {
    /// All devices down (not yet polled).
    pub fn new(names: impl IntoIterator<Item = String>) -> DeviceHealth {
        let names: Arc<[String]> = names.into_iter().collect();
        DeviceHealth {
            up: vec![false; names.len()],
            names,
        }
    }

    pub fn devices(&self) -> usize {
        self.up.len()
    }

    pub fn up(&self) -> usize {
        self.up.iter().filter(|u| **u).count()
    }

    pub fn down(&self) -> usize {
        self.devices() - self.up()
    }

    pub fn is_up(&self, device: u32) -> bool {
        self.up.get(device as usize).copied().unwrap_or(false)
    }

    /// Names of the devices not answering, in configuration order.
    pub fn down_names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .zip(&self.up)
            .filter(|(_, up)| !**up)
            .map(|(n, _)| n.as_str())
    }
}

/// The writing side, one clone per poller.
#[derive(Debug, Clone)]
pub struct HealthTx(Arc<watch::Sender<DeviceHealth>>);

impl HealthTx {
    /// Records whether `device` answers; readers are woken only on a change.
    pub fn set(&self, device: u32, up: bool) {
        self.0
            .send_if_modified(|h| match h.up.get_mut(device as usize) {
                Some(u) if *u != up => {
                    *u = up;
                    true
                }
                _ => false,
            });
    }

    pub fn subscribe(&self) -> watch::Receiver<DeviceHealth> {
        self.0.subscribe()
    }
}

/// A health channel for `names` (all down).
pub fn channel(
    names: impl IntoIterator<Item = String>,
) -> (HealthTx, watch::Receiver<DeviceHealth>) {
    let (tx, rx) = watch::channel(DeviceHealth::new(names));
    (HealthTx(Arc::new(tx)), rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_names_follow_the_writers() {
        let (tx, mut rx) = channel(["a".to_string(), "b".to_string(), "c".to_string()]);
        assert_eq!((rx.borrow().up(), rx.borrow().down()), (0, 3));
        tx.set(1, true);
        assert!(rx.has_changed().unwrap());
        let h = rx.borrow_and_update().clone();
        assert_eq!((h.up(), h.down()), (1, 2));
        assert_eq!(h.down_names().collect::<Vec<_>>(), ["a", "c"]);
        assert!(h.is_up(1) && !h.is_up(0) && !h.is_up(9));
        // No change, no wake-up; an unknown device is ignored.
        tx.set(1, true);
        tx.set(7, true);
        assert!(!rx.has_changed().unwrap());
    }
}
