//! The embedded MQTT broker (rumqttd) used by `alsentry demo` and the hermetic tests: a real
//! broker in-process, so nothing needs installing to see alsentry work.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[derive(Debug)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot find a free local port: {0}")]
    Port(std::io::Error),
    #[error("the embedded broker did not start listening on {0} within 10 s")]
    NotReady(SocketAddr),
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

fn free_port() -> Result<u16, std::io::Error> {
    // rumqttd binds the address itself and does not report the port it got, so a port is
    // reserved by binding 0 and released just before the broker binds it.
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl EmbeddedBroker {
    /// Starts a broker on a free loopback port and returns once it accepts connections.
    pub fn start() -> Result<EmbeddedBroker, BrokerError> {
        let port = free_port().map_err(BrokerError::Port)?;
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn start_on(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
        let server = ServerSettings {
            name: "v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1 << 20,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 1_000,
                max_outgoing_packet_count: 200,
                max_segment_size: 1 << 20,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("1".to_string(), server)])),
            v5: None,
            ws: None,
            cluster: None,
            console: None,
            bridge: None,
            prometheus: None,
            metrics: None,
        };
        std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        let started = crate::clock::Stopwatch::start();
        while started.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(EmbeddedBroker { addr });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(BrokerError::NotReady(addr))
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}
