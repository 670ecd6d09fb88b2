//! `[mqtt]` / `[[mqtt]]`: the brokers alsentry publishes to.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{Problems, Source, TableReader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

pub fn parse_broker_url(s: &str) -> Result<BrokerUrl, String> {
    const FORMS: &str = "accepted: \"mqtt://host:1883\", \"mqtts://host:8883\"";
    let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("tcp://") {
        (false, r)
    } else {
        return Err(format!("\"{s}\" is not a broker URL; {FORMS}"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port \"{p}\" in \"{s}\" is not 1 to 65535"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("\"{s}\" has no host; {FORMS}"));
    }
    Ok(BrokerUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    })
}

/// Where a password comes from; the value itself is never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(String),
    Env(String),
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "File({p})"),
            PasswordSource::Env(v) => write!(f, "Env({v})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSink {
    pub name: String,
    pub url: BrokerUrl,
    pub topic_root: String,
    /// Empty means "alsentry-{agent.id}" (plus "-{name}" when there are several sinks).
    pub client_id: Option<String>,
    pub keep_alive_ms: i64,
    pub username: Option<String>,
    pub password: Option<PasswordSource>,
}

pub fn parse_sink(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    default_name: &str,
    p: &mut Problems,
) -> Option<MqttSink> {
    let mut r = TableReader::of(v, src, path, p)?;
    let name = r
        .opt_str(p, "name")
        .unwrap_or_else(|| default_name.to_string());
    let url = match r.req_str(p, "url", "e.g. \"mqtt://127.0.0.1:1883\"") {
        Some(u) => match parse_broker_url(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                r.problem(p, "url", e);
                None
            }
        },
        None => None,
    };
    let topic_root = r
        .opt_str(p, "topic_root")
        .unwrap_or_else(|| "alsentry".to_string());
    if topic_root.contains(['+', '#']) || topic_root.starts_with('/') || topic_root.ends_with('/') {
        r.problem(
            p,
            "topic_root",
            "a topic root may not contain '+' or '#' nor start or end with '/'",
        );
    }
    let client_id = r.opt_str(p, "client_id");
    let keep_alive_ms = r.opt_duration_ms(p, "keep_alive").unwrap_or(30_000);
    if !(5_000..=3_600_000).contains(&keep_alive_ms) {
        r.problem(p, "keep_alive", "keep_alive must be between 5s and 1h");
    }
    let username = r.opt_str(p, "username");
    let password_file = r.opt_str(p, "password_file");
    let password_env = r.opt_str(p, "password_env");
    let password = match (password_file, password_env) {
        (Some(f), None) => Some(PasswordSource::File(f)),
        (None, Some(e)) => Some(PasswordSource::Env(e)),
        (Some(_), Some(_)) => {
            r.problem(
                p,
                "password_env",
                "give either `password_file` or `password_env`, not both",
            );
            None
        }
        (None, None) => None,
    };
    if password.is_some() && username.is_none() {
        r.missing(p, "username", "a password needs a username");
    }
    r.finish(p);
    Some(MqttSink {
        name,
        url: url?,
        topic_root,
        client_id,
        keep_alive_ms,
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883"),
            Ok(BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            })
        );
        assert_eq!(parse_broker_url("mqtts://broker").map(|u| u.port), Ok(8883));
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://:1883").is_err());
    }
}
