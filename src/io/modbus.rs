//! The Modbus client edge: connect with a timeout, read one block with a timeout, and tell
//! "the device said no" (an exception) apart from "the wire broke" (transport or protocol).
//!
//! tokio-modbus has no timeouts of its own, and a reply that arrives after a timeout leaves
//! the TCP client out of step (docs/STANDARDS.md 4.6): after any timeout or protocol error the
//! caller must drop the connection and reconnect.

use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, SlaveContext};
use tokio_modbus::Slave;

use crate::config::endpoint::{Parity, Serial};
use crate::config::Endpoint;
use crate::core::action::WriteData;
use crate::core::decode::Table;

/// What one read produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The device answered with a Modbus exception; the connection is fine.
    #[error("exception {0:02X}")]
    Exception(u8),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection broke or the reply did not match the request.
    #[error("transport: {0}")]
    Transport(String),
    #[error("protocol: {0}")]
    Protocol(String),
    /// The reply was well-formed but had the wrong number of values.
    #[error("reply has {got} values, expected {expected}")]
    ShortReply { got: usize, expected: usize },
}

impl ReadError {
    #[cfg(test)]
    /// Whether the connection must be dropped before the next request.
    pub fn poisons_connection(&self) -> bool {
        matches!(
            self,
            ReadError::Timeout(_)
                | ReadError::Transport(_)
                | ReadError::Protocol(_)
                | ReadError::ShortReply { .. }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(String, Duration),
    #[error("connect to {0}: {1}")]
    Io(String, std::io::Error),
}

pub struct Connection {
    ctx: Context,
    /// The deadline of the request in flight: one timer for the connection's life, moved later
    /// for each request. tokio moves a timer later with one atomic write, where a new timer per
    /// request (`tokio::time::timeout`) is filed into and taken out of the timer wheel under
    /// the driver's lock: twice per read, at up to 100,000 reads a second when polling flat out.
    /// Between polls [`Connection::idle_for`] moves it past the next one, so it never fires
    /// (waking the link for nothing) while the link sleeps.
    deadline: Pin<Box<Sleep>>,
    /// The timeout of the last request.
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

async fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let target = format!("{host}:{port}");
    let fut = async {
        let addrs: Vec<_> = tokio::net::lookup_host(&target)
            .await
            .map_err(|_| ConnectError::Resolve(target.clone()))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ConnectError::Io(target.clone(), e),
            None => ConnectError::Resolve(target.clone()),
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(target.clone(), timeout)),
    }
}

fn open_serial(s: &Serial) -> Result<tokio_serial::SerialStream, ConnectError> {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match s.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if s.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(&s.path, s.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| ConnectError::Io(s.path.clone(), std::io::Error::other(e.to_string())))
}

impl Connection {
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Connection, ConnectError> {
        let ctx = match endpoint {
            Endpoint::Tcp { host, port } => {
                let s = tcp_connect(host, *port, timeout).await?;
                tokio_modbus::client::tcp::attach_slave(s, Slave(1))
            }
            Endpoint::RtuOverTcp { host, port } => {
                let s = tcp_connect(host, *port, timeout).await?;
                tokio_modbus::client::rtu::attach_slave(s, Slave(1))
            }
            Endpoint::Rtu(serial) => {
                let s = open_serial(serial)?;
                tokio_modbus::client::rtu::attach_slave(s, Slave(1))
            }
        };
        let deadline = Box::pin(tokio::time::sleep_until(crate::clock::timer_deadline(
            timeout,
        )));
        Ok(Connection {
            ctx,
            deadline,
            timeout,
        })
    }

    /// One request within `timeout`, its failure sorted into device "no" and wire trouble.
    async fn call(
        &mut self,
        request: Request<'static>,
        timeout: Duration,
    ) -> Result<Response, ReadError> {
        self.timeout = timeout;
        self.deadline
            .as_mut()
            .reset(crate::clock::timer_deadline(timeout));
        // The reply first, as `tokio::time::timeout` does: one that is in is not a timeout.
        let reply = tokio::select! {
            biased;
            reply = self.ctx.call(request) => reply,
            () = self.deadline.as_mut() => return Err(ReadError::Timeout(timeout)),
        };
        match reply {
            Err(tokio_modbus::Error::Transport(e)) => Err(ReadError::Transport(e.to_string())),
            Err(tokio_modbus::Error::Protocol(e)) => Err(ReadError::Protocol(e.to_string())),
            Ok(Err(code)) => Err(ReadError::Exception(u8::from(code))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// The link sends nothing for `idle` (it sleeps until its next step): the deadline moves to
    /// a little before the end of that wait plus the last timeout. It does not fire meanwhile,
    /// and the next request, starting after the wait, moves it later with one atomic write
    /// instead of filing it anew. Only a cost: every request sets its own deadline.
    pub fn idle_for(&mut self, idle: Duration) {
        // The margin covers the clock reads between here and the next request's (tokio files
        // timers to the millisecond): without it the next deadline could come out earlier.
        let after = idle
            .saturating_add(self.timeout)
            .saturating_sub(Duration::from_millis(2));
        let at = crate::clock::timer_deadline(after);
        if at > self.deadline.deadline() {
            self.deadline.as_mut().reset(at);
        }
    }

    /// Reads `count` addresses from `table` of unit `unit`, within `timeout`.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<ReadData, ReadError> {
        self.ctx.set_slave(Slave(unit));
        // `Client::call`, not the `Reader` helpers: those `debug_assert` the reply length, so a
        // device answering with fewer values than asked would panic the link task in debug
        // builds. The length is checked below for every build.
        let request = match table {
            Table::Holding => Request::ReadHoldingRegisters(start, count),
            Table::Input => Request::ReadInputRegisters(start, count),
            Table::Coil => Request::ReadCoils(start, count),
            Table::Discrete => Request::ReadDiscreteInputs(start, count),
        };
        let response = self.call(request, timeout).await?;
        let mut data = match (table, response) {
            (Table::Holding, Response::ReadHoldingRegisters(words))
            | (Table::Input, Response::ReadInputRegisters(words)) => ReadData::Registers(words),
            (Table::Coil, Response::ReadCoils(bits))
            | (Table::Discrete, Response::ReadDiscreteInputs(bits)) => ReadData::Bits(bits),
            (_, other) => {
                return Err(ReadError::Protocol(format!(
                    "reply {other:?} does not answer a read of the {table} table"
                )))
            }
        };
        let got = match &data {
            ReadData::Registers(r) => r.len(),
            // Bit replies are padded to whole bytes.
            ReadData::Bits(b) => b.len().min(usize::from(count)),
        };
        if got < usize::from(count) {
            return Err(ReadError::ShortReply {
                got,
                expected: usize::from(count),
            });
        }
        if let ReadData::Bits(b) = &mut data {
            b.truncate(usize::from(count));
        }
        Ok(data)
    }
}

impl Connection {
    /// Writes `data` at `start` of unit `unit` within `timeout`: FC 05 or 15 for coils, FC 06
    /// or 16 for holding registers. The same error split as reads: an exception is the
    /// device's "no", anything else poisons the connection.
    pub async fn write(
        &mut self,
        unit: u8,
        start: u16,
        data: &WriteData,
        timeout: Duration,
    ) -> Result<(), ReadError> {
        self.ctx.set_slave(Slave(unit));
        let request = match (data, data.function_code()) {
            (WriteData::Coils(b), 5) => Request::WriteSingleCoil(start, b[0]),
            (WriteData::Coils(b), _) => Request::WriteMultipleCoils(start, b.clone().into()),
            (WriteData::Registers(w), 6) => Request::WriteSingleRegister(start, w[0]),
            (WriteData::Registers(w), _) => {
                Request::WriteMultipleRegisters(start, w.clone().into())
            }
        };
        let response = self.call(request, timeout).await?;
        // The echo must name what was asked: a reply for another request means the stream
        // is out of step.
        let echoed = match response {
            Response::WriteSingleCoil(a, _) | Response::WriteSingleRegister(a, _) => a == start,
            Response::WriteMultipleCoils(a, n) | Response::WriteMultipleRegisters(a, n) => {
                a == start && n == data.len()
            }
            _ => false,
        };
        if !echoed {
            return Err(ReadError::Protocol(format!(
                "the reply to a write of {} at {start} does not echo it",
                data.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every read with one value fewer than asked (a well-formed frame).
    async fn short_replier() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 12];
            while s.read_exact(&mut req).await.is_ok() {
                let (fc, qty) = (req[7], u16::from_be_bytes([req[10], req[11]]));
                let pdu: Vec<u8> = if fc <= 2 {
                    // qty - 8 bits: one whole byte short.
                    let bytes = usize::from(qty.saturating_sub(8)).div_ceil(8);
                    [vec![fc, bytes as u8], vec![0xFF; bytes]].concat()
                } else {
                    let words = usize::from(qty.saturating_sub(1));
                    [vec![fc, (words * 2) as u8], vec![0x12; words * 2]].concat()
                };
                let len = (pdu.len() + 1) as u16;
                let mut f = vec![req[0], req[1], 0, 0];
                f.extend_from_slice(&len.to_be_bytes());
                f.push(req[6]);
                f.extend_from_slice(&pdu);
                if s.write_all(&f).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_reply_with_fewer_values_than_asked_is_an_error_not_a_panic() {
        let addr = short_replier().await;
        let ep = Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let t = Duration::from_secs(2);
        let mut c = Connection::open(&ep, t).await.unwrap();
        for (table, count) in [
            (Table::Holding, 4),
            (Table::Input, 2),
            (Table::Coil, 16),
            (Table::Discrete, 9),
        ] {
            let r = c.read(1, table, 0, count, t).await;
            assert!(
                matches!(r, Err(ReadError::ShortReply { .. })),
                "{table}: {r:?}"
            );
            assert!(r.unwrap_err().poisons_connection());
        }
    }

    /// A server that answers its n-th read of holding registers (full replies of zeros) after
    /// `script[n]`, or never (`None`, and nothing after it).
    async fn scripted_replier(script: Vec<Option<Duration>>) -> Endpoint {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 12];
            for delay in script {
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                let Some(delay) = delay else {
                    // Silent, but the connection stays open until the client drops it.
                    let _ = s.read(&mut req).await;
                    return;
                };
                tokio::time::sleep(delay).await;
                let words = usize::from(u16::from_be_bytes([req[10], req[11]]));
                let mut f = vec![req[0], req[1], 0, 0];
                f.extend_from_slice(&((words * 2 + 3) as u16).to_be_bytes());
                f.extend_from_slice(&[req[6], req[7], (words * 2) as u8]);
                f.resize(f.len() + words * 2, 0);
                if s.write_all(&f).await.is_err() {
                    return;
                }
            }
        });
        Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// Reads once more with `t` and asserts a timeout: not before `t`, and before `within`.
    async fn assert_times_out(c: &mut Connection, count: u16, t: Duration, within: Duration) {
        let took = crate::clock::Stopwatch::start();
        let r = c.read(1, Table::Holding, 0, count, t).await;
        assert!(matches!(r, Err(ReadError::Timeout(d)) if d == t), "{r:?}");
        let took = took.elapsed();
        assert!(took >= t && took < within, "timed out after {took:?}");
    }

    // The connection keeps one timer and moves it for each request: each request gets its
    // whole timeout (slow replies that add up to more than one timeout all arrive), a shorter
    // timeout after a longer one still fires on time, and a silent device times out.
    #[tokio::test]
    async fn every_request_gets_its_own_whole_timeout_from_the_one_timer() {
        let slow = Duration::from_millis(150);
        let ep = scripted_replier(vec![Some(slow), Some(slow), Some(slow), Some(slow), None]).await;
        let t = Duration::from_millis(400);
        let mut c = Connection::open(&ep, t).await.unwrap();
        for i in 0..4 {
            let r = c.read(1, Table::Holding, 0, 3, t).await;
            assert_eq!(r.ok(), Some(ReadData::Registers(vec![0; 3])), "read {i}");
        }
        assert_times_out(&mut c, 3, t, t * 5).await;

        let ep = scripted_replier(vec![Some(Duration::ZERO), None]).await;
        let (long, short) = (Duration::from_secs(30), Duration::from_millis(200));
        let mut c = Connection::open(&ep, long).await.unwrap();
        assert!(c.read(1, Table::Holding, 0, 1, long).await.is_ok());
        assert_times_out(&mut c, 1, short, Duration::from_secs(5)).await;
    }

    // Between polls the link moves the deadline past its next poll, so the timer does not fire
    // (waking the link for nothing) while it sleeps; a deadline that did fire while the link
    // was idle still bounds the next request.
    #[tokio::test]
    async fn an_idle_link_keeps_its_deadline_ahead_and_a_fired_one_is_set_again() {
        let slow = Duration::from_millis(150);
        let ep = scripted_replier(vec![Some(Duration::ZERO), Some(slow), Some(slow), None]).await;
        let (t, wait) = (Duration::from_millis(300), Duration::from_millis(500));
        let mut c = Connection::open(&ep, t).await.unwrap();
        assert!(c.read(1, Table::Holding, 0, 2, t).await.is_ok());
        c.idle_for(wait + Duration::from_millis(200));
        tokio::time::sleep(wait).await;
        assert!(!c.deadline.is_elapsed(), "fired while the link was idle");
        assert!(c.read(1, Table::Holding, 0, 2, t).await.is_ok());
        // No word of the idle time: the deadline fires after `t` and is set again.
        tokio::time::sleep(wait).await;
        assert!(c.deadline.is_elapsed());
        assert!(c.read(1, Table::Holding, 0, 2, t).await.is_ok());
        assert_times_out(&mut c, 2, t, Duration::from_secs(5)).await;
    }

    // The reply's byte count promises more registers than the frame holds (the vendored
    // tokio-modbus takes registers out in one pass, vendor/README.md): an error that drops the
    // connection, not a panic and not a short value.
    #[tokio::test]
    async fn a_reply_whose_byte_count_overruns_its_frame_is_a_wire_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 12];
            if s.read_exact(&mut req).await.is_ok() {
                // Byte count 6 (3 registers), 4 bytes of data; the MBAP length matches the frame.
                let pdu = [req[7], 6, 0, 1, 0, 2];
                let mut f = vec![req[0], req[1], 0, 0, 0, (pdu.len() + 1) as u8, req[6]];
                f.extend_from_slice(&pdu);
                let _ = s.write_all(&f).await;
                let _ = s.read(&mut req).await;
            }
        });
        let ep = Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let t = Duration::from_secs(2);
        let mut c = Connection::open(&ep, t).await.unwrap();
        let r = c.read(1, Table::Holding, 0, 3, t).await;
        assert!(
            matches!(r, Err(ReadError::Transport(_) | ReadError::Protocol(_))),
            "{r:?}"
        );
        assert!(r.unwrap_err().poisons_connection());
    }
}
