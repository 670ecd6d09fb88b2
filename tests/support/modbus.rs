//! An in-process Modbus TCP device for tests: registers tests can change while it runs,
//! unmapped addresses (exception 02), silent units, and a switch that makes the whole
//! device vanish and return on the same port.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;

#[derive(Debug, Default)]
pub struct Regs {
    pub input: HashMap<(u8, u16), u16>,
    pub holding: HashMap<(u8, u16), u16>,
    pub coils: HashMap<(u8, u16), bool>,
    pub discrete: HashMap<(u8, u16), bool>,
    /// (unit, address) that answer exception 02 when a read touches them.
    pub unmapped: HashSet<(u8, u16)>,
    /// Units that never answer.
    pub silent: HashSet<u8>,
    /// Every (unit, fc, start, count) read, in order.
    pub log: Vec<(u8, u8, u16, u16)>,
    /// Every (unit, fc, start, words or 0/1 bits) write, in order.
    pub writes: Vec<(u8, u8, u16, Vec<u16>)>,
    /// (unit, address) of holding registers that accept writes but keep their value (a
    /// controller overriding the request), for read-back mismatches.
    pub stuck: HashSet<(u8, u16)>,
    /// Units that take reads but never answer a write (it times out on the agent's side).
    pub deaf_to_writes: HashSet<u8>,
    /// (unit, address) that answer this exception when a read touches them (after `unmapped`,
    /// so a read touching both gets 02).
    pub failing: HashMap<(u8, u16), ExceptionCode>,
}

#[derive(Clone, Debug, Default)]
pub struct Device {
    pub regs: Arc<Mutex<Regs>>,
}

impl Device {
    pub fn set_input(&self, unit: u8, addr: u16, words: &[u16]) {
        let mut r = self.regs.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            r.input.insert((unit, addr + i as u16), *w);
        }
    }
    pub fn set_holding(&self, unit: u8, addr: u16, words: &[u16]) {
        let mut r = self.regs.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            r.holding.insert((unit, addr + i as u16), *w);
        }
    }
    pub fn set_coil(&self, unit: u8, addr: u16, v: bool) {
        self.regs.lock().unwrap().coils.insert((unit, addr), v);
    }
    pub fn unmap(&self, unit: u8, addr: u16) {
        self.regs.lock().unwrap().unmapped.insert((unit, addr));
    }
    pub fn fail_reads(&self, unit: u8, addr: u16, code: ExceptionCode) {
        self.regs.lock().unwrap().failing.insert((unit, addr), code);
    }
    pub fn silence(&self, unit: u8, silent: bool) {
        let mut r = self.regs.lock().unwrap();
        if silent {
            r.silent.insert(unit);
        } else {
            r.silent.remove(&unit);
        }
    }
    pub fn writes(&self) -> Vec<(u8, u8, u16, Vec<u16>)> {
        self.regs.lock().unwrap().writes.clone()
    }
    pub fn holding(&self, unit: u8, addr: u16, n: u16) -> Vec<u16> {
        let r = self.regs.lock().unwrap();
        (addr..addr + n)
            .map(|a| r.holding.get(&(unit, a)).copied().unwrap_or(0))
            .collect()
    }
    pub fn stick(&self, unit: u8, addr: u16) {
        self.regs.lock().unwrap().stuck.insert((unit, addr));
    }
    pub fn deaf_to_writes(&self, unit: u8) {
        self.regs.lock().unwrap().deaf_to_writes.insert(unit);
    }
    pub fn reads(&self) -> Vec<(u8, u8, u16, u16)> {
        self.regs.lock().unwrap().log.clone()
    }
    pub fn reads_of(&self, unit: u8) -> usize {
        self.regs
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.0 == unit)
            .count()
    }
}

type Fut = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Fut;

    fn call(&self, req: Self::Request) -> Self::Future {
        let unit = req.slave;
        let mut r = self.regs.lock().unwrap();
        if r.silent.contains(&unit) {
            return Box::pin(std::future::pending());
        }
        let write: Option<(u8, u16, Vec<u16>)> = match &req.request {
            Request::WriteSingleCoil(a, v) => Some((5, *a, vec![u16::from(*v)])),
            Request::WriteMultipleCoils(a, v) => {
                Some((15, *a, v.iter().map(|&b| u16::from(b)).collect()))
            }
            Request::WriteSingleRegister(a, v) => Some((6, *a, vec![*v])),
            Request::WriteMultipleRegisters(a, v) => Some((16, *a, v.to_vec())),
            _ => None,
        };
        if let Some((fc, start, words)) = write {
            r.writes.push((unit, fc, start, words.clone()));
            if r.deaf_to_writes.contains(&unit) {
                return Box::pin(std::future::pending());
            }
            let n = words.len() as u16;
            if r.unmapped
                .iter()
                .any(|(u, a)| *u == unit && (start..start + n).contains(a))
            {
                return Box::pin(std::future::ready(Err(ExceptionCode::IllegalDataAddress)));
            }
            for (i, w) in words.iter().enumerate() {
                let a = start + i as u16;
                if fc == 5 || fc == 15 {
                    r.coils.insert((unit, a), *w != 0);
                } else if !r.stuck.contains(&(unit, a)) {
                    r.holding.insert((unit, a), *w);
                }
            }
            let resp = match fc {
                5 => Response::WriteSingleCoil(start, words[0] != 0),
                15 => Response::WriteMultipleCoils(start, n),
                6 => Response::WriteSingleRegister(start, words[0]),
                _ => Response::WriteMultipleRegisters(start, n),
            };
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let (fc, start, count) = match req.request {
            Request::ReadCoils(a, n) => (1, a, n),
            Request::ReadDiscreteInputs(a, n) => (2, a, n),
            Request::ReadHoldingRegisters(a, n) => (3, a, n),
            Request::ReadInputRegisters(a, n) => (4, a, n),
            _ => return Box::pin(std::future::ready(Err(ExceptionCode::IllegalFunction))),
        };
        r.log.push((unit, fc, start, count));
        let span = start..start.saturating_add(count);
        if r.unmapped
            .iter()
            .any(|(u, a)| *u == unit && span.contains(a))
        {
            return Box::pin(std::future::ready(Err(ExceptionCode::IllegalDataAddress)));
        }
        if let Some(code) = r
            .failing
            .iter()
            .find(|((u, a), _)| *u == unit && span.contains(a))
            .map(|(_, code)| *code)
        {
            return Box::pin(std::future::ready(Err(code)));
        }
        let words = |m: &HashMap<(u8, u16), u16>| {
            span.clone()
                .map(|a| m.get(&(unit, a)).copied().unwrap_or(0))
                .collect::<Vec<u16>>()
        };
        let bits = |m: &HashMap<(u8, u16), bool>| {
            span.clone()
                .map(|a| m.get(&(unit, a)).copied().unwrap_or(false))
                .collect::<Vec<bool>>()
        };
        let resp = match fc {
            1 => Response::ReadCoils(bits(&r.coils)),
            2 => Response::ReadDiscreteInputs(bits(&r.discrete)),
            3 => Response::ReadHoldingRegisters(words(&r.holding)),
            _ => Response::ReadInputRegisters(words(&r.input)),
        };
        Box::pin(std::future::ready(Ok(resp)))
    }
}

/// A running server; `stop` makes the device vanish (listener and connections closed),
/// `restart` brings it back on the same address.
pub struct Served {
    pub addr: SocketAddr,
    pub device: Device,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn serve(listener: TcpListener, device: Device) {
    let server = Server::new(listener);
    let on_connected = move |stream, addr| {
        let device = device.clone();
        async move { accept_tcp_connection(stream, addr, |_| Ok(Some(device.clone()))) }
    };
    let _ = server.serve(&on_connected, |_err| {}).await;
}

impl Served {
    pub async fn start(device: Device) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, device.clone()));
        Served {
            addr,
            device,
            task: Some(task),
        }
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; retry briefly in case the kernel still holds it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.task = Some(tokio::spawn(serve(listener, self.device.clone())));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Big-endian words of an f32, then arranged in a word order.
pub fn f32_words(v: f32, order: &str) -> [u16; 2] {
    let b = v.to_bits();
    let be = [(b >> 16) as u16, b as u16];
    match order {
        "ABCD" => be,
        "CDAB" => [be[1], be[0]],
        "BADC" => [be[0].swap_bytes(), be[1].swap_bytes()],
        "DCBA" => [be[1].swap_bytes(), be[0].swap_bytes()],
        _ => panic!("order"),
    }
}
