//! The cell answers what the agent writes (disposal, docs/DISPOSAL.md): two writable holding
//! registers. `feed_request = 1` is extra feeding: it ends an alumina depletion, so the anode
//! effect it was heading for does not come. `quench_request = 1` starts the quench routine: it
//! ends an anode effect in progress. A request reads back as written until the anode effect it
//! answered is over, or for [`HOLD_S`] when there was none; then the controller clears it.
//! The fault schedule (and so the ground truth) is unchanged: the truth still names the
//! anode effect that the request avoided.

use super::cell::{self, AeDrive};

/// Signal slots of the requests, after the model's own signals.
pub const FEED_REQUEST: usize = cell::sig::COUNT;
pub const QUENCH_REQUEST: usize = cell::sig::COUNT + 1;
/// Holding addresses (free ones after `uptime`, 13–14; holding 2–9 stay unmapped on purpose).
pub const FEED_REQUEST_ADDR: u16 = 15;
pub const QUENCH_REQUEST_ADDR: u16 = 16;
/// How long a request that answered nothing stays set.
pub const HOLD_S: f64 = 30.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Requests {
    feed: bool,
    quench: bool,
    /// An anode-effect fault was answered: its drive stays off until the fault is over.
    answered: bool,
    held_s: f64,
}

impl Requests {
    /// Whether `address` of the holding table is a request register.
    pub fn writable(address: u16) -> bool {
        address == FEED_REQUEST_ADDR || address == QUENCH_REQUEST_ADDR
    }

    /// A write of `value` to `address` (the caller checked [`Requests::writable`]).
    pub fn write(&mut self, address: u16, value: u16) {
        let on = value != 0;
        match address {
            FEED_REQUEST_ADDR => self.feed = on,
            QUENCH_REQUEST_ADDR => self.quench = on,
            _ => return,
        }
        self.held_s = 0.0;
    }

    /// This tick's anode-effect drive after the requests (`dt` seconds per tick).
    pub fn react(&mut self, ae: &mut Option<AeDrive>, dt: f64) {
        match ae {
            None => {
                self.answered = false;
                if self.feed || self.quench {
                    self.held_s += dt;
                    if self.held_s >= HOLD_S {
                        *self = Requests::default();
                    }
                }
            }
            Some(d) => {
                let ends = match d {
                    AeDrive::Depletion { .. } | AeDrive::Precursor { .. } => self.feed,
                    AeDrive::Active { .. } => self.quench,
                };
                if ends {
                    self.answered = true;
                }
                if self.answered {
                    *ae = None;
                }
            }
        }
    }

    /// The requests as register values (appended to the cell's signals).
    pub fn signals(&self) -> [f64; 2] {
        [
            f64::from(u8::from(self.feed)),
            f64::from(u8::from(self.quench)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeding_ends_a_depletion_and_its_ae_and_quench_ends_an_ae() {
        let mut r = Requests::default();
        let dep = Some(AeDrive::Precursor {
            progress: 0.5,
            shape: 2.0,
        });
        let act = Some(AeDrive::Active {
            v_min: 20.0,
            v_max: 30.0,
        });
        let mut ae = dep;
        r.react(&mut ae, 0.1);
        assert!(ae.is_some(), "no request: the depletion goes on");
        r.write(FEED_REQUEST_ADDR, 1);
        r.react(&mut ae, 0.1);
        assert_eq!(ae, None);
        let mut ae = act;
        r.react(&mut ae, 0.1);
        assert_eq!(ae, None, "the answered fault's AE does not come");
        assert_eq!(r.signals(), [1.0, 0.0]);
        // The fault is over: the request is cleared after the hold.
        for _ in 0..301 {
            r.react(&mut None, 0.1);
        }
        assert_eq!(r.signals(), [0.0, 0.0]);

        let mut ae = act;
        r.react(&mut ae, 0.1);
        assert!(ae.is_some(), "an AE without a quench goes on");
        r.write(QUENCH_REQUEST_ADDR, 1);
        r.react(&mut ae, 0.1);
        assert_eq!(ae, None);
    }
}
