//! `[sink] type = "syslog"`: the relay's address, TLS, and what each RFC 5424 message carries.

use super::super::reader::TableReader;
use super::super::ConfigIssue;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct SyslogTls {
    pub ca: PathBuf,
    /// Our certificate and key, for receivers that authenticate clients.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the receiver's certificate must carry (defaults to the address's host).
    pub server_name: String,
}

#[derive(Debug, Clone)]
pub struct SyslogOptions {
    /// `host:port`.
    pub address: String,
    pub tls: Option<SyslogTls>,
    pub app_name: String,
    pub facility: u8,
    /// Which structured-data parameters each message carries.
    pub structured_data: StructuredData,
}

/// Which structured-data parameters each message carries (`sink.structured_data`; what each
/// choice sends is described in `sink/syslog/encode.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructuredData {
    Full,
    Minimal,
    None,
}

impl StructuredData {
    pub fn parse(s: &str) -> Option<StructuredData> {
        match s {
            "full" => Some(StructuredData::Full),
            "minimal" => Some(StructuredData::Minimal),
            "none" => Some(StructuredData::None),
            _ => None,
        }
    }
}

/// `sink.tls` unless set.
pub const DEFAULT_TLS: bool = true;
/// `sink.app_name` unless set: the APP-NAME of every message.
pub const DEFAULT_APP_NAME: &str = "log-sensor";
/// `sink.facility` unless set.
pub const DEFAULT_FACILITY: &str = "user";
/// `sink.structured_data` unless set (see [`StructuredData::parse`]).
pub const DEFAULT_STRUCTURED_DATA: &str = "full";

/// The keys of a syslog sink that have defaults, with them as a config file would write them
/// (`get` and `list` show them with origin `default`).
pub(super) fn defaults() -> Vec<(&'static str, toml::Value)> {
    use toml::Value;
    vec![
        ("tls", Value::Boolean(DEFAULT_TLS)),
        ("app_name", Value::String(DEFAULT_APP_NAME.into())),
        ("facility", Value::String(DEFAULT_FACILITY.into())),
        (
            "structured_data",
            Value::String(DEFAULT_STRUCTURED_DATA.into()),
        ),
    ]
}

/// The numeric facility for its RFC 5424 name.
fn facility_code(name: &str) -> Option<u8> {
    let names = log_sensor_common::record::FACILITIES;
    names.iter().position(|n| *n == name).map(|i| i as u8)
}

/// The host part of `host:port` (`[v6]:port` too); the port must be there.
fn split_address(address: &str) -> Result<String, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?}: expected host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{address:?}: bad port {port:?}"))?;
    if host.is_empty() {
        return Err(format!("{address:?}: no host"));
    }
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

pub(super) fn read(
    r: &mut TableReader,
    base: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<SyslogOptions> {
    let before = issues.len();
    let address = r.string("address", issues);
    let tls = r.boolean("tls", issues).unwrap_or(DEFAULT_TLS);
    let ca = r.string("ca", issues).map(|p| base.join(p));
    let cert = r.string("cert", issues).map(|p| base.join(p));
    let key = r.string("key", issues).map(|p| base.join(p));
    let server_name = r.string("server_name", issues);
    let app_name = r
        .string("app_name", issues)
        .unwrap_or_else(|| DEFAULT_APP_NAME.into());
    if app_name.is_empty()
        || app_name.len() > 48
        || !app_name.bytes().all(|b| (33..=126).contains(&b))
    {
        issues.push(ConfigIssue {
            key: "sink.app_name".into(),
            message: "1 to 48 printable ASCII characters without spaces (RFC 5424)".into(),
        });
    }
    let facility = {
        let f = r
            .string("facility", issues)
            .unwrap_or_else(|| DEFAULT_FACILITY.into());
        let code = facility_code(&f);
        if code.is_none() {
            issues.push(ConfigIssue {
                key: "sink.facility".into(),
                message: format!(
                    "{f:?}: expected a name such as \"user\", \"daemon\" or \"local0\"…\"local7\""
                ),
            });
        }
        code
    };
    let structured_data = {
        let s = r
            .string("structured_data", issues)
            .unwrap_or_else(|| DEFAULT_STRUCTURED_DATA.into());
        StructuredData::parse(&s).unwrap_or_else(|| {
            issues.push(ConfigIssue {
                key: "sink.structured_data".into(),
                message: format!("{s:?}: expected \"full\", \"minimal\" or \"none\""),
            });
            StructuredData::Full
        })
    };
    if tls && ca.is_none() {
        super::required("ca", "syslog (tls = true)", issues);
    }
    if cert.is_some() != key.is_some() {
        issues.push(ConfigIssue {
            key: if cert.is_some() {
                "sink.key"
            } else {
                "sink.cert"
            }
            .into(),
            message: "cert and key go together".into(),
        });
    }
    if !tls && (ca.is_some() || cert.is_some() || server_name.is_some()) {
        issues.push(ConfigIssue {
            key: "sink.tls".into(),
            message: "ca, cert, key and server_name need tls = true".into(),
        });
    }
    let host = match address.as_deref().map(split_address) {
        Some(Ok(h)) => Some(h),
        Some(Err(message)) => {
            issues.push(ConfigIssue {
                key: "sink.address".into(),
                message,
            });
            None
        }
        None => {
            super::required("address", "syslog", issues);
            None
        }
    };
    if let (true, Some(name)) = (tls, server_name.as_deref().or(host.as_deref())) {
        if let Err(e) = super::check_server_name(name) {
            issues.push(ConfigIssue {
                key: if server_name.is_some() {
                    "sink.server_name"
                } else {
                    "sink.address"
                }
                .into(),
                message: e,
            });
        }
    }
    match (address, host, facility) {
        (Some(address), Some(host), Some(facility)) if issues.len() == before => {
            Some(SyslogOptions {
                address,
                tls: tls.then(|| SyslogTls {
                    ca: ca.expect("checked above"),
                    identity: cert.zip(key),
                    server_name: server_name.unwrap_or(host),
                }),
                app_name,
                facility,
                structured_data,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities() {
        assert_eq!(facility_code("kern"), Some(0));
        assert_eq!(facility_code("user"), Some(1));
        assert_eq!(facility_code("local0"), Some(16));
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("local8"), None);
        assert_eq!(facility_code("bogus"), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(split_address("127.0.0.1:6514").unwrap(), "127.0.0.1");
        assert_eq!(split_address("[::1]:6514").unwrap(), "::1");
        assert!(split_address("host").is_err());
        assert!(split_address("host:x").is_err());
    }

    fn parse(sink: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            std::path::Path::new("/etc/ls/agent.toml"),
            &format!("[sink]\n{sink}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn config() {
        let c = parse(
            "type = \"syslog\"\naddress = \"relay:6514\"\nca = \"ca.pem\"\nfacility = \"local3\"",
        )
        .unwrap();
        let crate::config::SinkConfig::Syslog(o) = c.sinks[0].sink.clone() else {
            panic!("not a syslog sink")
        };
        let t = o.tls.unwrap();
        assert_eq!(t.ca, std::path::Path::new("/etc/ls/ca.pem"));
        assert_eq!(t.server_name, "relay");
        assert!(t.identity.is_none());
        assert_eq!((o.facility, o.app_name.as_str()), (19, "log-sensor"));
        assert_eq!(o.structured_data, StructuredData::Full, "the default");
        for (name, sd) in [
            ("full", StructuredData::Full),
            ("minimal", StructuredData::Minimal),
            ("none", StructuredData::None),
        ] {
            let c = parse(&format!(
                "type = \"syslog\"\naddress = \"relay:514\"\ntls = false\nstructured_data = \"{name}\""
            ))
            .unwrap();
            let crate::config::SinkConfig::Syslog(o) = c.sinks[0].sink.clone() else {
                panic!("not a syslog sink")
            };
            assert_eq!(o.structured_data, sd);
        }
        let c = parse("type = \"syslog\"\naddress = \"relay:514\"\ntls = false").unwrap();
        assert!(matches!(
            c.sinks[0].sink,
            crate::config::SinkConfig::Syslog(SyslogOptions { tls: None, .. })
        ));
        let e = parse("type = \"syslog\"\naddress = \"relay\"\ncert = \"c.pem\"\nfacility = \"nope\"\napp_name = \"a b\"\nstructured_data = \"lean\"").unwrap_err();
        for key in [
            "sink.address",
            "sink.ca",
            "sink.key",
            "sink.facility",
            "sink.app_name",
            "sink.structured_data",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        let e = parse("type = \"syslog\"\naddress = \"relay:514\"\ntls = false\nca = \"x\"")
            .unwrap_err();
        assert!(e.contains("sink.tls"), "{e}");
    }

    #[test]
    fn structured_data_names() {
        assert_eq!(StructuredData::parse("full"), Some(StructuredData::Full));
        assert_eq!(
            StructuredData::parse("minimal"),
            Some(StructuredData::Minimal)
        );
        assert_eq!(StructuredData::parse("none"), Some(StructuredData::None));
        assert_eq!(StructuredData::parse("Full"), None);
    }
}
