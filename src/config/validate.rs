//! Checks across keys that APISIX makes in `apisix/cli/ops.lua` before rendering
//! nginx.conf, and the exposure rules for the Admin API's keys.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{default_allow_admin, Admin, AdminRole, Config, ConfigError, SAMPLE_ADMIN_KEY};

/// Loopback networks: 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8.
const LOOPBACK_NETS: [IpNet; 3] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
    IpNet::new_assert(
        IpAddr::V6(Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped()),
        104,
    ),
];

/// Whether every address of `net` is a loopback address.
fn is_loopback_net(net: &IpNet) -> bool {
    LOOPBACK_NETS.iter().any(|lo| lo.contains(net))
}

impl Admin {
    /// Entries (index, name) whose key is [`SAMPLE_ADMIN_KEY`].
    pub fn sample_key_entries(&self) -> Vec<(usize, &str)> {
        self.admin_key
            .iter()
            .enumerate()
            .filter(|(_, k)| k.key.expose() == SAMPLE_ADMIN_KEY)
            .map(|(i, k)| (i, k.name.as_str()))
            .collect()
    }

    /// Why clients other than this host can reach the Admin API, or `None`
    /// when both `admin_listen.ip` and every `allow_admin` entry are loopback.
    pub fn exposure(&self) -> Option<String> {
        let ip = self.admin_listen.ip;
        if !is_loopback_net(&IpNet::from(ip)) {
            return Some(format!("admin_listen.ip is {ip}"));
        }
        match &self.allow_admin {
            None => Some("allow_admin is null, so every client is allowed".into()),
            Some(nets) => nets
                .iter()
                .find(|n| !is_loopback_net(n))
                .map(|n| format!("allow_admin contains {n}")),
        }
    }
}

/// Cross-key checks APISIX performs in `apisix/cli/ops.lua` before rendering nginx.conf.
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    // Same order as ops.lua: the later listener is named first in the message.
    let mut taken: Vec<(u16, &'static str)> = Vec::new();
    let mut claim = |name: &'static str, port: u16| -> Result<(), ConfigError> {
        // Port 0 asks the OS for a free port, so it never clashes.
        if port == 0 {
            return Ok(());
        }
        if let Some((_, other)) = taken.iter().find(|(p, _)| *p == port) {
            return Err(ConfigError::PortConflict { name, port, other });
        }
        taken.push((port, name));
        Ok(())
    };
    if c.apisix.enable_admin {
        claim("admin port", c.deployment.admin.admin_listen.port)?;
    }
    if c.apisix.enable_control {
        claim("control port", c.apisix.control.port)?;
    }
    if c.plugin_attr.prometheus.enable_export_server {
        claim("prometheus port", c.plugin_attr.prometheus.export_addr.port)?;
    }

    let admin = &c.deployment.admin;
    if c.apisix.enable_admin && admin.admin_key_required {
        let local_only =
            matches!(&admin.allow_admin, Some(v) if v.len() == 1 && v[0] == default_allow_admin());
        if !local_only {
            if admin.admin_key.is_empty() {
                return Err(ConfigError::MissingAdminToken);
            }
            for k in &admin.admin_key {
                // Empty admin-role keys get generated at start-up; others stay unusable.
                if k.key.is_empty() && k.role != AdminRole::Admin {
                    tracing::warn!(name = %k.name, "admin_key entry has an empty key and will never match");
                }
            }
        }
    }

    // A key everyone knows guards nothing once others can connect.
    if c.apisix.enable_admin && admin.admin_key_required {
        if let Some((index, name)) = admin.sample_key_entries().first().copied() {
            match admin.exposure() {
                Some(why) => {
                    return Err(ConfigError::SampleAdminKey {
                        index,
                        name: name.to_string(),
                        why,
                    })
                }
                None => tracing::warn!(
                    name,
                    "admin_key entry uses the sample key from APISIX's documentation; the Admin API is loopback-only, but replace the key before exposing it"
                ),
            }
        }
    }

    if c.stream_plugins.iter().any(|p| p == "prometheus")
        && !c.plugin_attr.prometheus.enable_export_server
    {
        return Err(ConfigError::Other(
            "L4 prometheus metric should be exposed via export server".into(),
        ));
    }
    Ok(())
}
