//! Unit tests of loading, defaults, values and their error messages.
#![allow(clippy::unwrap_used)]

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, String> {
    Config::from_yaml_with_env(text, &no_env).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    let e = parse(text).unwrap_err();
    assert!(!e.contains('\n'), "multi-line error: {e}");
    e
}

#[test]
fn defaults_match_apisix() {
    for c in [Config::default(), parse("").unwrap(), parse("{}").unwrap()] {
        assert_eq!(c.apisix.proxy_mode, ProxyMode::Http);
        assert!(c.apisix.stream_proxy.is_none());
        assert!(!c.stream_enabled());
        assert!(c.apisix.enable_admin && c.apisix.enable_control);
        assert_eq!(c.apisix.control.socket_addr().to_string(), "127.0.0.1:9090");
        assert!(c.apisix.enable_reuseport);
        assert_eq!(c.apisix.proxy_protocol, ProxyProtocol::default());
        assert_eq!(c.apisix.data_encryption.keyring.len(), 2);
        assert_eq!(
            c.apisix.data_encryption.keyring[0].expose(),
            "qeddd145sfvddff3"
        );
        assert!(!c.apisix.disable_upstream_healthcheck);
        let d = &c.deployment;
        assert_eq!(d.role, DeploymentRole::Traditional);
        assert_eq!(d.config_provider, ConfigProvider::Local);
        assert_eq!(
            d.admin.admin_listen.socket_addr().to_string(),
            "0.0.0.0:9180"
        );
        assert_eq!(
            d.admin.allow_admin,
            Some(vec!["127.0.0.0/24".parse().unwrap()])
        );
        assert_eq!(
            d.admin.admin_key,
            vec![AdminKey {
                name: "admin".into(),
                key: Secret::default(),
                role: AdminRole::Admin
            }]
        );
        assert!(d.admin.admin_key_required && d.admin.enable_admin_cors);
        assert_eq!(d.etcd, Etcd::default());
        assert_eq!(d.etcd.host, ["http://127.0.0.1:2379"]);
        assert_eq!(d.etcd.prefix, "/apisix");
        assert_eq!(
            (
                d.etcd.timeout,
                d.etcd.watch_timeout,
                d.etcd.startup_retry,
                d.etcd.resync_delay
            ),
            (30, 50, 2, 5)
        );
        assert_eq!(d.local.data_dir, PathBuf::from("data"));
        let p = &c.plugin_attr.prometheus;
        assert_eq!(p.export_uri, "/apisix/prometheus/metrics");
        assert_eq!(p.metric_prefix, "apisix_");
        assert!(p.enable_export_server);
        assert_eq!(p.export_addr.socket_addr().to_string(), "127.0.0.1:9091");
        assert_eq!(p.refresh_interval, 15);
        assert_eq!(c.nginx_config.stream, NginxStream::default());
        assert_eq!(c.nginx_config.stream.access_log, "logs/access_stream.log");
        assert_eq!(
            c.stream_plugins,
            [
                "ip-restriction",
                "limit-bandwidth",
                "limit-conn",
                "mqtt-proxy",
                "syslog",
                "traffic-split"
            ]
        );
    }
}

const INTERFACE_EXAMPLE: &str = r#"
apisix:
  proxy_mode: stream            # http | stream | http&stream; stream routes need stream
  stream_proxy:
    tcp:
      - 9100                    # port on all interfaces
      - "127.0.0.1:9101"        # address:port
      - addr: 9102              # table form
        tls: true               # TLS termination, certificate picked by SNI from ssls
      - "9300-9310"             # port range
      - addr: 9443
        tls_passthrough: true   # route by ClientHello SNI without terminating
    udp:
      - 9200
      - "127.0.0.1:9211"
  enable_control: true
  control: {ip: 127.0.0.1, port: 9090}
deployment:
  role: traditional
  role_traditional:
    config_provider: local      # local (embedded default) | etcd | yaml
  admin:
    admin_key:
      - {name: admin, key: '', role: admin}   # '' -> generate, write back, print once
    admin_listen: {ip: 127.0.0.1, port: 9180}
    allow_admin: [127.0.0.0/24]
  etcd:
    host: ["http://127.0.0.1:2379"]
    prefix: /apisix
plugin_attr:
  prometheus:
    export_addr: {ip: 127.0.0.1, port: 9091}   # GET /apisix/prometheus/metrics
"#;

#[test]
fn interface_example_parses() {
    let c = parse(INTERFACE_EXAMPLE).unwrap();
    assert!(c.stream_enabled());
    let sp = c.apisix.stream_proxy.as_ref().unwrap();
    assert_eq!(sp.tcp.len(), 4 + 11);
    assert_eq!(sp.tcp[0].listen_addr(), "0.0.0.0:9100");
    assert_eq!(sp.tcp[1].listen_addr(), "127.0.0.1:9101");
    assert!(sp.tcp[2].tls);
    assert_eq!(sp.tcp[3].listen_addr(), "0.0.0.0:9300");
    assert_eq!(sp.tcp[13].listen_addr(), "0.0.0.0:9310");
    assert!(sp.tcp[14].tls_passthrough);
    let udp: Vec<_> = sp.udp.iter().map(ListenSpec::listen_addr).collect();
    assert_eq!(udp, ["0.0.0.0:9200", "127.0.0.1:9211"]);
    assert_eq!(
        c.deployment.admin.admin_listen.socket_addr().to_string(),
        "127.0.0.1:9180"
    );
}

#[test]
fn full_config_values() {
    let c = parse(
        r#"
apisix:
  proxy_mode: "http&stream"
  enable_admin: true
  enable_reuseport: false
  proxy_protocol: {enable_tcp_pp: true, enable_tcp_pp_to_upstream: true}
  ssl: {fallback_sni: "a.example"}
  data_encryption: {keyring: ["0123456789abcdef0123456789abcdef"]}
  disable_upstream_healthcheck: true
  stream_proxy:
    only: true
    tcp: [9100]
    udp: [9200]
  node_listen: 9080
deployment:
  role: traditional
  role_traditional: {config_provider: etcd}
  admin:
    admin_key:
      - {name: a, key: k1, role: admin}
      - {name: v, key: 12345, role: viewer}
    admin_key_required: true
    allow_admin: [10.0.0.1, "::1", 192.168.0.0/16]
    enable_admin_cors: false
    admin_listen: {ip: "::", port: "9181"}
  etcd:
    host: ["https://e1:2379", "http://e2:2379"]
    prefix: /p
    timeout: 3
    keepalive_interval: 2
    user: root
    password: secretpw
    tls: {cert: /c.pem, key: /k.pem, verify: false, sni: etcd.local}
  local: {data_dir: /var/lib/apisix-stream}
plugin_attr:
  prometheus: {export_uri: /m, metric_prefix: x_, enable_export_server: false, refresh_interval: 5}
nginx_config:
  stream: {real_ip_from: [127.0.0.1, 10.0.0.0/8], enable_access_log: true, access_log: /tmp/a.log}
stream_plugins: [ip-restriction]
"#,
    )
    .unwrap();
    assert!(c.stream_enabled());
    assert_eq!(c.apisix.proxy_mode, ProxyMode::HttpAndStream);
    assert!(!c.apisix.enable_reuseport);
    let sp = c.apisix.stream_proxy.as_ref().unwrap();
    assert!(sp.tcp[0].proxy_protocol && sp.tcp[0].proxy_protocol_to_upstream);
    assert!(!sp.udp[0].proxy_protocol);
    assert_eq!(c.apisix.ssl.fallback_sni.as_deref(), Some("a.example"));
    assert_eq!(c.apisix.data_encryption.keyring.len(), 1);
    assert!(c.apisix.disable_upstream_healthcheck);
    let a = &c.deployment.admin;
    assert_eq!(c.deployment.config_provider, ConfigProvider::Etcd);
    assert_eq!(a.admin_key[0].key.expose(), "k1");
    assert_eq!(a.admin_key[1].key.expose(), "12345");
    assert_eq!(a.admin_key[1].role, AdminRole::Viewer);
    let allow: Vec<String> = a
        .allow_admin
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(allow, ["10.0.0.1/32", "::1/128", "192.168.0.0/16"]);
    assert!(!a.enable_admin_cors);
    assert_eq!(a.admin_listen.socket_addr().to_string(), "[::]:9181");
    let e = &c.deployment.etcd;
    assert_eq!(e.host.len(), 2);
    assert_eq!(
        (
            e.prefix.as_str(),
            e.timeout,
            e.watch_timeout,
            e.keepalive_interval
        ),
        ("/p", 3, 50, 2)
    );
    assert_eq!(e.user.as_deref(), Some("root"));
    assert_eq!(e.password.as_ref().map(Secret::expose), Some("secretpw"));
    let tls = e.tls.as_ref().unwrap();
    assert_eq!(
        (tls.cert.as_deref(), tls.verify, tls.sni.as_deref()),
        (Some("/c.pem"), false, Some("etcd.local"))
    );
    assert_eq!(
        c.deployment.local.data_dir,
        PathBuf::from("/var/lib/apisix-stream")
    );
    let p = &c.plugin_attr.prometheus;
    assert_eq!(
        (
            p.export_uri.as_str(),
            p.metric_prefix.as_str(),
            p.enable_export_server,
            p.refresh_interval
        ),
        ("/m", "x_", false, 5)
    );
    let s = &c.nginx_config.stream;
    assert_eq!(s.real_ip_from.len(), 2);
    assert!(s.enable_access_log);
    assert_eq!(c.stream_plugins, ["ip-restriction"]);
    assert_eq!(c.nginx_config.error_log, "stderr");
    assert_eq!(c.nginx_config.error_log_level, ErrorLogLevel::Info);
    assert_eq!(s.access_log_format, crate::access_log::DEFAULT_FORMAT);
    // Secrets never show up in Debug output.
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("secretpw") && !dbg.contains("k1") && !dbg.contains("0123456789abcdef"));
}

#[test]
fn nulls_delete_defaults() {
    let c = parse("deployment:\n  admin:\n    allow_admin:\n    admin_key: ~\n    admin_key_required: false\nstream_plugins:\napisix:\n  control:\n").unwrap();
    assert_eq!(c.deployment.admin.allow_admin, None);
    assert!(c.deployment.admin.admin_key.is_empty());
    assert!(c.stream_plugins.is_empty());
    assert_eq!(c.apisix.control.port, 9090);
}

#[test]
fn stream_needs_mode_and_section() {
    assert!(!parse("apisix: {proxy_mode: stream}")
        .unwrap()
        .stream_enabled());
    assert!(!parse("apisix: {stream_proxy: {tcp: [9100]}}")
        .unwrap()
        .stream_enabled());
    assert!(
        parse("apisix: {proxy_mode: stream, stream_proxy: {tcp: [9100]}}")
            .unwrap()
            .stream_enabled()
    );
    // Entries are only checked when stream is on, as APISIX does.
    let c = parse("apisix: {stream_proxy: {tcp: [0]}}").unwrap();
    assert!(c.apisix.stream_proxy.is_none());
}

#[test]
fn listener_errors_surface() {
    assert_eq!(
        err("apisix: {proxy_mode: stream, stream_proxy: {tcp: [0]}}"),
        "invalid stream_proxy.tcp entry: port out of range (1-65535): 0"
    );
    assert_eq!(
        err("apisix: {proxy_mode: stream, stream_proxy: {udp: ['3000-2000']}}"),
        "invalid stream_proxy.udp entry: invalid port range (start > end): 3000-2000"
    );
    let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: [9100, '0.0.0.0:9100']}}");
    assert_eq!(
        e,
        "invalid stream_proxy.tcp entry: duplicate address 0.0.0.0:9100: \"0.0.0.0:9100\""
    );
    let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: ['9100-9102', 9101]}}");
    assert!(e.contains("duplicate address 0.0.0.0:9101"), "{e}");
    // Same port on tcp and udp is fine.
    parse("apisix: {proxy_mode: stream, stream_proxy: {tcp: [9100], udp: [9100]}}").unwrap();
    let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: []}}");
    assert_eq!(
        e,
        "invalid apisix.stream_proxy.tcp: [] (expected at least one entry)"
    );
    let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: 9100}}");
    assert!(
        e.starts_with("invalid apisix.stream_proxy.tcp: 9100"),
        "{e}"
    );
}

#[test]
fn bad_values_name_key_value_and_reason() {
    let cases = [
            ("apisix: {proxy_mode: tcp}", "invalid apisix.proxy_mode: \"tcp\" (expected http, stream or http&stream)"),
            ("apisix: {proxy_mode: 1}", "invalid apisix.proxy_mode: 1 (expected http, stream or http&stream)"),
            ("deployment: {role_traditional: {config_provider: xds}}", "invalid deployment.role_traditional.config_provider: \"xds\" (expected local, etcd, yaml or json)"),
            ("deployment: {role: edge}", "invalid deployment.role: \"edge\" (expected traditional, control_plane or data_plane)"),
            ("deployment: {admin: {admin_key: [{name: a, key: b, role: root}]}}", "invalid deployment.admin.admin_key[0].role: \"root\" (expected admin or viewer)"),
            ("deployment: {admin: {admin_key: [{name: a, key: b}, x]}}", "invalid deployment.admin.admin_key[1]: <a string, not shown> (expected a table {name, key, role})"),
            ("deployment: {admin: {allow_admin: [127.0.0.1, nope]}}", "invalid deployment.admin.allow_admin[1]: \"nope\" (not an IP address or CIDR)"),
            ("deployment: {admin: {allow_admin: [10.0.0.0/33]}}", "invalid deployment.admin.allow_admin[0]: \"10.0.0.0/33\" (not an IP address or CIDR)"),
            ("nginx_config: {stream: {real_ip_from: [1.2.3]}}", "invalid nginx_config.stream.real_ip_from[0]: \"1.2.3\" (not an IP address or CIDR)"),
            ("nginx_config: {stream: {access_log_format_escape: xml}}", "invalid nginx_config.stream.access_log_format_escape: \"xml\" (expected default, json or none)"),
            ("nginx_config: {stream: {access_log_format: '$remote_addr $request'}}", "invalid nginx_config.stream.access_log_format: \"$remote_addr $request\" (unknown variable \"$request\")"),
            ("nginx_config: {error_log_level: verbose}", "invalid nginx_config.error_log_level: \"verbose\" (expected debug, info, notice, warn, error, crit, alert or emerg)"),
            ("deployment: {admin: {admin_listen: {port: 70000}}}", "invalid deployment.admin.admin_listen.port: 70000 (expected an integer 0-65535)"),
            ("apisix: {control: {port: abc}}", "invalid apisix.control.port: \"abc\" (expected an integer 0-65535)"),
            ("apisix: {control: {ip: localhost}}", "invalid apisix.control.ip: \"localhost\" (expected an IP address)"),
            ("plugin_attr: {prometheus: {export_addr: {port: -1}}}", "invalid plugin_attr.prometheus.export_addr.port: -1 (expected an integer 0-65535)"),
            ("deployment: {etcd: {host: [\"127.0.0.1:2379\"]}}", "invalid deployment.etcd.host[0]: \"127.0.0.1:2379\" (expected a URL matching ^https?://)"),
            ("deployment: {etcd: {prefix: ''}}", "invalid deployment.etcd.prefix: \"\" (must not be empty)"),
            ("deployment: {etcd: {timeout: 0}}", "invalid deployment.etcd.timeout: 0 (expected an integer >= 1)"),
            ("deployment: {etcd: {keepalive_interval: 0}}", "invalid deployment.etcd.keepalive_interval: 0 (expected an integer >= 1)"),
            ("apisix: {enable_admin: 'yes'}", "invalid apisix.enable_admin: \"yes\" (expected true or false)"),
            ("apisix: [1]", "invalid apisix: [1] (expected a table)"),
            ("apisix: {data_encryption: {keyring: [short]}}", "invalid apisix.data_encryption.keyring[0]: <5 bytes> (expected a 16- or 32-byte string)"),
            ("stream_plugins: [1]", "invalid stream_plugins[0]: 1 (expected a string)"),
            ("- 1", "invalid config.yaml: [1] (expected a table at the top level)"),
        ];
    for (text, want) in cases {
        assert_eq!(err(text), want, "for {text}");
    }
}

#[test]
fn worker_processes_is_auto_or_a_bounded_count() {
    use super::{WorkerProcesses, MAX_WORKER_PROCESSES};
    let workers = |text: &str| parse(text).map(|c| c.nginx_config.worker_processes);
    assert_eq!(workers("{}").unwrap(), WorkerProcesses::Auto);
    assert_eq!(
        workers("nginx_config: {worker_processes: auto}").unwrap(),
        WorkerProcesses::Auto
    );
    for (text, n) in [("1", 1), ("\"4\"", 4), ("256", MAX_WORKER_PROCESSES)] {
        let w = workers(&format!("nginx_config: {{worker_processes: {text}}}")).unwrap();
        assert_eq!(w.count(64), n, "for {text}");
    }
    assert_eq!(WorkerProcesses::Auto.count(3), 3);
    assert_eq!(WorkerProcesses::Auto.count(0), 1);
    for bad in [
        "abc", "-3", "0", "1000", "257", "2.5", "\"\"", "[2]", "true", "Auto",
    ] {
        let text = format!("nginx_config: {{worker_processes: {bad}}}");
        let shown = match bad {
            "abc" | "Auto" => format!("\"{bad}\""),
            b => b.to_string(),
        };
        assert_eq!(
            err(&text),
            format!(
                "invalid nginx_config.worker_processes: {shown} (expected auto or an integer from 1 to 256)"
            ),
            "for {bad}"
        );
    }
}

#[test]
fn port_zero_allowed_for_api_listeners() {
    let c = parse("apisix: {control: {port: 0}}\ndeployment: {admin: {admin_listen: {port: 0}}}\nplugin_attr: {prometheus: {export_addr: {port: 0}}}").unwrap();
    assert_eq!(c.apisix.control.port, 0);
    assert_eq!(c.deployment.admin.admin_listen.port, 0);
    assert_eq!(c.plugin_attr.prometheus.export_addr.port, 0);
}

#[test]
fn port_conflicts() {
    assert_eq!(
        err("apisix: {control: {port: 9180}}"),
        "control port 9180 conflicts with admin port"
    );
    assert_eq!(
        err("plugin_attr: {prometheus: {export_addr: {port: 9090}}}"),
        "prometheus port 9090 conflicts with control port"
    );
    // Disabled listeners do not claim their port.
    parse("apisix: {enable_admin: false, control: {port: 9180}}").unwrap();
    parse(
        "apisix: {enable_control: false}\nplugin_attr: {prometheus: {export_addr: {port: 9090}}}",
    )
    .unwrap();
}

#[test]
fn missing_admin_token() {
    let text = "deployment: {admin: {admin_key: ~, allow_admin: [0.0.0.0/0]}}";
    assert!(err(text).starts_with("ERROR: missing valid Admin API token."));
    // Fine when only localhost may connect, when keys are off, or when admin is off.
    parse("deployment: {admin: {admin_key: ~}}").unwrap();
    parse("deployment: {admin: {admin_key: ~, allow_admin: ~, admin_key_required: false}}")
        .unwrap();
    parse("apisix: {enable_admin: false}\ndeployment: {admin: {admin_key: ~, allow_admin: ~}}")
        .unwrap();
    // data_plane forces the Admin API off, control_plane on.
    let c = parse("deployment: {role: data_plane, admin: {admin_key: ~, allow_admin: ~}}").unwrap();
    assert!(!c.apisix.enable_admin);
    assert_eq!(c.deployment.config_provider, ConfigProvider::Etcd);
    let c = parse("apisix: {enable_admin: false}\ndeployment: {role: control_plane}").unwrap();
    assert!(c.apisix.enable_admin);
}

#[test]
fn prometheus_in_stream_plugins_needs_export_server() {
    assert_eq!(
            err("stream_plugins: [prometheus]\nplugin_attr: {prometheus: {enable_export_server: false}}"),
            "L4 prometheus metric should be exposed via export server"
        );
    parse("stream_plugins: [prometheus]").unwrap();
}

#[test]
fn syntax_errors_are_one_line_with_position() {
    let e = err("apisix:\n  proxy_mode: [stream\n");
    assert!(e.starts_with("failed to parse config.yaml: "), "{e}");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn load_resolves_data_dir_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "apisix: {proxy_mode: stream}\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.deployment.local.data_dir, dir.path().join("data"));
    std::fs::write(&path, "deployment: {local: {data_dir: store/x}}\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.deployment.local.data_dir, dir.path().join("store/x"));
    std::fs::write(&path, "deployment: {local: {data_dir: /abs}}\n").unwrap();
    assert_eq!(
        Config::load(&path).unwrap().deployment.local.data_dir,
        PathBuf::from("/abs")
    );
    std::fs::write(&path, "a: [\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("failed to parse {}: ", path.display())),
        "{e}"
    );
    assert!(!e.contains('\n'));
    let missing = dir.path().join("nope.yaml");
    let e = Config::load(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.yaml"), "{e}");
}

fn sample_key_yaml(listen_ip: &str, allow: &str) -> String {
    format!(
            "deployment:\n  admin:\n    admin_key:\n      - {{name: admin, key: abcdefghijklmnop, role: admin}}\n      - {{name: shared, key: {SAMPLE_ADMIN_KEY}, role: viewer}}\n    admin_listen: {{ip: '{listen_ip}', port: 9180}}\n{allow}"
        )
}

#[test]
fn sample_admin_key_is_refused_unless_the_admin_api_is_loopback_only() {
    let refused = [
        // Listening on every interface, whatever allow_admin says.
        (
            "0.0.0.0",
            "    allow_admin: [127.0.0.0/24]\n",
            "admin_listen.ip is 0.0.0.0",
        ),
        (
            "::",
            "    allow_admin: [127.0.0.1]\n",
            "admin_listen.ip is ::",
        ),
        (
            "10.1.2.3",
            "    allow_admin: [127.0.0.0/24]\n",
            "admin_listen.ip is 10.1.2.3",
        ),
        // Loopback listener, but allow_admin lets anyone in or names other networks.
        (
            "127.0.0.1",
            "    allow_admin: ~\n",
            "allow_admin is null, so every client is allowed",
        ),
        (
            "127.0.0.1",
            "    allow_admin: [127.0.0.0/24, 10.0.0.0/8]\n",
            "allow_admin contains 10.0.0.0/8",
        ),
        (
            "127.0.0.1",
            "    allow_admin: [0.0.0.0/0]\n",
            "allow_admin contains 0.0.0.0/0",
        ),
        (
            "127.0.0.1",
            "    allow_admin: [127.0.0.0/7]\n",
            "allow_admin contains 127.0.0.0/7",
        ),
        (
            "::1",
            "    allow_admin: ['::/0']\n",
            "allow_admin contains ::/0",
        ),
    ];
    for (ip, allow, why) in refused {
        let e = err(&sample_key_yaml(ip, allow));
        assert!(
            e.starts_with(
                "refusing to start: deployment.admin.admin_key[1] (\"shared\") is the sample key"
            ),
            "{e}"
        );
        assert!(e.contains(why), "want {why:?} in {e}");
        assert!(e.contains("set a unique key"), "{e}");
        assert!(!e.contains(SAMPLE_ADMIN_KEY), "{e}");
    }
    // The default allow_admin (absent key) is loopback; a 0.0.0.0 listener still refuses.
    let e = err(&format!(
        "deployment: {{admin: {{admin_key: [{{name: a, key: {SAMPLE_ADMIN_KEY}}}]}}}}"
    ));
    assert!(
        e.contains("admin_key[0] (\"a\")") && e.contains("0.0.0.0"),
        "{e}"
    );
    // Loopback only on both sides: allowed.
    for (ip, allow) in [
        ("127.0.0.1", "    allow_admin: [127.0.0.0/24]\n"),
        (
            "127.0.0.1",
            "    allow_admin: [127.0.0.1, '::1', 127.0.0.0/8]\n",
        ),
        ("::1", "    allow_admin: ['::1/128', '::ffff:127.0.0.1']\n"),
        ("127.0.0.2", "    allow_admin: []\n"),
    ] {
        let c = parse(&sample_key_yaml(ip, allow)).unwrap();
        assert_eq!(c.deployment.admin.sample_key_entries(), [(1, "shared")]);
        assert_eq!(c.deployment.admin.exposure(), None);
    }
    // No check when the key is never used: Admin API off, data plane, keys not required.
    let exposed = sample_key_yaml("0.0.0.0", "    allow_admin: ~\n");
    parse(&format!("apisix: {{enable_admin: false}}\n{exposed}")).unwrap();
    parse(&exposed.replace("deployment:\n", "deployment:\n  role: data_plane\n")).unwrap();
    parse(&sample_key_yaml(
        "0.0.0.0",
        "    allow_admin: ~\n    admin_key_required: false\n",
    ))
    .unwrap();
    // A key that merely contains the sample is not the sample.
    let c = parse(&format!(
        "deployment: {{admin: {{admin_key: [{{name: a, key: x{SAMPLE_ADMIN_KEY}}}]}}}}"
    ))
    .unwrap();
    assert!(c.deployment.admin.sample_key_entries().is_empty());
}

#[test]
fn debug_of_a_config_never_shows_secrets() {
    let text = format!(
            "apisix:\n  data_encryption:\n    keyring: [ring-key-0123456, ring-key-0123456789abcdef0123456]\ndeployment:\n  admin:\n    admin_key:\n      - {{name: admin, key: admin-secret-key-xyz, role: admin}}\n      - {{name: viewer, key: viewer-secret-key-xyz, role: viewer}}\n      - {{name: sample, key: {SAMPLE_ADMIN_KEY}, role: viewer}}\n    admin_listen: {{ip: 127.0.0.1}}\n  etcd:\n    user: root\n    password: etcd-secret-password\n"
        );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.deployment.etcd.password.as_ref().unwrap().expose(),
        "etcd-secret-password"
    );
    assert_eq!(
        c.deployment.admin.admin_key[0].key.expose(),
        "admin-secret-key-xyz"
    );
    for shown in [
        format!("{c:?}"),
        format!("{c:#?}"),
        format!("{:?}", c.deployment),
        format!("{:?}", c.deployment.admin),
        format!("{:?}", c.deployment.etcd),
        format!("{:?}", c.apisix.data_encryption),
    ] {
        for secret in [
            "admin-secret-key-xyz",
            "viewer-secret-key-xyz",
            SAMPLE_ADMIN_KEY,
            "etcd-secret-password",
            "ring-key-0123456",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
    }
    // Errors about secret values name the key, never the value.
    for (text, secret, key) in [
        (
            "apisix: {data_encryption: {keyring: [not-16-bytes-secret]}}",
            "not-16-bytes-secret",
            "keyring[0]",
        ),
        (
            "apisix: {data_encryption: {keyring: [1234567890123456]}}",
            "1234567890123456",
            "keyring[0]",
        ),
        (
            "apisix: {data_encryption: {keyring: {a: ring-secret-0123}}}",
            "ring-secret-0123",
            "keyring",
        ),
        (
            "deployment: {etcd: {password: 98765432}}",
            "98765432",
            "etcd.password",
        ),
        (
            "deployment: {etcd: {password: [pw-secret]}}",
            "pw-secret",
            "etcd.password",
        ),
        (
            "deployment: {admin: {admin_key: [{name: a, key: [key-secret]}]}}",
            "key-secret",
            "admin_key[0].key",
        ),
        (
            "deployment: {admin: {admin_key: [key-secret-in-a-list]}}",
            "key-secret-in-a-list",
            "admin_key[0]",
        ),
        (
            "deployment: {admin: {admin_key: {name: a, key: key-secret-table}}}",
            "key-secret-table",
            "admin_key",
        ),
    ] {
        let e = err(text);
        assert!(!e.contains(secret), "{e}");
        assert!(e.contains(key) && e.contains('<'), "{e}");
    }
}

#[test]
fn secret_is_masked() {
    let s = Secret::new("topsecret");
    assert_eq!(format!("{s:?} {s}"), "*** ***");
    assert_eq!(s.expose(), "topsecret");
    assert!(!s.is_empty() && Secret::default().is_empty());
}

#[test]
fn log_keys_as_apisix_writes_them() {
    let c = parse(
        "nginx_config:\n  error_log: logs/error.log\n  error_log_level: crit\n  stream:\n    \
         access_log_format: |\n      $remote_addr $status\n    access_log_format_escape: json\n",
    )
    .unwrap();
    assert_eq!(c.nginx_config.error_log, "logs/error.log");
    assert_eq!(c.nginx_config.error_log_level, ErrorLogLevel::Crit);
    assert_eq!(c.nginx_config.error_log_level.directive(), "error");
    let s = &c.nginx_config.stream;
    // The block scalar's newline is not part of the line.
    assert_eq!(s.access_log_format, "$remote_addr $status");
    assert_eq!(s.access_log_format_escape, crate::access_log::Escape::Json);
}

#[test]
fn xrpc_protocols() {
    assert!(parse("").unwrap().xrpc_protocols.is_empty());
    let c = parse("xrpc:\n  protocols:\n    - name: redis\n").unwrap();
    assert_eq!(c.xrpc_protocols, ["redis"]);
    assert_eq!(
        err("xrpc: {protocols: [{name: dubbo}]}"),
        "invalid xrpc.protocols[0]: {\"name\":\"dubbo\"} (unknown protocol [dubbo]; this build implements redis)"
    );
    assert!(err("xrpc: {protocols: [redis]}").contains("expected a table with a name"));
}
