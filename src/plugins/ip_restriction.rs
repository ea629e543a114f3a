//! `ip-restriction`: close sessions whose client address is on the
//! blacklist, or not on the whitelist (status 403).
//!
//! The client address is the one routing saw (`remote_addr`, replaced by a
//! trusted PROXY protocol header). Bare IPs are host networks (/32, /128);
//! IPv4-mapped IPv6 clients were already turned into IPv4.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::Rejected;

/// A compiled ip-restriction conf.
#[derive(Debug)]
pub struct IpRestriction {
    nets: Vec<IpNet>,
    allow: bool,
}

/// Parse an IP or CIDR; a bare IP is a host network.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

impl IpRestriction {
    /// Compile a validated conf (exactly one of `whitelist` / `blacklist`).
    pub fn build(conf: &Value) -> Result<IpRestriction, String> {
        let (list, allow) = match (conf.get("whitelist"), conf.get("blacklist")) {
            (Some(w), _) => (w, true),
            (None, Some(b)) => (b, false),
            (None, None) => return Err("ip-restriction needs whitelist or blacklist".into()),
        };
        let nets = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let s = v.as_str().unwrap_or_default();
                parse_net(s).ok_or_else(|| format!("invalid ip address: {s}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IpRestriction { nets, allow })
    }

    /// Whether `ip` may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip)) == self.allow
    }

    /// Preread: reject with 403 when the client may not pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), Rejected> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Rejected::new(
                "ip-restriction",
                403,
                format!("client {ip} is not allowed"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn whitelist_and_blacklist_with_cidrs_and_v6() {
        let w = IpRestriction::build(&json!({"whitelist": ["127.0.0.0/24", "::1"]})).unwrap();
        assert!(w.allows(ip("127.0.0.9")));
        assert!(w.allows(ip("::1")));
        assert!(!w.allows(ip("127.0.1.1")));
        assert_eq!(w.check(ip("10.0.0.1")).unwrap_err().code, 403);
        let b = IpRestriction::build(&json!({"blacklist": ["10.0.0.1", "fe80::/10"]})).unwrap();
        assert!(!b.allows(ip("10.0.0.1")));
        assert!(b.allows(ip("10.0.0.2")));
        assert!(!b.allows(ip("fe80::1")));
        assert!(IpRestriction::build(&json!({})).is_err());
        assert!(IpRestriction::build(&json!({"whitelist": ["nope"]})).is_err());
    }
}
