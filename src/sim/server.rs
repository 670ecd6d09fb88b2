//! Modbus front ends: our own MBAP framing for TCP (so communication faults such as a dropped
//! connection or a hostile reply can be injected, which tokio-modbus' server cannot express),
//! and tokio-modbus' RTU server for serial lines. Both answer from the same [`handle`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use super::faults::HostileMode;
use super::plant::Plant;
use super::registers::Table;

pub type SharedPlant = Arc<RwLock<Plant>>;

/// A read request, already decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Req {
    pub fc: u8,
    pub addr: u16,
    pub qty: u16,
}

/// The reply content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Words(u8, Vec<u16>),
    Bits(u8, Vec<bool>),
    Exception(u8, u8),
    /// The echo of a write: FC 06 (address, value) or FC 16 (address, quantity).
    Echo(u8, u16, u16),
}

impl Answer {
    /// The PDU bytes.
    pub fn pdu(&self) -> Vec<u8> {
        match self {
            Answer::Words(fc, w) => {
                let mut out = Vec::with_capacity(2 + 2 * w.len());
                out.push(*fc);
                out.push((w.len() * 2) as u8);
                for x in w {
                    out.extend_from_slice(&x.to_be_bytes());
                }
                out
            }
            Answer::Bits(fc, b) => {
                let n = b.len().div_ceil(8);
                let mut out = vec![0u8; 2 + n];
                out[0] = *fc;
                out[1] = n as u8;
                for (i, &on) in b.iter().enumerate() {
                    if on {
                        out[2 + i / 8] |= 1 << (i % 8);
                    }
                }
                out
            }
            Answer::Exception(fc, code) => vec![fc | 0x80, *code],
            Answer::Echo(fc, a, b) => {
                let (a, b) = (a.to_be_bytes(), b.to_be_bytes());
                vec![*fc, a[0], a[1], b[0], b[1]]
            }
        }
    }
}

/// What the transport does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Answer),
    Silent,
    Delayed(Duration, Answer),
    Drop { answer: Answer, after_bytes: usize },
    Hostile(HostileMode, Answer),
}

pub const EX_ILLEGAL_FUNCTION: u8 = 0x01;
pub const EX_ILLEGAL_ADDRESS: u8 = 0x02;
pub const EX_ILLEGAL_VALUE: u8 = 0x03;
pub const EX_GATEWAY_TARGET: u8 = 0x0B;

fn read(plant: &Plant, device: usize, req: Req) -> Answer {
    let ex = |code| Answer::Exception(req.fc, code);
    let (table, max_qty) = match req.fc {
        1 => (Table::Coil, 2000),
        2 => (Table::Discrete, 2000),
        3 => (Table::Holding, 125),
        4 => (Table::Input, 125),
        _ => return ex(EX_ILLEGAL_FUNCTION),
    };
    if req.qty == 0 || req.qty > max_qty {
        return ex(EX_ILLEGAL_VALUE);
    }
    let first = usize::from(req.addr);
    let last = first + usize::from(req.qty);
    if let Some(comm) = plant.comm(device) {
        for &(code, block) in &comm.exceptions {
            let hit = match block {
                None => true,
                Some((t, a, n)) => {
                    t == table && first < usize::from(a) + usize::from(n) && usize::from(a) < last
                }
            };
            if hit {
                return ex(code);
            }
        }
    }
    let (Some(layout), Some(image)) = (plant.layout(device), plant.image(device)) else {
        return ex(EX_ILLEGAL_ADDRESS);
    };
    let mapped = match table {
        Table::Coil => &[][..],
        Table::Discrete => &layout.discrete[..],
        Table::Holding => &layout.holding[..],
        Table::Input => &layout.input[..],
    };
    // A request touching any unmapped address fails as a whole, like real devices.
    if last > mapped.len() || !mapped[first..last].iter().all(|&m| m) {
        return ex(EX_ILLEGAL_ADDRESS);
    }
    match table {
        Table::Discrete => Answer::Bits(req.fc, image.discrete[first..last].to_vec()),
        Table::Holding => Answer::Words(req.fc, image.holding[first..last].to_vec()),
        Table::Input => Answer::Words(req.fc, image.input[first..last].to_vec()),
        Table::Coil => ex(EX_ILLEGAL_ADDRESS),
    }
}

/// Decide the reply to `req` for `device` (None: no device behind this unit id).
pub fn handle(plant: &Plant, device: Option<usize>, req: Req) -> Outcome {
    let Some(device) = device else {
        return Outcome::Reply(Answer::Exception(req.fc, EX_GATEWAY_TARGET));
    };
    let comm = plant.comm(device).cloned().unwrap_or_default();
    if comm.silent {
        return Outcome::Silent;
    }
    let answer = read(plant, device, req);
    if let Some(after_bytes) = comm.drop_after {
        return Outcome::Drop {
            answer,
            after_bytes,
        };
    }
    if let Some(mode) = comm.hostile {
        return Outcome::Hostile(mode, answer);
    }
    match comm.delay {
        Some(d) => Outcome::Delayed(d, answer),
        None => Outcome::Reply(answer),
    }
}

/// Which device answers which unit id on one listener.
#[derive(Debug, Clone, Default)]
pub struct UnitMap {
    pub units: HashMap<u8, usize>,
    /// Port-per-device: this device answers any unit id.
    pub any: Option<usize>,
}

impl UnitMap {
    pub fn resolve(&self, unit: u8) -> Option<usize> {
        self.any.or_else(|| self.units.get(&unit).copied())
    }
}

fn mbap(tid: u16, unit: u8, pdu: &[u8], length_delta: i32) -> Vec<u8> {
    let len = (pdu.len() as i32 + 1 + length_delta).clamp(0, 0xFFFF) as u16;
    let mut out = Vec::with_capacity(7 + pdu.len());
    out.extend_from_slice(&tid.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
    out
}

async fn serve_connection(
    mut stream: TcpStream,
    plant: SharedPlant,
    units: Arc<UnitMap>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut header = [0u8; 7];
    let mut body = [0u8; 260];
    loop {
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let tid = u16::from_be_bytes([header[0], header[1]]);
        let proto = u16::from_be_bytes([header[2], header[3]]);
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let unit = header[6];
        if proto != 0 || !(2..=254).contains(&len) {
            // Not Modbus TCP: a real server closes the connection.
            return Ok(());
        }
        let pdu = &mut body[..len - 1];
        stream.read_exact(pdu).await?;
        let fc = pdu[0];
        let req = if (1..=4).contains(&fc) && pdu.len() >= 5 {
            Req {
                fc,
                addr: u16::from_be_bytes([pdu[1], pdu[2]]),
                qty: u16::from_be_bytes([pdu[3], pdu[4]]),
            }
        } else {
            // Writes and other functions: this simulator is read-only.
            Req {
                fc,
                addr: 0,
                qty: 0,
            }
        };
        if fc == 6 || fc == 16 {
            let a = write(&plant, units.resolve(unit), pdu);
            stream.write_all(&mbap(tid, unit, &a.pdu(), 0)).await?;
            continue;
        }
        let outcome = {
            let device = units.resolve(unit);
            match plant.read() {
                Ok(p) if (1..=4).contains(&fc) || device.is_none() => handle(&p, device, req),
                Ok(p) => match handle(&p, device, req) {
                    Outcome::Silent => Outcome::Silent,
                    _ => Outcome::Reply(Answer::Exception(fc, EX_ILLEGAL_FUNCTION)),
                },
                Err(_) => Outcome::Reply(Answer::Exception(fc, 0x04)),
            }
        };
        match outcome {
            Outcome::Silent => continue,
            Outcome::Reply(a) => stream.write_all(&mbap(tid, unit, &a.pdu(), 0)).await?,
            Outcome::Delayed(d, a) => {
                tokio::time::sleep(d).await;
                stream.write_all(&mbap(tid, unit, &a.pdu(), 0)).await?;
            }
            Outcome::Drop {
                answer,
                after_bytes,
            } => {
                let frame = mbap(tid, unit, &answer.pdu(), 0);
                let n = after_bytes.min(frame.len().saturating_sub(1));
                stream.write_all(&frame[..n]).await?;
                stream.flush().await?;
                // Dropping the stream closes the connection mid-transaction.
                return Ok(());
            }
            Outcome::Hostile(mode, a) => {
                let pdu = a.pdu();
                let frame = match mode {
                    HostileMode::WrongTransactionId => mbap(tid.wrapping_add(1), unit, &pdu, 0),
                    HostileMode::WrongLength => mbap(tid, unit, &pdu, 3),
                    HostileMode::WrongFunctionCode => {
                        let mut p = pdu.clone();
                        p[0] = if p[0] == 3 { 4 } else { 3 };
                        mbap(tid, unit, &p, 0)
                    }
                    HostileMode::Unsolicited => {
                        let mut f = mbap(tid.wrapping_sub(7), unit, &pdu, 0);
                        f.extend(mbap(tid, unit, &pdu, 0));
                        f
                    }
                };
                stream.write_all(&frame).await?;
            }
        }
    }
}

/// A write (FC 06 or 16) of holding registers: the cells' request registers take it
/// (docs/DISPOSAL.md); everything else answers an exception.
fn write(plant: &SharedPlant, device: Option<usize>, pdu: &[u8]) -> Answer {
    let fc = pdu[0];
    let Some(device) = device else {
        return Answer::Exception(fc, EX_GATEWAY_TARGET);
    };
    let word = |i: usize| pdu.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (Some(addr), Some(second)) = (word(1), word(3)) else {
        return Answer::Exception(fc, EX_ILLEGAL_VALUE);
    };
    let words: Vec<u16> = if fc == 6 {
        vec![second]
    } else {
        let n = usize::from(second);
        if n == 0 || n > 123 || pdu.get(5).map(|&b| usize::from(b)) != Some(2 * n) {
            return Answer::Exception(fc, EX_ILLEGAL_VALUE);
        }
        match (0..n)
            .map(|i| word(6 + 2 * i))
            .collect::<Option<Vec<u16>>>()
        {
            Some(w) => w,
            None => return Answer::Exception(fc, EX_ILLEGAL_VALUE),
        }
    };
    let Ok(mut p) = plant.write() else {
        return Answer::Exception(fc, 0x04);
    };
    if p.comm(device).is_some_and(|c| c.silent) {
        return Answer::Exception(fc, EX_GATEWAY_TARGET);
    }
    match p.write_holding(device, addr, &words) {
        Ok(()) => Answer::Echo(fc, addr, second),
        Err(code) => Answer::Exception(fc, code),
    }
}

/// Accept connections until `cancel` fires.
pub async fn serve_tcp(
    listener: TcpListener,
    plant: SharedPlant,
    units: Arc<UnitMap>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let plant = plant.clone();
                let units = units.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        r = serve_connection(stream, plant, units) => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, "modbus connection ended: {e}");
                            }
                        }
                        () = cancel.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// tokio-modbus service for the RTU line.
#[derive(Debug, Clone)]
pub struct RtuService {
    pub plant: SharedPlant,
    pub units: Arc<UnitMap>,
}

type RtuFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for RtuService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = RtuFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let unit = req.slave;
        let (fc, addr, qty) = match req.request {
            Request::ReadCoils(a, q) => (1, a, q),
            Request::ReadDiscreteInputs(a, q) => (2, a, q),
            Request::ReadHoldingRegisters(a, q) => (3, a, q),
            Request::ReadInputRegisters(a, q) => (4, a, q),
            _ => (0, 0, 0),
        };
        // Broadcast (unit 0) never gets a reply on a serial line.
        let device = if unit == 0 {
            None
        } else {
            self.units.units.get(&unit).copied()
        };
        let outcome = match (device, fc, self.plant.read()) {
            (None, _, _) => Outcome::Silent,
            (Some(_), 0, _) => Outcome::Reply(Answer::Exception(0, EX_ILLEGAL_FUNCTION)),
            (Some(d), _, Ok(p)) => handle(&p, Some(d), Req { fc, addr, qty }),
            (Some(_), _, Err(_)) => Outcome::Reply(Answer::Exception(fc, 0x04)),
        };
        Box::pin(async move {
            let answer = match outcome {
                // A serial line cannot drop a connection: the frame is simply lost.
                Outcome::Silent | Outcome::Drop { .. } => return Ok(None),
                Outcome::Delayed(d, a) => {
                    tokio::time::sleep(d).await;
                    a
                }
                Outcome::Reply(a) | Outcome::Hostile(_, a) => a,
            };
            match answer {
                Answer::Exception(_, code) => Err(ExceptionCode::new(code)),
                Answer::Words(3, w) => Ok(Some(Response::ReadHoldingRegisters(w))),
                Answer::Words(_, w) => Ok(Some(Response::ReadInputRegisters(w))),
                Answer::Bits(1, b) => Ok(Some(Response::ReadCoils(b))),
                Answer::Bits(_, b) => Ok(Some(Response::ReadDiscreteInputs(b))),
                // Writes are not served on the serial line (reads only there).
                Answer::Echo(..) => Err(ExceptionCode::IllegalFunction),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdus_encode() {
        assert_eq!(
            Answer::Words(3, vec![0x47F1, 0x2000]).pdu(),
            vec![3, 4, 0x47, 0xF1, 0x20, 0x00]
        );
        assert_eq!(
            Answer::Bits(
                2,
                vec![true, false, true, false, false, false, false, false, true]
            )
            .pdu(),
            vec![2, 2, 0b101, 1]
        );
        assert_eq!(Answer::Exception(4, 2).pdu(), vec![0x84, 2]);
        assert_eq!(
            mbap(7, 1, &[0x84, 2], 0),
            vec![0, 7, 0, 0, 0, 3, 1, 0x84, 2]
        );
    }
}
