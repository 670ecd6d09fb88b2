//! Where a device is reached: `tcp://host:port`, `rtu:///dev/ttyUSB0?baud=19200&parity=even`,
//! or `rtu+tcp://host:port` (RTU framing through a TCP serial server).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Rtu(Serial),
    RtuOverTcp { host: String, port: u16 },
}

impl Endpoint {
    /// The physical link: devices with the same key share one transaction queue.
    pub fn link_key(&self) -> String {
        match self {
            Endpoint::Tcp { host, port } => format!("tcp://{host}:{port}"),
            Endpoint::Rtu(s) => format!("rtu://{}", s.path),
            Endpoint::RtuOverTcp { host, port } => format!("rtu+tcp://{host}:{port}"),
        }
    }

    pub fn is_serial_line(&self) -> bool {
        !matches!(self, Endpoint::Tcp { .. })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.link_key())
    }
}

const FORMS: &str = "accepted: \"tcp://host:port\", \"rtu:///dev/ttyUSB0?baud=19200&parity=even&stop_bits=1\", \"rtu+tcp://host:port\"";

pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if let Some(rest) = s.strip_prefix("tcp://") {
        let (host, port) = host_port(rest, s)?;
        Ok(Endpoint::Tcp { host, port })
    } else if let Some(rest) = s.strip_prefix("rtu+tcp://") {
        let (host, port) = host_port(rest, s)?;
        Ok(Endpoint::RtuOverTcp { host, port })
    } else if let Some(rest) = s.strip_prefix("rtu://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(format!("\"{s}\" has no serial device path; {FORMS}"));
        }
        let mut serial = Serial {
            path: path.to_string(),
            baud: 19_200,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("\"{pair}\" in \"{s}\" is not key=value"))?;
            match k {
                "baud" => {
                    serial.baud = v
                        .parse()
                        .ok()
                        .filter(|b| (300..=4_000_000).contains(b))
                        .ok_or_else(|| format!("baud \"{v}\" is not a rate between 300 and 4000000"))?
                }
                "parity" => {
                    serial.parity = match v {
                        "none" => Parity::None,
                        "even" => Parity::Even,
                        "odd" => Parity::Odd,
                        _ => return Err(format!("parity \"{v}\"; accepted: none, even, odd")),
                    }
                }
                "data_bits" => {
                    serial.data_bits = v
                        .parse()
                        .ok()
                        .filter(|b| (5..=8).contains(b))
                        .ok_or_else(|| format!("data_bits \"{v}\"; accepted: 5 to 8"))?
                }
                "stop_bits" => {
                    serial.stop_bits = v
                        .parse()
                        .ok()
                        .filter(|b| (1..=2).contains(b))
                        .ok_or_else(|| format!("stop_bits \"{v}\"; accepted: 1 or 2"))?
                }
                other => {
                    return Err(format!(
                        "unknown serial option \"{other}\"; accepted: baud, parity, data_bits, stop_bits"
                    ))
                }
            }
        }
        Ok(Endpoint::Rtu(serial))
    } else {
        Err(format!("\"{s}\" is not an endpoint; {FORMS}"))
    }
}

fn host_port(rest: &str, whole: &str) -> Result<(String, u16), String> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port \"{p}\" in \"{whole}\" is not 1 to 65535"))?;
            (h, port)
        }
        _ => (rest, 502),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("\"{whole}\" has no host; {FORMS}"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:5020"),
            Ok(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 5020
            })
        );
        assert_eq!(
            parse_endpoint("tcp://plc7"),
            Ok(Endpoint::Tcp {
                host: "plc7".into(),
                port: 502
            })
        );
        let Endpoint::Rtu(s) =
            parse_endpoint("rtu:///dev/ttyUSB0?baud=9600&parity=none&stop_bits=2").unwrap()
        else {
            panic!("not rtu")
        };
        assert_eq!(
            (s.path.as_str(), s.baud, s.parity, s.stop_bits),
            ("/dev/ttyUSB0", 9600, Parity::None, 2)
        );
        assert!(matches!(
            parse_endpoint("rtu+tcp://10.0.0.5:4001"),
            Ok(Endpoint::RtuOverTcp { port: 4001, .. })
        ));
        assert!(parse_endpoint("udp://x:1").is_err());
        assert!(parse_endpoint("tcp://x:0").is_err());
        assert!(parse_endpoint("tcp://x:99999").is_err());
        assert!(parse_endpoint("rtu:///dev/ttyS0?parity=mark").is_err());
        assert!(parse_endpoint("rtu:///dev/ttyS0?speed=1").is_err());
    }
}
