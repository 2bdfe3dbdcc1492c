//! The ServerInfo JSON every BCS module stores in its ZooKeeper node (reference §5.1), and how
//! a mesos-driver's node becomes a [`MesosDriver`].
use bcs_shared::snapshot::MesosDriver;
use serde::{Deserialize, Serialize};

/// `types.ServerInfo` of bcs-common. Unknown fields (`ipv6`, `grpc_port`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    pub ip: String,
    pub port: u32,
    pub metric_port: u32,
    pub hostname: String,
    pub scheme: String,
    pub version: String,
    pub cluster: String,
    pub pid: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub external_ip: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub external_port: u32,
}

fn is_zero(port: &u32) -> bool {
    *port == 0
}

impl ServerInfo {
    /// The driver a proxy should dial: `external_ip:external_port` when the node carries both
    /// (as the original does since 2019-09, reference §5.2), else `ip:port`. `Err` names what
    /// is wrong; such a node is left out.
    pub fn driver(&self) -> Result<MesosDriver, String> {
        let scheme = self.scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {:?} is not http or https", self.scheme));
        }
        let (ip, port) = if !self.external_ip.is_empty() && self.external_port != 0 {
            (self.external_ip.as_str(), self.external_port)
        } else {
            (self.ip.as_str(), self.port)
        };
        let Ok(address) = ip.parse::<std::net::IpAddr>() else {
            return Err(format!("ip {ip:?} is not an IP address"));
        };
        // A driver that registered its bind address (0.0.0.0) would send the proxy to its own
        // host; a multicast or broadcast address is no driver's.
        if crate::rest::validate::nobodys_ip(address) {
            return Err(format!("ip {ip:?} is not an address a driver can be reached at"));
        }
        let port = u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {port} is not 1-65535"))?;
        Ok(MesosDriver { scheme, ip: ip.to_owned(), port })
    }
}

/// Parses a driver node's data.
pub fn parse_driver(data: &[u8]) -> Result<MesosDriver, String> {
    let info: ServerInfo = serde_json::from_slice(data).map_err(|e| format!("not ServerInfo JSON: {e}"))?;
    info.driver()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_from_node_data() {
        let d = parse_driver(br#"{"ip":"10.0.0.5","port":8090,"metric_port":9090,"hostname":"h","scheme":"https","version":"v","cluster":"BCS-MESOS-10001","pid":1}"#).unwrap();
        assert_eq!(d, MesosDriver { scheme: "https".into(), ip: "10.0.0.5".into(), port: 8090 });
        let d = parse_driver(br#"{"ip":"10.0.0.5","port":8090,"scheme":"HTTP","external_ip":"1.2.3.4","external_port":31000,"ipv6":"::1"}"#).unwrap();
        assert_eq!(d, MesosDriver { scheme: "http".into(), ip: "1.2.3.4".into(), port: 31000 });
        let d = parse_driver(br#"{"ip":"10.0.0.5","port":8090,"scheme":"http","external_ip":"1.2.3.4"}"#).unwrap();
        assert_eq!(d.ip, "10.0.0.5", "external_ip without external_port is not used");
        for bad in [
            &b"not json"[..],
            br#"{"ip":"host.example","port":1,"scheme":"http"}"#,
            br#"{"ip":"10.0.0.5","port":0,"scheme":"http"}"#,
            br#"{"ip":"10.0.0.5","port":70000,"scheme":"http"}"#,
            br#"{"ip":"10.0.0.5","port":1,"scheme":"ftp"}"#,
            br#"{"ip":"10.0.0.5","port":1}"#,
            br#"{"ip":"10.0.0.5","port":"1","scheme":"http"}"#,
            br#"{"ip":"0.0.0.0","port":8090,"scheme":"http"}"#,
            br#"{"ip":"::","port":8090,"scheme":"http"}"#,
            br#"{"ip":"10.0.0.5","port":8090,"scheme":"http","external_ip":"224.0.0.1","external_port":1}"#,
            br#"{"ip":"255.255.255.255","port":8090,"scheme":"http"}"#,
            br#"{"ip":"::ffff:0.0.0.0","port":8090,"scheme":"http"}"#,
        ] {
            assert!(parse_driver(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
