//! Network helpers: a TCP proxy that can cut a broker off, a black hole that accepts
//! connections and never answers, free ports, and child processes killed on drop.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards TCP to `target` while up; `set_up(false)` closes every connection and refuses new
/// ones (accepted and closed at once), which is a broker outage as a client sees it.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Broker-to-client bytes forwarded per new connection; the rest is swallowed (None: all).
    reply_budget: Arc<Mutex<Option<usize>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let reply_budget: Arc<Mutex<Option<usize>>> = Arc::default();
        let (up2, conns2, budget2) = (up.clone(), conns.clone(), reply_budget.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let budget = *budget2.lock().unwrap();
                let h = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    match budget {
                        None => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Some(n) => {
                            let (mut ci, mut co) = inbound.into_split();
                            let (mut bi, mut bo) = outbound.into_split();
                            let up = tokio::io::copy(&mut ci, &mut bo);
                            let down = async {
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                let mut left = n;
                                let mut buf = [0u8; 4096];
                                loop {
                                    let k = match bi.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(k) => k,
                                    };
                                    let pass = k.min(left);
                                    left -= pass;
                                    if pass > 0 && co.write_all(&buf[..pass]).await.is_err() {
                                        break;
                                    }
                                }
                            };
                            tokio::select! { _ = up => {}, _ = down => {} }
                        }
                    }
                });
                conns2.lock().unwrap().push(h);
            }
        });
        Proxy {
            addr,
            up,
            reply_budget,
            conns,
            task,
        }
    }

    /// New connections get only the first `n` bytes the broker sends (e.g. 4: the MQTT 3.1.1
    /// CONNACK), so the client connects and publishes but never sees a PUBACK. None: normal.
    pub fn limit_replies(&self, n: Option<usize>) {
        *self.reply_budget.lock().unwrap() = n;
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set_up(false);
    }
}

/// Accepts TCP connections and never says a word: a broker that hangs.
pub struct BlackHole {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        BlackHole { addr, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child when dropped, even on panic.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker that cannot take some messages, as a client sees it: forwards MQTT both ways and
/// drops the connection (both sides, like Mosquitto meeting a malformed topic) at any PUBLISH
/// whose topic contains `marker`. `refused` counts those publishes.
pub struct RefusingProxy {
    pub addr: SocketAddr,
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl RefusingProxy {
    pub async fn start(target: SocketAddr, marker: &'static str) -> RefusingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let counter = counter.clone();
                conns.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut bi, mut bo) = outbound.into_split();
                    let down = tokio::io::copy(&mut bi, &mut co);
                    let up = async {
                        while let Some(packet) = read_mqtt_packet(&mut ci).await {
                            if packet[0] >> 4 == 3 && publish_topic(&packet).contains(marker) {
                                counter.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            use tokio::io::AsyncWriteExt;
                            if bo.write_all(&packet).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! { _ = down => {}, _ = up => {} }
                });
            }
        });
        RefusingProxy {
            addr,
            refused,
            task,
        }
    }
}

impl Drop for RefusingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One whole MQTT control packet (fixed header included), or None at the end of the stream.
async fn read_mqtt_packet(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut packet = vec![r.read_u8().await.ok()?];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = r.read_u8().await.ok()?;
        packet.push(b);
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let start = packet.len();
    packet.resize(start + len, 0);
    r.read_exact(&mut packet[start..]).await.ok()?;
    Some(packet)
}

/// The topic of a PUBLISH packet (lossy).
fn publish_topic(packet: &[u8]) -> String {
    let mut i = 1;
    while packet.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    let body = packet.get(i + 1..).unwrap_or(&[]);
    let n = body
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    String::from_utf8_lossy(body.get(2..2 + n).unwrap_or(&[])).into_owned()
}
