//! The Modbus client edge: connect with a timeout, read one block with a timeout, and tell
//! "the device said no" (an exception) apart from "the wire broke" (transport or protocol).
//!
//! Modbus TCP links use alsentry's own client: the frames are `core/mbap.rs` (pure, with
//! tokio-modbus's checks), the socket work is here, and a read allocates nothing (the request
//! is 12 bytes on the stack, the reply lands in the connection's buffer and its values in
//! vectors the connection keeps). Polling flat out, tokio-modbus's general client (a request
//! enum, a framed codec, a vector per reply) cost about as much CPU per poll as all of
//! alsentry's own work (docs/BENCHMARKING.md). RTU and RTU over TCP keep tokio-modbus.
//!
//! A reply that arrives after a timeout leaves the stream out of step (docs/STANDARDS.md 4.6):
//! after any timeout or protocol error the caller must drop the connection and reconnect.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, SlaveContext};
use tokio_modbus::Slave;

use crate::config::endpoint::{Parity, Serial};
use crate::config::Endpoint;
use crate::core::action::WriteData;
use crate::core::decode::Table;
use crate::core::mbap::{self, ReplyError};

/// What one read produced, borrowed from the connection's buffers until its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadData<'a> {
    Registers(&'a [u16]),
    Bits(&'a [bool]),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The device answered with a Modbus exception; the connection is fine.
    #[error("exception {0:02X}")]
    Exception(u8),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection broke or closed.
    #[error("transport: {0}")]
    Transport(String),
    /// The reply did not match the request (malformed or out of step).
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
    transport: Transport,
    /// The values of the last read (kept: no allocation per read).
    words: Vec<u16>,
    bits: Vec<bool>,
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

enum Transport {
    Tcp(TcpClient),
    /// tokio-modbus: RTU on a serial line or over TCP.
    Framed(Context),
}

/// The socket half of the Modbus TCP client: one request at a time, its reply read into `buf`.
struct TcpClient {
    stream: TcpStream,
    /// The transaction id of the next request.
    next_tid: u16,
    buf: Box<[u8; mbap::MAX_FRAME]>,
    /// A write request (writes are rare; reads are built on the stack).
    request: Vec<u8>,
}

fn transport_error(e: std::io::Error) -> ReadError {
    ReadError::Transport(e.to_string())
}

impl From<ReplyError> for ReadError {
    fn from(e: ReplyError) -> ReadError {
        match e {
            ReplyError::Exception(code) => ReadError::Exception(code),
            ReplyError::Malformed(why) => ReadError::Protocol(why),
            ReplyError::Short { got, expected } => ReadError::ShortReply { got, expected },
        }
    }
}

impl TcpClient {
    fn new(stream: TcpStream) -> TcpClient {
        TcpClient {
            stream,
            next_tid: 0,
            buf: Box::new([0; mbap::MAX_FRAME]),
            request: Vec::new(),
        }
    }

    fn take_tid(&mut self) -> u16 {
        let tid = self.next_tid;
        self.next_tid = self.next_tid.wrapping_add(1);
        tid
    }

    /// Sends `request` and reads one whole reply frame into `buf`; returns its length. Not
    /// cancellation safe: a request cut short by its deadline leaves the stream out of step,
    /// and every caller drops the connection on any error but an exception.
    async fn exchange(
        stream: &TcpStream,
        buf: &mut [u8],
        request: &[u8],
    ) -> Result<usize, ReadError> {
        let mut sent = 0;
        while sent < request.len() {
            match stream.try_write(&request[sent..]) {
                Ok(0) => return Err(ReadError::Transport("the connection is closed".into())),
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stream.writable().await.map_err(transport_error)?;
                }
                Err(e) => return Err(transport_error(e)),
            }
        }
        let mut filled = 0;
        loop {
            if let Some(len) = mbap::frame_len(&buf[..filled])? {
                if filled == len {
                    // The reply is in and the socket holds nothing more (a reply comes alone):
                    // without this, the next request's first read would be a system call that
                    // finds nothing, since tokio keeps a socket readable until a read does.
                    // Data that arrived meanwhile sets it readable again with its own event.
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                    });
                    return Ok(len);
                }
                if filled > len {
                    // Bytes that came with the reply (a gateway that appends a CRC) are
                    // dropped, as tokio-modbus drops them; a reply out of step still fails the
                    // next exchange's transaction id check.
                    return Ok(len);
                }
            }
            stream.readable().await.map_err(transport_error)?;
            match stream.try_read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(ReadError::Transport(
                        "the device closed the connection".into(),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(transport_error(e)),
            }
        }
    }
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
        let transport = match endpoint {
            Endpoint::Tcp { host, port } => {
                Transport::Tcp(TcpClient::new(tcp_connect(host, *port, timeout).await?))
            }
            Endpoint::RtuOverTcp { host, port } => {
                let s = tcp_connect(host, *port, timeout).await?;
                Transport::Framed(tokio_modbus::client::rtu::attach_slave(s, Slave(1)))
            }
            Endpoint::Rtu(serial) => {
                let s = open_serial(serial)?;
                Transport::Framed(tokio_modbus::client::rtu::attach_slave(s, Slave(1)))
            }
        };
        let deadline = Box::pin(tokio::time::sleep_until(crate::clock::timer_deadline(
            timeout,
        )));
        Ok(Connection {
            transport,
            words: Vec::new(),
            bits: Vec::new(),
            deadline,
            timeout,
        })
    }

    /// Starts the clock of one request.
    fn arm(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.deadline
            .as_mut()
            .reset(crate::clock::timer_deadline(timeout));
    }

    /// One tokio-modbus request before the deadline, its failure sorted into device "no" and
    /// wire trouble.
    async fn framed_call(
        ctx: &mut Context,
        deadline: Pin<&mut Sleep>,
        unit: u8,
        request: Request<'static>,
        timeout: Duration,
    ) -> Result<Response, ReadError> {
        ctx.set_slave(Slave(unit));
        // The reply first, as `tokio::time::timeout` does: one that is in is not a timeout.
        let reply = tokio::select! {
            biased;
            reply = ctx.call(request) => reply,
            () = deadline => return Err(ReadError::Timeout(timeout)),
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

    /// Reads `count` addresses from `table` of unit `unit`, within `timeout`. The values are
    /// at least `count` (bits exactly `count`), borrowed until the next request.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<ReadData<'_>, ReadError> {
        self.arm(timeout);
        let registers = matches!(table, Table::Holding | Table::Input);
        match &mut self.transport {
            Transport::Tcp(c) => {
                let tid = c.take_tid();
                let request = mbap::read_request(tid, unit, table, start, count);
                let len = tokio::select! {
                    biased;
                    r = TcpClient::exchange(&c.stream, &mut c.buf[..], &request) => r?,
                    () = self.deadline.as_mut() => return Err(ReadError::Timeout(timeout)),
                };
                let pdu = mbap::reply_pdu(&c.buf[..len], tid, unit, mbap::read_function(table))?;
                if registers {
                    mbap::registers(pdu, count, &mut self.words)?;
                } else {
                    mbap::bits(pdu, count, &mut self.bits)?;
                }
            }
            Transport::Framed(ctx) => {
                // `Client::call`, not the `Reader` helpers: those `debug_assert` the reply
                // length, so a device answering with fewer values than asked would panic the
                // link task in debug builds. The length is checked below for every build.
                let request = match table {
                    Table::Holding => Request::ReadHoldingRegisters(start, count),
                    Table::Input => Request::ReadInputRegisters(start, count),
                    Table::Coil => Request::ReadCoils(start, count),
                    Table::Discrete => Request::ReadDiscreteInputs(start, count),
                };
                let deadline = self.deadline.as_mut();
                match (
                    table,
                    Self::framed_call(ctx, deadline, unit, request, timeout).await?,
                ) {
                    (Table::Holding, Response::ReadHoldingRegisters(words))
                    | (Table::Input, Response::ReadInputRegisters(words)) => self.words = words,
                    (Table::Coil, Response::ReadCoils(bits))
                    | (Table::Discrete, Response::ReadDiscreteInputs(bits)) => self.bits = bits,
                    (_, other) => {
                        return Err(ReadError::Protocol(format!(
                            "reply {other:?} does not answer a read of the {table} table"
                        )))
                    }
                }
                // Bit replies are padded to whole bytes.
                let got = if registers {
                    self.words.len()
                } else {
                    self.bits.len().min(usize::from(count))
                };
                if got < usize::from(count) {
                    return Err(ReadError::ShortReply {
                        got,
                        expected: usize::from(count),
                    });
                }
                self.bits.truncate(usize::from(count));
            }
        }
        Ok(if registers {
            ReadData::Registers(&self.words)
        } else {
            ReadData::Bits(&self.bits)
        })
    }

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
        self.arm(timeout);
        match &mut self.transport {
            Transport::Tcp(c) => {
                let tid = c.take_tid();
                mbap::write_request(&mut c.request, tid, unit, start, data);
                let len = tokio::select! {
                    biased;
                    r = TcpClient::exchange(&c.stream, &mut c.buf[..], &c.request) => r?,
                    () = self.deadline.as_mut() => return Err(ReadError::Timeout(timeout)),
                };
                let pdu = mbap::reply_pdu(&c.buf[..len], tid, unit, data.function_code())?;
                Ok(mbap::write_echo(pdu, start, data)?)
            }
            Transport::Framed(ctx) => {
                let request = match (data, data.function_code()) {
                    (WriteData::Coils(b), 5) => Request::WriteSingleCoil(start, b[0]),
                    (WriteData::Coils(b), _) => {
                        Request::WriteMultipleCoils(start, b.clone().into())
                    }
                    (WriteData::Registers(w), 6) => Request::WriteSingleRegister(start, w[0]),
                    (WriteData::Registers(w), _) => {
                        Request::WriteMultipleRegisters(start, w.clone().into())
                    }
                };
                let deadline = self.deadline.as_mut();
                let response = Self::framed_call(ctx, deadline, unit, request, timeout).await?;
                // The echo must name what was asked: a reply for another request means the
                // stream is out of step.
                let echoed = match response {
                    Response::WriteSingleCoil(a, _) | Response::WriteSingleRegister(a, _) => {
                        a == start
                    }
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
            assert_eq!(r.ok(), Some(ReadData::Registers(&[0; 3])), "read {i}");
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
        let ep = serve_once(
            |req| {
                // Byte count 6 (3 registers), 4 bytes of data; the MBAP length matches the frame.
                let pdu = [req[7], 6, 0, 1, 0, 2];
                let mut f = vec![req[0], req[1], 0, 0, 0, (pdu.len() + 1) as u8, req[6]];
                f.extend_from_slice(&pdu);
                f
            },
            true,
        )
        .await;
        let t = Duration::from_secs(2);
        let mut c = Connection::open(&ep, t).await.unwrap();
        let r = c.read(1, Table::Holding, 0, 3, t).await;
        assert!(
            matches!(r, Err(ReadError::Transport(_) | ReadError::Protocol(_))),
            "{r:?}"
        );
        assert!(r.unwrap_err().poisons_connection());
    }

    /// A server that reads one request at a time and answers with what `reply` makes of it,
    /// written in the pieces it returns (each written on its own, `gap` apart).
    async fn replier(
        reply: impl Fn([u8; 12]) -> Vec<Vec<u8>> + Send + 'static,
        gap: Duration,
    ) -> Endpoint {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let mut req = [0u8; 12];
            while s.read_exact(&mut req).await.is_ok() {
                for piece in reply(req) {
                    if s.write_all(&piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
            }
        });
        Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// A server that answers one request with what `reply` makes of it, then keeps the
    /// connection open until the client drops it (`keep_open`) or hangs up at once.
    async fn serve_once(
        reply: impl FnOnce([u8; 12]) -> Vec<u8> + Send + 'static,
        keep_open: bool,
    ) -> Endpoint {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 12];
            if s.read_exact(&mut req).await.is_ok() {
                let _ = s.write_all(&reply(req)).await;
                if keep_open {
                    let _ = s.read(&mut req).await;
                }
            }
        });
        Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// The reply to read request `req`: registers 0, 1, 2, ... as asked.
    fn counting_reply(req: [u8; 12]) -> Vec<u8> {
        let words = u16::from_be_bytes([req[10], req[11]]);
        let mut f = vec![req[0], req[1], 0, 0];
        f.extend_from_slice(&(words * 2 + 3).to_be_bytes());
        f.extend_from_slice(&[req[6], req[7], (words * 2) as u8]);
        for w in 0..words {
            f.extend_from_slice(&w.to_be_bytes());
        }
        f
    }

    // A reply may come in several segments (a slow gateway, a serial bridge): it is put
    // together, header first, and read after read stays in step.
    #[tokio::test]
    async fn a_reply_split_across_segments_is_put_together() {
        let ep = replier(
            |req| {
                let f = counting_reply(req);
                vec![f[..3].to_vec(), f[3..8].to_vec(), f[8..].to_vec()]
            },
            Duration::from_millis(20),
        )
        .await;
        let t = Duration::from_secs(2);
        let mut c = Connection::open(&ep, t).await.unwrap();
        for _ in 0..3 {
            let r = c.read(7, Table::Holding, 100, 4, t).await;
            assert_eq!(r.unwrap(), ReadData::Registers(&[0, 1, 2, 3]));
        }
    }

    // Replies that do not answer the request in flight are wire errors (the connection is
    // dropped), never values: another transaction id or another unit.
    #[tokio::test]
    async fn replies_out_of_step_are_wire_errors() {
        let t = Duration::from_secs(2);
        type Reply = fn([u8; 12]) -> Vec<Vec<u8>>;
        let cases: [(&str, Reply); 2] = [
            ("transaction", |req| {
                let mut f = counting_reply(req);
                f[1] = f[1].wrapping_add(1);
                vec![f]
            }),
            ("unit", |req| {
                let mut f = counting_reply(req);
                f[6] = f[6].wrapping_add(1);
                vec![f]
            }),
        ];
        for (what, reply) in cases {
            let ep = replier(reply, Duration::ZERO).await;
            let mut c = Connection::open(&ep, t).await.unwrap();
            let r = c.read(1, Table::Input, 0, 2, t).await;
            assert!(matches!(r, Err(ReadError::Protocol(_))), "{what}: {r:?}");
            assert!(r.unwrap_err().poisons_connection(), "{what}");
        }
    }

    // An exception is the device's "no": the connection stays in step and the next read works.
    #[tokio::test]
    async fn an_exception_leaves_the_connection_usable() {
        let ep = replier(
            |req| {
                if req[9] == 2 {
                    let mut f = vec![req[0], req[1], 0, 0, 0, 3, req[6]];
                    f.extend_from_slice(&[req[7] | 0x80, 2]);
                    vec![f]
                } else {
                    vec![counting_reply(req)]
                }
            },
            Duration::ZERO,
        )
        .await;
        let t = Duration::from_secs(2);
        let mut c = Connection::open(&ep, t).await.unwrap();
        let r = c.read(1, Table::Holding, 2, 1, t).await;
        assert!(matches!(r, Err(ReadError::Exception(2))), "{r:?}");
        assert!(!r.unwrap_err().poisons_connection());
        let r = c.read(1, Table::Holding, 0, 2, t).await;
        assert_eq!(r.unwrap(), ReadData::Registers(&[0, 1]));
    }

    // A device that hangs up mid-reply is a transport error, not a hang until the timeout.
    #[tokio::test]
    async fn a_device_hanging_up_mid_reply_is_a_transport_error_at_once() {
        let ep = serve_once(|req| counting_reply(req)[..5].to_vec(), false).await;
        let t = Duration::from_secs(30);
        let mut c = Connection::open(&ep, t).await.unwrap();
        let took = crate::clock::Stopwatch::start();
        let r = c.read(1, Table::Holding, 0, 2, t).await;
        assert!(matches!(r, Err(ReadError::Transport(_))), "{r:?}");
        assert!(took.elapsed() < Duration::from_secs(10));
    }

    // Bytes that come with a reply (a gateway appending an RTU CRC) are dropped, as
    // tokio-modbus drops them: the values are read and the next exchange stays in step.
    #[tokio::test]
    async fn bytes_trailing_a_reply_are_dropped_and_the_next_reply_is_read() {
        let ep = replier(
            |req| {
                let mut f = counting_reply(req);
                f.extend_from_slice(&[0xAB, 0xCD]);
                vec![f]
            },
            Duration::ZERO,
        )
        .await;
        let t = Duration::from_secs(2);
        let mut c = Connection::open(&ep, t).await.unwrap();
        for _ in 0..3 {
            let r = c.read(1, Table::Input, 0, 3, t).await;
            assert_eq!(r.unwrap(), ReadData::Registers(&[0, 1, 2]));
        }
    }
}
