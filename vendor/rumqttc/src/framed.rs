use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::mqttbytes::{self, v4::*};
use crate::{Incoming, MqttState, StateError};

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network {
    /// Frame MQTT packets from network connection
    framed: Framed<Box<dyn AsyncReadWrite>, Codec>,
    /// Maximum readv count
    max_readb_count: usize,
    /// A second handle on the TCP socket under `framed` (any TLS above it), when the
    /// connection keeps Nagle on for QoS 0 publishes: `flush` pushes urgent packets out with it.
    urgent_push: Option<std::net::TcpStream>,
    /// Written since the last flush: a packet that must not wait for Nagle (any packet but a
    /// QoS 0 publish).
    urgent_pending: bool,
}

impl Network {
    pub fn new(
        socket: impl AsyncReadWrite + 'static,
        max_incoming_size: usize,
        max_outgoing_size: usize,
    ) -> Network {
        let socket = Box::new(socket) as Box<dyn AsyncReadWrite>;
        let codec = Codec {
            max_incoming_size,
            max_outgoing_size,
        };
        let mut framed = Framed::new(socket, codec);
        // `write` only encodes into the buffer, never flushes: the caller may drop `poll()`
        // at any await, and a request taken from the channel (state updated, event queued)
        // must not be dropped with it while a write waits on a full socket. `flush` (with
        // its timeout) sends the buffer; until keepalive notices a stalled peer it grows.
        framed.set_backpressure_boundary(usize::MAX);

        Network {
            framed,
            max_readb_count: 10,
            urgent_push: None,
            urgent_pending: false,
        }
    }

    /// With Nagle on, QoS 0 publishes written in quick succession share TCP segments; every
    /// other packet (QoS 1/2 publish, ack, ping, subscribe, connect) is pushed out at its flush
    /// by turning TCP_NODELAY on and off again on `socket` (Linux sends what is queued when it
    /// is turned on), so it never waits for the peer's delayed ACK.
    pub(crate) fn set_urgent_push(&mut self, socket: Option<std::net::TcpStream>) {
        self.urgent_push = socket;
    }

    /// Reads and returns a single packet from network
    pub async fn read(&mut self) -> Result<Incoming, StateError> {
        match self.framed.next().await {
            Some(Ok(packet)) => Ok(packet),
            Some(Err(mqttbytes::Error::InsufficientBytes(_))) => unreachable!(),
            Some(Err(e)) => Err(StateError::Deserialization(e)),
            None => Err(StateError::ConnectionAborted),
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub async fn readb(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        // wait for the first read
        let mut res = self.framed.next().await;
        let mut count = 1;
        loop {
            match res {
                Some(Ok(packet)) => {
                    if let Some(outgoing) = state.handle_incoming_packet(packet)? {
                        self.write(outgoing).await?;
                    }

                    count += 1;
                    if count >= self.max_readb_count {
                        break;
                    }
                }
                Some(Err(mqttbytes::Error::InsufficientBytes(_))) => unreachable!(),
                Some(Err(e)) => return Err(StateError::Deserialization(e)),
                None => return Err(StateError::ConnectionAborted),
            }
            // do not wait for subsequent reads
            match self.framed.next().now_or_never() {
                Some(r) => res = r,
                _ => break,
            };
        }

        Ok(())
    }

    /// Serializes packet into write buffer
    pub async fn write(&mut self, packet: Packet) -> Result<(), StateError> {
        self.urgent_pending |= !matches!(&packet, Packet::Publish(p) if p.qos == mqttbytes::QoS::AtMostOnce);
        self.framed
            .feed(packet)
            .await
            .map_err(StateError::Deserialization)
    }

    pub async fn flush(&mut self) -> Result<(), crate::state::StateError> {
        self.framed
            .flush()
            .await
            .map_err(StateError::Deserialization)?;
        if std::mem::take(&mut self.urgent_pending) {
            if let Some(socket) = &self.urgent_push {
                // Best effort, never a reason to drop the connection: if Nagle cannot be
                // turned back on, NODELAY stays on and every packet leaves at once.
                let _ = socket.set_nodelay(true);
                if socket.set_nodelay(false).is_err() {
                    self.urgent_push = None;
                }
            }
        }
        Ok(())
    }
}

pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> AsyncReadWrite for T where T: AsyncRead + AsyncWrite + Send + Unpin {}
