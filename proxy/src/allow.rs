//! `proxy_config.webconsole_allowed_hosts`: the CIDRs the webconsole route may reach. Pure.
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a single address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = ip.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("{text:?} has an invalid prefix length"))?
            }
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => bits_match(&n.octets(), &i.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(i)) => bits_match(&n.octets(), &i.octets(), self.prefix),
            _ => false,
        }
    }
}

/// The address to reach if `ip` is in one of `allowed`: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is its IPv4 address, judged by the IPv4 entries (on a dual-stack socket it
/// reaches that IPv4 address, so an IPv6 entry such as `::/0` must not let it through).
pub fn allowed(allowed: &[Cidr], ip: IpAddr) -> Option<IpAddr> {
    let ip = ip.to_canonical();
    allowed.iter().any(|c| c.contains(ip)).then_some(ip)
}

fn bits_match(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_address_is_judged_as_the_ipv4_address_it_reaches() {
        let any_v6 = [Cidr::parse("::/0").unwrap()];
        assert_eq!(allowed(&any_v6, "::ffff:127.0.0.1".parse().unwrap()), None);
        assert_eq!(allowed(&any_v6, "fd00::1".parse().unwrap()), Some("fd00::1".parse().unwrap()));
        let ten = [Cidr::parse("10.1.0.0/16").unwrap()];
        assert_eq!(allowed(&ten, "::ffff:10.1.2.3".parse().unwrap()), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(allowed(&ten, "::ffff:10.2.0.1".parse().unwrap()), None);
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/12").unwrap().contains("10.15.255.255".parse().unwrap()));
        assert!(!Cidr::parse("10.0.0.0/12").unwrap().contains("10.16.0.0".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "host", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
