//! Unit tests of the model: APISIX's error texts, valid bodies, PATCH, secrets, typed views.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use super::*;

fn plugins() -> EnabledPlugins {
    EnabledPlugins::new([
        "ip-restriction",
        "limit-conn",
        "mqtt-proxy",
        "syslog",
        "traffic-split",
        "prometheus",
    ])
    .with_protocols(["redis"])
}

fn route(v: Value) -> Result<(), String> {
    validate(Kind::StreamRoute, &v, &plugins(), NotEnabled::Refuse)
}

fn upstream(v: Value) -> Result<(), String> {
    validate(Kind::Upstream, &v, &plugins(), NotEnabled::Refuse)
}

fn ssl(v: Value) -> Result<(), String> {
    validate(Kind::Ssl, &v, &plugins(), NotEnabled::Refuse)
}

fn err(r: Result<(), String>) -> String {
    r.expect_err("expected a validation error")
}

fn up() -> Value {
    json!({"nodes": {"127.0.0.1:1995": 1}, "type": "roundrobin"})
}

struct Pair {
    cert: String,
    key: String,
}

fn gen(names: &[&str]) -> Pair {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    Pair {
        cert: ck.cert.pem(),
        key: ck.key_pair.serialize_pem(),
    }
}

// ---- kinds and ids ----

#[test]
fn kind_segments_round_trip() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_segment(k.segment()), Some(k));
    }
    assert_eq!(Kind::from_segment("routes"), None);
    assert_eq!(Kind::StreamRoute.noun(), "stream route");
    assert_eq!(Kind::Upstream.noun(), "upstream");
    assert_eq!(Kind::Ssl.noun(), "ssl");
}

#[test]
fn ids() {
    assert!(is_valid_id(&json!("abc-1_2.3")));
    assert!(is_valid_id(&json!(1)));
    assert!(!is_valid_id(&json!(0)));
    assert!(!is_valid_id(&json!(-100)));
    assert!(!is_valid_id(&json!("*invalid")));
    assert!(!is_valid_id(&json!("invalid_id$")));
    assert!(!is_valid_id(&json!("")));
    assert!(!is_valid_id(&json!("a".repeat(65))));
    assert!(is_valid_id(&json!("a".repeat(64))));
    assert!(!is_valid_id(&json!(1.5)));
    assert_eq!(id_string(&json!(1)), Some("1".into()));
    assert_eq!(id_string(&json!("1")), Some("1".into()));
    assert_eq!(id_string(&json!(true)), None);
}

#[test]
fn invalid_id_in_body() {
    // plugin_metadata's id is a plugin name and a secret's is
    // `manager/id`, each checked by its own rule.
    for kind in Kind::ALL
        .into_iter()
        .filter(|k| !matches!(k, Kind::PluginMetadata | Kind::Secret))
    {
        let e = err(validate(
            kind,
            &json!({"id": "*invalid"}),
            &plugins(),
            NotEnabled::Refuse,
        ));
        assert_eq!(
            e,
            r#"invalid configuration: property "id" validation failed: object matches none of the required"#
        );
    }
}

#[test]
fn forbidden_times() {
    assert_eq!(
        check_forbidden_times(&json!({"create_time": 1})).unwrap_err(),
        "the property is forbidden:  create_time"
    );
    assert_eq!(
        check_forbidden_times(&json!({"update_time": 1})).unwrap_err(),
        "the property is forbidden:  update_time"
    );
    assert_eq!(
        check_forbidden_times(&json!({"upstream": {"create_time": 1}})).unwrap_err(),
        "the property is forbidden:  upstream.create_time"
    );
    assert_eq!(
        check_forbidden_times(&json!({"plugins": {"update_time": 1}})).unwrap_err(),
        "the property is forbidden:  plugins.update_time"
    );
    assert!(check_forbidden_times(&json!({"upstream": up()})).is_ok());
}

// ---- stream routes ----

#[test]
fn apisix_doc_routes_are_valid() {
    route(json!({"remote_addr": "127.0.0.1", "upstream": up()})).unwrap();
    route(
        json!({"remote_addr": "127.0.0.1", "server_addr": "127.0.0.1", "server_port": 2000,
        "upstream": up()}),
    )
    .unwrap();
    route(json!({"sni": "a.test.com",
        "upstream": {"nodes": {"127.0.0.1:5991": 1}, "type": "roundrobin"}}))
    .unwrap();
    route(json!({})).unwrap();
    route(
        json!({"id": 1, "upstream_id": "1", "service_id": 2, "name": "r", "desc": "d",
        "labels": {"env": "prod"}, "sni": "*"}),
    )
    .unwrap();
}

#[test]
fn route_addresses() {
    route(json!({"remote_addr": "10.0.0.0/8", "server_addr": "::1"})).unwrap();
    route(json!({"remote_addr": "fe80::/64", "server_addr": "2001:db8::1"})).unwrap();
    assert_eq!(
        err(route(json!({"remote_addr": ":/8"}))),
        "invalid remote_addr: :/8"
    );
    assert_eq!(
        err(route(json!({"server_addr": ":/8"}))),
        "invalid server_addr: :/8"
    );
    assert_eq!(
        err(route(json!({"remote_addr": "1.2.3.4/33"}))),
        "invalid remote_addr: 1.2.3.4/33"
    );
    assert_eq!(
        err(route(json!({"remote_addr": "not-an-ip"}))),
        r#"invalid configuration: property "remote_addr" validation failed: object matches none of the required"#
    );
    assert_eq!(
        err(route(json!({"remote_addr": 1}))),
        r#"invalid configuration: property "remote_addr" validation failed: wrong type: expected string, got number"#
    );
}

#[test]
fn route_field_errors() {
    let cases = [
        (
            json!({"server_port": 70000}),
            r#"property "server_port" validation failed: expected 70000 to be at most 65535"#,
        ),
        (
            json!({"server_port": 0}),
            r#"property "server_port" validation failed: expected 0 to be at least 1"#,
        ),
        (
            json!({"server_port": "80"}),
            r#"property "server_port" validation failed: wrong type: expected integer, got string"#,
        ),
        (
            json!({"server_port": 1.5}),
            r#"property "server_port" validation failed: wrong type: expected integer, got number"#,
        ),
        (
            json!({"sni": "a b"}),
            r#"property "sni" validation failed: failed to match pattern "^\\*$|^\\*?[0-9a-zA-Z-._\\[\\]:]+$" with "a b""#,
        ),
        (
            json!({"foo": 1}),
            "additional properties forbidden, found foo",
        ),
        (
            json!({"name": ""}),
            r#"property "name" validation failed: string too short, expected at least 1, got 0"#,
        ),
        (
            json!({"name": "a".repeat(257)}),
            r#"property "name" validation failed: string too long, expected at most 256, got 257"#,
        ),
        (
            json!({"desc": "a".repeat(257)}),
            r#"property "desc" validation failed: string too long, expected at most 256, got 257"#,
        ),
        (
            json!({"labels": {"k": "a b"}}),
            r#"property "labels" validation failed: property "k" validation failed: failed to match pattern "^\\S+$" with "a b""#,
        ),
        (
            json!({"upstream_id": "*"}),
            r#"property "upstream_id" validation failed: object matches none of the required"#,
        ),
        (
            json!({"plugins": []}),
            r#"property "plugins" validation failed: wrong type: expected object, got array"#,
        ),
        (
            json!({"protocol": {}}),
            r#"property "protocol" validation failed: property "name" is required"#,
        ),
        (
            json!({"upstream": {"nodes": {"127.0.0.1:80": "1"}}}),
            r#"property "upstream" validation failed: property "nodes" validation failed: object matches none of the required"#,
        ),
        (
            json!({"create_time": "x"}),
            r#"property "create_time" validation failed: wrong type: expected integer, got string"#,
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            err(route(body.clone())),
            format!("invalid configuration: {want}"),
            "{body}"
        );
    }
}

#[test]
fn route_plugins() {
    assert_eq!(
        err(route(json!({"plugins": {"mqttt-proxy": {}}}))),
        "unknown plugin [mqttt-proxy]"
    );
    assert_eq!(
        err(route(json!({"plugins": {"ip-restriction": {}}}))),
        "failed to check the configuration of stream plugin [ip-restriction]: value should match only one schema, but matches none"
    );
    assert_eq!(
        err(route(json!({"plugins": {"ip-restriction": {"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]}}}))),
        "failed to check the configuration of stream plugin [ip-restriction]: value should match only one schema, but matches both schemas 1 and 2"
    );
    assert_eq!(
        err(route(json!({"plugins": {"ip-restriction": 1}}))),
        "invalid plugin conf 1 for plugin [ip-restriction]"
    );
    assert_eq!(
        err(route(json!({"plugins": {"ip-restriction": {"whitelist": ["1.1.1.1/40"]}}}))),
        "failed to check the configuration of stream plugin [ip-restriction]: invalid ip address: 1.1.1.1/40"
    );
    route(
        json!({"plugins": {"ip-restriction": {"whitelist": ["127.0.0.1", "10.0.0.0/8", "::1"]}}}),
    )
    .unwrap();
    // _meta.disable tolerates schema errors, not unknown plugins
    route(json!({"plugins": {"ip-restriction": {"_meta": {"disable": true}}}})).unwrap();
    assert_eq!(
        err(route(
            json!({"plugins": {"nope": {"_meta": {"disable": true}}}})
        )),
        "unknown plugin [nope]"
    );
    // plugin not enabled in config
    let only = EnabledPlugins::new(["limit-conn"]);
    let not_enabled = json!({"plugins": {"prometheus": {}}});
    assert_eq!(
        err(validate(
            Kind::StreamRoute,
            &not_enabled,
            &only,
            NotEnabled::Refuse
        )),
        "unknown plugin [prometheus]"
    );
    // objects shared through etcd: a plugin not enabled here is not checked
    // (an invalid conf included), an enabled one still is
    let shared = |v: Value| validate(Kind::StreamRoute, &v, &only, NotEnabled::Skip);
    shared(json!({"plugins": {"prometheus": {"prefer_name": "x"}}})).unwrap();
    // a plugin this build does not implement fails closed, unless disabled
    assert_eq!(
        err(shared(json!({"plugins": {"x-custom": {}}}))),
        "unknown plugin [x-custom]"
    );
    shared(json!({"plugins": {"x-custom": {"_meta": {"disable": true}}}})).unwrap();
    // enabled by stream_plugins but not implemented: refused as well
    let custom = EnabledPlugins::new(["x-auth", "limit-conn"]);
    assert_eq!(
        err(validate(
            Kind::StreamRoute,
            &json!({"plugins": {"x-auth": {}}}),
            &custom,
            NotEnabled::Refuse
        )),
        "unknown plugin [x-auth]"
    );
    assert_eq!(
        err(shared(json!({"plugins": {"x-custom": 1}}))),
        "invalid plugin conf 1 for plugin [x-custom]"
    );
    assert!(
        err(shared(json!({"plugins": {"limit-conn": {"conn": "x"}}})))
            .starts_with("failed to check the configuration of stream plugin [limit-conn]")
    );
}

#[test]
fn enabled_plugins_come_from_stream_plugins_with_apisix_default() {
    use crate::config::Config;
    let d = EnabledPlugins::default();
    assert!(d.contains("limit-conn") && !d.contains("prometheus"));
    assert_eq!(EnabledPlugins::of(&Config::default()), d);
    let set = Config::from_yaml("stream_plugins: [prometheus, limit-conn]\n").unwrap();
    assert_eq!(
        EnabledPlugins::of(&set).names(),
        ["prometheus", "limit-conn"]
    );
}

#[test]
fn limit_conn_and_friends() {
    route(
        json!({"plugins": {"limit-conn": {"conn": 2, "burst": 1, "default_conn_delay": 0.1,
        "key": "remote_addr"}}}),
    )
    .unwrap();
    assert_eq!(
        err(route(
            json!({"plugins": {"limit-conn": {"conn": 0, "burst": 1, "default_conn_delay": 0.1, "key": "remote_addr"}}})
        )),
        r#"failed to check the configuration of stream plugin [limit-conn]: property "conn" validation failed: expected 0 to be greater than 0"#
    );
    assert_eq!(
        err(route(
            json!({"plugins": {"limit-conn": {"burst": 1, "default_conn_delay": 0.1, "key": "remote_addr"}}})
        )),
        r#"failed to check the configuration of stream plugin [limit-conn]: property "conn" is required"#
    );
    route(json!({"plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 4}}}))
        .unwrap();
    assert_eq!(
        err(route(
            json!({"plugins": {"mqtt-proxy": {"protocol_name": "MQTT"}}})
        )),
        r#"failed to check the configuration of stream plugin [mqtt-proxy]: property "protocol_level" is required"#
    );
    route(json!({"plugins": {"syslog": {"host": "127.0.0.1", "port": 5044}}})).unwrap();
    assert_eq!(
        err(route(
            json!({"plugins": {"syslog": {"host": "127.0.0.1", "port": 5044, "sock_type": "x"}}})
        )),
        r#"failed to check the configuration of stream plugin [syslog]: property "sock_type" validation failed: matches none of the enum values"#
    );
    route(json!({"plugins": {"prometheus": {"prefer_name": true}}})).unwrap();
}

#[test]
fn traffic_split_vars() {
    let ts = |vars: Value| {
        route(
            json!({"plugins": {"traffic-split": {"rules": [{"match": [{"vars": vars}],
            "weighted_upstreams": [{"upstream_id": 1, "weight": 9}, {"weight": 1}]}]}}}),
        )
    };
    ts(json!([["route_id", "==", "3"]])).unwrap();
    ts(json!([
        ["remote_addr", "ipmatch", ["127.0.0.0/8"]],
        ["server_port", "!", ">", 10]
    ]))
    .unwrap();
    ts(json!(["OR", ["a", "==", "1"], ["b", "in", ["1", "2"]]])).unwrap();
    assert_eq!(
        err(ts(json!([["route_id", "=", "3"]]))),
        "failed to check the configuration of stream plugin [traffic-split]: failed to validate the 'vars' expression: invalid operator '='"
    );
    assert_eq!(
        err(ts(json!([["route_id", "=="]]))),
        "failed to check the configuration of stream plugin [traffic-split]: failed to validate the 'vars' expression: rule too short"
    );
    assert_eq!(
        err(ts(json!(["route_id", "==", "3"]))),
        "failed to check the configuration of stream plugin [traffic-split]: failed to validate the 'vars' expression: rule should be wrapped inside brackets"
    );
}

#[test]
fn route_protocol() {
    assert_eq!(
        err(route(json!({"protocol": {"name": "xxx"}}))),
        "unknown protocol [xxx]"
    );
    route(json!({"protocol": {"name": "redis", "superior_id": 1}})).unwrap();
}

#[test]
fn inline_upstream_cheap_checks() {
    assert_eq!(
        err(route(
            json!({"upstream": {"nodes": {"127.0.0.1:1995": 1}, "type": "chash"}})
        )),
        "missing key"
    );
    assert_eq!(
        err(route(
            json!({"upstream": {"nodes": [{"host": "::1", "port": 80, "weight": 1}]}})
        )),
        "invalid configuration: IPv6 address must be enclosed with '[' and ']'"
    );
}

// ---- upstreams ----

#[test]
fn valid_upstreams() {
    upstream(up()).unwrap();
    upstream(
        json!({"nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1, "priority": -1,
        "metadata": {}}], "type": "least_conn"}),
    )
    .unwrap();
    upstream(json!({"nodes": {"[::1]:80": 1, "example.com:8080": 0}})).unwrap();
    upstream(json!({"nodes": [{"host": "[::1]", "port": 80, "weight": 1}]})).unwrap();
    upstream(
        json!({"nodes": {}, "type": "unknown", "scheme": "tls", "retries": 0,
        "retry_timeout": 0.5, "timeout": {"connect": 1, "send": 2.5, "read": 3},
        "hash_on": "vars", "pass_host": "node", "keepalive_pool": {"size": 1}}),
    )
    .unwrap();
    upstream(json!({"nodes": {"127.0.0.1:1995": 1}, "type": "chash", "key": "remote_addr"}))
        .unwrap();
    upstream(json!({"nodes": {"127.0.0.1:1995": 1}, "type": "chash", "hash_on": "consumer"}))
        .unwrap();
    upstream(json!({"service_name": "a", "discovery_type": "dns"})).unwrap();
    upstream(json!({"nodes": {"a:1": 1}, "checks": {"active": {"type": "tcp",
        "healthy": {"interval": 1, "successes": 2, "failures": 2},
        "unhealthy": {"interval": 1, "tcp_failures": 1}}, "passive": {"unhealthy": {"tcp_failures": 0}}}}))
    .unwrap();
}

#[test]
fn upstream_examples() {
    assert_eq!(
        err(upstream(json!({"nodes": {"127.0.0.1:80": "1"}}))),
        r#"invalid configuration: property "nodes" validation failed: object matches none of the required"#
    );
    assert_eq!(
        err(upstream(
            json!({"nodes": {"127.0.0.1:80": 1}, "retries": -1})
        )),
        r#"invalid configuration: property "retries" validation failed: expected -1 to be at least 0"#
    );
    assert_eq!(
        err(upstream(
            json!({"nodes": [{"host": "::1", "port": 80, "weight": 1}]})
        )),
        "invalid configuration: IPv6 address must be enclosed with '[' and ']'"
    );
    assert_eq!(
        err(upstream(
            json!({"nodes": {"127.0.0.1:1995": 1}, "type": "chash"})
        )),
        "missing key"
    );
    assert_eq!(
        err(upstream(json!({"nodes": {"127.0.0.1:70000": 1}}))),
        "invalid port 70000"
    );
    assert_eq!(
        err(upstream(json!({"nodes": {"127.0.0.1:0": 1}}))),
        "invalid port 0"
    );
    assert_eq!(
        err(upstream(json!({"nodes": {"::1:80": 1}}))),
        "invalid configuration: IPv6 address must be enclosed with '[' and ']'"
    );
    assert_eq!(
        err(upstream(
            json!({"nodes": {"a:1": 1}, "pass_host": "rewrite"})
        )),
        "`upstream_host` can't be empty when `pass_host` is `rewrite`"
    );
    upstream(json!({"nodes": {"a:1": 1}, "pass_host": "rewrite", "upstream_host": "b.com"}))
        .unwrap();
    assert_eq!(
        err(upstream(
            json!({"nodes": {"a:1": 1}, "type": "chash", "key": "xx"})
        )),
        format!(
            "invalid configuration: failed to match pattern \"{}\" with \"xx\"",
            super::defs::HASH_VARS_PATTERN
        )
    );
}

#[test]
fn upstream_field_errors() {
    let n = || json!({"a:1": 1});
    let cases = [
        (json!({"type": "roundrobin"}), "value should match only one schema, but matches none".to_string()),
        (
            json!({"nodes": n(), "service_name": "a", "discovery_type": "dns"}),
            "value should match only one schema, but matches both schemas 1 and 2".to_string(),
        ),
        (json!({"nodes": n(), "foo": 1}), "additional properties forbidden, found foo".to_string()),
        (
            json!({"nodes": n(), "retry_timeout": -1}),
            r#"property "retry_timeout" validation failed: expected -1 to be at least 0"#.to_string(),
        ),
        (
            json!({"nodes": n(), "timeout": {"connect": 1, "send": 1}}),
            r#"property "timeout" validation failed: property "read" is required"#.to_string(),
        ),
        (
            json!({"nodes": n(), "timeout": {"connect": 0, "send": 1, "read": 1}}),
            r#"property "timeout" validation failed: property "connect" validation failed: expected 0 to be greater than 0"#.to_string(),
        ),
        (
            json!({"nodes": n(), "hash_on": "body"}),
            r#"property "hash_on" validation failed: matches none of the enum values"#.to_string(),
        ),
        (
            json!({"nodes": n(), "scheme": "quic"}),
            r#"property "scheme" validation failed: matches none of the enum values"#.to_string(),
        ),
        (
            json!({"nodes": n(), "pass_host": "x"}),
            r#"property "pass_host" validation failed: matches none of the enum values"#.to_string(),
        ),
        (
            json!({"nodes": n(), "type": 1}),
            r#"property "type" validation failed: wrong type: expected string, got number"#.to_string(),
        ),
        (
            json!({"nodes": n(), "checks": {"passive": {}}}),
            r#"property "checks" validation failed: object matches none of the required"#.to_string(),
        ),
        (
            json!({"nodes": n(), "checks": {"active": {"healthy": {"successes": 255}}}}),
            r#"property "checks" validation failed: property "active" validation failed: property "healthy" validation failed: property "successes" validation failed: expected 255 to be at most 254"#.to_string(),
        ),
        (
            json!({"nodes": n(), "checks": {"active": {"type": "sctp"}}}),
            r#"property "checks" validation failed: property "active" validation failed: property "type" validation failed: matches none of the enum values"#.to_string(),
        ),
        (
            json!({"nodes": n(), "checks": {"active": {"port": 0}}}),
            r#"property "checks" validation failed: property "active" validation failed: property "port" validation failed: expected 0 to be at least 1"#.to_string(),
        ),
        (
            json!({"nodes": n(), "checks": {"active": {"healthy": {"http_statuses": [200, 200]}}}}),
            r#"property "checks" validation failed: property "active" validation failed: property "healthy" validation failed: property "http_statuses" validation failed: expected unique items but items 1 and 2 are equal"#.to_string(),
        ),
        (
            json!({"nodes": n(), "tls": {"client_cert": "x"}}),
            r#"property "tls" validation failed: property "client_cert" validation failed: string too short, expected at least 128, got 1"#.to_string(),
        ),
        (
            json!({"nodes": n(), "keepalive_pool": {"size": 0}}),
            r#"property "keepalive_pool" validation failed: property "size" validation failed: expected 0 to be at least 1"#.to_string(),
        ),
        (
            json!({"nodes": [{"host": "a b", "weight": 1}]}),
            r#"property "nodes" validation failed: object matches none of the required"#.to_string(),
        ),
        (
            json!({"nodes": [{"host": "a", "port": 70000, "weight": 1}]}),
            r#"property "nodes" validation failed: object matches none of the required"#.to_string(),
        ),
        (
            json!({"nodes": [{"host": "a", "port": 1}]}),
            r#"property "nodes" validation failed: object matches none of the required"#.to_string(),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            err(upstream(body.clone())),
            format!("invalid configuration: {want}"),
            "{body}"
        );
    }
}

#[test]
fn upstream_tls_dependencies() {
    let p = gen(&["client.test"]);
    upstream(json!({"nodes": {"a:1": 1}, "tls": {"client_cert": p.cert, "client_key": p.key}}))
        .unwrap();
    upstream(json!({"nodes": {"a:1": 1}, "tls": {"client_cert_id": 1}})).unwrap();
    let e = err(upstream(
        json!({"nodes": {"a:1": 1}, "tls": {"client_cert": p.cert}}),
    ));
    assert!(
        e.starts_with(r#"invalid configuration: property "tls" validation failed: "#),
        "{e}"
    );
    let e = err(upstream(
        json!({"nodes": {"a:1": 1}, "tls": {"client_cert": p.cert, "client_key": p.key, "client_cert_id": 1}}),
    ));
    assert!(e.contains("property \"tls\""), "{e}");
    let other = gen(&["other.test"]);
    assert_eq!(
        err(upstream(
            json!({"nodes": {"a:1": 1}, "tls": {"client_cert": p.cert, "client_key": other.key}})
        )),
        "failed to handle cert-key pair: the private key does not match the certificate"
    );
    let bad_cert = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        "A".repeat(200)
    );
    assert_eq!(
        err(upstream(
            json!({"nodes": {"a:1": 1}, "tls": {"client_cert": bad_cert, "client_key": p.key}})
        )),
        "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    );
}

#[test]
fn references_of_objects() {
    assert_eq!(
        references(Kind::StreamRoute, &json!({"upstream_id": 1})),
        vec![(Kind::Upstream, "1".to_string())]
    );
    assert!(references(Kind::StreamRoute, &json!({"upstream": up()})).is_empty());
    assert_eq!(
        references(Kind::Upstream, &json!({"tls": {"client_cert_id": "c"}})),
        vec![(Kind::Ssl, "c".to_string())]
    );
    assert!(references(Kind::Ssl, &json!({})).is_empty());
}

// ---- ssls ----

#[test]
fn ssl_ok_and_mismatch() {
    let p = gen(&["a.test.com"]);
    ssl(json!({"cert": p.cert, "key": p.key, "sni": "a.test.com"})).unwrap();
    ssl(
        json!({"cert": p.cert, "key": p.key, "snis": ["a.test.com", "*.test.com"], "status": 0,
        "ssl_protocols": ["TLSv1.2", "TLSv1.3"]}),
    )
    .unwrap();
    ssl(json!({"type": "client", "cert": p.cert, "key": p.key})).unwrap();
    let other = gen(&["b.test.com"]);
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": other.key, "sni": "a.test.com"})
        )),
        "failed to handle cert-key pair: the private key does not match the certificate"
    );
    // extra pairs are numbered from 1, as APISIX does
    ssl(json!({"cert": p.cert, "key": p.key, "sni": "a", "certs": [other.cert], "keys": [other.key]}))
        .unwrap();
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "certs": [other.cert], "keys": [p.key]})
        )),
        "failed to handle cert-key pair[1]: the private key does not match the certificate"
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "certs": [other.cert], "keys": []})
        )),
        "mismatched number of certs and keys"
    );
    ssl(
        json!({"cert": p.cert, "key": p.key, "sni": "a", "client": {"ca": other.cert, "depth": 2}}),
    )
    .unwrap();
}

#[test]
fn ssl_garbage() {
    let p = gen(&["a.test.com"]);
    let junk = "x".repeat(200);
    assert_eq!(
        err(ssl(json!({"cert": junk, "key": p.key, "sni": "a"}))),
        "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    );
    assert_eq!(
        err(ssl(json!({"cert": p.cert, "key": junk, "sni": "a"}))),
        "failed to parse key: PEM_read_bio_PrivateKey() failed"
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "certs": [junk], "keys": [p.key]})
        )),
        "failed to handle cert-key pair[1]: failed to parse cert: PEM_read_bio_X509_AUX() failed"
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "client": {"ca": junk}})
        )),
        "failed to validate client_cert: failed to parse cert: PEM_read_bio_X509_AUX() failed"
    );
    // secret references skip parsing
    ssl(json!({"cert": "$env://CERT", "key": "$secret://vault/1/key", "sni": "a"})).unwrap();
}

#[test]
fn ssl_schema_errors() {
    let p = gen(&["a.test.com"]);
    assert_eq!(
        err(ssl(json!({"cert": p.cert, "key": p.key}))),
        "invalid configuration: then clause did not match"
    );
    assert_eq!(
        err(ssl(json!({"cert": p.cert, "key": p.key, "snis": []}))),
        r#"invalid configuration: property "snis" validation failed: expect array to have at least 1 items"#
    );
    assert_eq!(
        err(ssl(json!({"type": "client", "cert": p.cert}))),
        "invalid configuration: else clause did not match"
    );
    assert_eq!(
        err(ssl(json!({"cert": "short", "key": p.key, "sni": "a"}))),
        r#"invalid configuration: property "cert" validation failed: value should match only one schema, but matches none"#
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "status": 2})
        )),
        r#"invalid configuration: property "status" validation failed: matches none of the enum values"#
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "ssl_protocols": ["TLSv1.2", "TLSv1.2"]})
        )),
        r#"invalid configuration: property "ssl_protocols" validation failed: expected unique items but items 1 and 2 are equal"#
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "client": {}})
        )),
        r#"invalid configuration: property "client" validation failed: property "ca" is required"#
    );
    assert_eq!(
        err(ssl(
            json!({"cert": p.cert, "key": p.key, "sni": "a", "name": "x"})
        )),
        "invalid configuration: additional properties forbidden, found name"
    );
    assert_eq!(
        err(ssl(json!({"cert": p.cert, "key": p.key, "snis": ["a b"]}))),
        r#"invalid configuration: property "snis" validation failed: failed to validate item 1: failed to match pattern "^\\*$|^\\*?[0-9a-zA-Z-._\\[\\]:]+$" with "a b""#
    );
    // The lone `*` is the catch-all certificate.
    assert!(ssl(json!({"cert": p.cert, "key": p.key, "snis": ["*"]})).is_ok());
}

#[test]
fn snis_from_certificates() {
    let p = gen(&["A.Test.com", "b.test.com"]);
    assert_eq!(
        snis_from_cert(&p.cert).unwrap(),
        vec!["a.test.com", "b.test.com"]
    );
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "CN.Example.org");
    let kp = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&kp).expect("cert");
    assert_eq!(snis_from_cert(&cert.pem()).unwrap(), vec!["cn.example.org"]);
    assert!(snis_from_cert("garbage").is_err());
}

// ---- secrets ----

#[test]
fn strip_secrets_removes_keys() {
    let mut s = json!({"id": "1", "cert": "c", "key": "k", "keys": ["k"], "certs": ["c"]});
    strip_secrets(Kind::Ssl, &mut s);
    assert_eq!(s, json!({"id": "1", "cert": "c", "certs": ["c"]}));
    let mut u = json!({"tls": {"client_cert": "c", "client_key": "k"}});
    strip_secrets(Kind::Upstream, &mut u);
    assert_eq!(u, json!({"tls": {"client_cert": "c"}}));
    let mut r = json!({"upstream": {"tls": {"client_cert": "c", "client_key": "k"}}});
    strip_secrets(Kind::StreamRoute, &mut r);
    assert_eq!(r, json!({"upstream": {"tls": {"client_cert": "c"}}}));
}

// ---- patch ----

#[test]
fn merge_patch_rules() {
    let mut v = json!({"nodes": {"a:1": 1, "b:1": 1}, "type": "roundrobin", "desc": "x",
        "list": [1, 2, 3]});
    merge_patch(
        &mut v,
        json!({"nodes": {"a:1": null, "c:1": 2}, "desc": null, "list": [9], "retries": 1}),
    );
    assert_eq!(
        v,
        json!({"nodes": {"b:1": 1, "c:1": 2}, "type": "roundrobin", "list": [9], "retries": 1})
    );
    let mut v = json!({"a": 1});
    merge_patch(&mut v, json!({"a": {"b": null, "c": 1}}));
    assert_eq!(v, json!({"a": {"c": 1}}));
}

#[test]
fn sub_path_patch() {
    let mut v = json!({"nodes": {"a:1": 1}, "type": "roundrobin"});
    patch_sub_path(&mut v, "nodes", json!({"b:2": 3})).unwrap();
    assert_eq!(v["nodes"], json!({"b:2": 3}));
    patch_sub_path(&mut v, "tls/client_cert_id", json!(1)).unwrap();
    assert_eq!(v["tls"], json!({"client_cert_id": 1}));
    patch_sub_path(&mut v, "x/y/z", json!([1])).unwrap();
    assert_eq!(v["x"], json!({"y": {"z": [1]}}));
    assert_eq!(
        patch_sub_path(&mut v, "type/b/c", json!(1)).unwrap_err(),
        "invalid sub-path: /type"
    );
    assert_eq!(
        patch_sub_path(&mut v, "x/y/z/w", json!(1)).unwrap_err(),
        "invalid sub-path: /x/y/z"
    );
}

// ---- typed views ----

#[test]
fn typed_route() {
    let v = json!({"id": 7, "remote_addr": "127.0.0.1", "server_addr": "::1", "server_port": 2000,
        "sni": "A.Test.com", "upstream": up(), "plugins": {"prometheus": {}},
        "protocol": {"name": "redis", "superior_id": "2"}, "name": "n"});
    let r = StreamRoute::from_value(&v).unwrap();
    assert_eq!(r.id, "7");
    assert_eq!(r.remote_addr, Some("127.0.0.1/32".parse().unwrap()));
    assert_eq!(r.server_addr, Some("::1/128".parse().unwrap()));
    assert_eq!(r.server_port, Some(2000));
    assert_eq!(r.sni.as_deref(), Some("a.test.com"));
    assert_eq!(r.superior_id.as_deref(), Some("2"));
    assert_eq!(r.name.as_deref(), Some("n"));
    assert!(r.plugins.contains_key("prometheus"));
    let u = r.upstream.unwrap();
    assert_eq!(
        u.nodes,
        vec![Node {
            host: "127.0.0.1".into(),
            port: 1995,
            weight: 1,
            priority: 0
        }]
    );
    let r =
        StreamRoute::from_value(&json!({"id": "1", "remote_addr": "10.0.0.0/8", "upstream_id": 3}))
            .unwrap();
    assert_eq!(r.remote_addr, Some("10.0.0.0/8".parse().unwrap()));
    assert_eq!(r.upstream_id.as_deref(), Some("3"));
    assert!(r.upstream.is_none() && r.server_port.is_none());
    assert_eq!(StreamRoute::from_value(&json!({})).unwrap().id, "");
    assert!(StreamRoute::from_value(&json!({"server_port": "x"})).is_err());
}

#[test]
fn typed_upstream_defaults() {
    let u = Upstream::from_value(&json!({"nodes": {"[::1]:80": 2, "example.com:81": 0}})).unwrap();
    assert_eq!(u.lb, LbType::RoundRobin);
    assert_eq!(u.hash_on, "vars");
    assert_eq!(u.scheme, "tcp");
    assert_eq!(u.retries, None);
    assert!(u.timeout.is_none() && u.tls.is_none() && u.id.is_none());
    assert_eq!(
        u.nodes,
        vec![
            Node {
                host: "::1".into(),
                port: 80,
                weight: 2,
                priority: 0
            },
            Node {
                host: "example.com".into(),
                port: 81,
                weight: 0,
                priority: 0
            },
        ]
    );
    let u = Upstream::from_value(&json!({"id": 1, "type": "chash", "key": "remote_addr",
        "nodes": [{"host": "[::1]", "port": 80, "weight": 1, "priority": -1}],
        "retries": 2, "retry_timeout": 1.5, "scheme": "tls",
        "timeout": {"connect": 1, "send": 2, "read": 3.5},
        "tls": {"client_cert_id": 4, "client_key": "secret"}, "checks": {"active": {}}}))
    .unwrap();
    assert_eq!(u.id.as_deref(), Some("1"));
    assert_eq!(u.lb, LbType::Chash);
    assert_eq!(
        u.nodes[0],
        Node {
            host: "::1".into(),
            port: 80,
            weight: 1,
            priority: -1
        }
    );
    assert_eq!(u.retries, Some(2));
    assert_eq!(u.retry_timeout, Some(1.5));
    assert_eq!(
        u.timeout,
        Some(Timeout {
            connect: 1.0,
            send: 2.0,
            read: 3.5
        })
    );
    assert_eq!(u.scheme, "tls");
    let tls = u.tls.clone().unwrap();
    assert_eq!(tls.client_cert_id.as_deref(), Some("4"));
    assert!(!tls.verify);
    assert!(!format!("{u:?}").contains("secret"));
    assert!(u.checks.is_some());
    let u = Upstream::from_value(&json!({"nodes": {}, "type": "least_conn"})).unwrap();
    assert_eq!(u.lb, LbType::LeastConn);
    let u = Upstream::from_value(&json!({"nodes": {}, "type": "ewma", "scheme": "http"})).unwrap();
    assert_eq!(u.lb, LbType::Other("ewma".into()));
    assert_eq!(u.scheme, "tcp");
    assert!(Upstream::from_value(&json!({"nodes": [{"host": "a", "weight": 1}]})).is_err());
}

#[test]
fn typed_ssl() {
    let v = json!({"id": "s1", "cert": "C", "key": "SECRETKEY", "sni": "A.test.COM.",
        "snis": ["b.test.com", "a.test.com"], "certs": ["C2"], "keys": ["K2"],
        "client": {"ca": "CA"}, "ssl_protocols": ["TLSv1.3"]});
    let s = Ssl::from_value(&v).unwrap();
    assert_eq!(s.id, "s1");
    assert_eq!(s.ssl_type, SslType::Server);
    assert_eq!(s.snis, vec!["a.test.com", "b.test.com"]);
    assert_eq!(
        s.pairs,
        vec![("C".into(), "SECRETKEY".into()), ("C2".into(), "K2".into())]
    );
    assert_eq!(s.client_ca.as_deref(), Some("CA"));
    assert_eq!(s.client_depth, 1);
    assert!(s.enabled);
    assert_eq!(s.ssl_protocols, vec!["TLSv1.3"]);
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("SECRETKEY") && !dbg.contains("K2"), "{dbg}");
    let s =
        Ssl::from_value(&json!({"id": 2, "type": "client", "cert": "C", "key": "K", "status": 0}))
            .unwrap();
    assert_eq!(s.ssl_type, SslType::Client);
    assert!(!s.enabled && s.snis.is_empty());
}

#[test]
fn patterns_compile_and_char_classes() {
    for p in [
        super::defs::HOST_PATTERN,
        super::defs::ROUTE_SNI_PATTERN,
        super::defs::SECRET_URI_PATTERN,
        super::defs::HASH_VARS_PATTERN,
    ] {
        regex::Regex::new(p).unwrap();
    }
    assert!(!is_valid_id(&json!("a:b")));
    assert!(!is_valid_id(&json!("a@b")));
    assert!(!is_valid_id(&json!("a/b")));
    upstream(json!({"nodes": [{"host": "my-host.example.com", "port": 1, "weight": 1}]})).unwrap();
    upstream(json!({"nodes": [{"host": "*.example.com", "port": 1, "weight": 1}]})).unwrap();
    route(json!({"sni": "*.test.com"})).unwrap();
    route(json!({"sni": "my-host.test.com"})).unwrap();
    assert!(route(json!({"sni": "a/b"})).is_err());
}

#[test]
fn plugin_conf_type_is_checked_before_the_name() {
    assert_eq!(
        err(route(json!({"plugins": {"nope": "abc"}}))),
        r#"invalid plugin conf "abc" for plugin [nope]"#
    );
}

#[test]
fn number_formatting() {
    assert_eq!(super::schema::fmt_num(70000.0), "70000");
    assert_eq!(super::schema::fmt_num(-1.0), "-1");
    assert_eq!(super::schema::fmt_num(0.5), "0.5");
    assert_eq!(
        err(upstream(
            json!({"nodes": {"a:1": 1}, "retry_timeout": -0.5})
        )),
        r#"invalid configuration: property "retry_timeout" validation failed: expected -0.5 to be at least 0"#
    );
    assert_eq!(super::schema::quote("a\"b\\"), r#""a\"b\\""#);
}

// ---- services and plugin metadata ----

#[test]
fn services_are_checked_as_apisix() {
    let service = |v: Value| validate(Kind::Service, &v, &plugins(), NotEnabled::Refuse);
    service(
        json!({"id": "s", "name": "db", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                   "plugins": {"ip-restriction": {"whitelist": ["127.0.0.1"]}},
                   "labels": {"team": "a"}}),
    )
    .unwrap();
    assert_eq!(
        err(service(json!({"server_port": 1}))),
        "invalid configuration: additional properties forbidden, found server_port"
    );
    assert_eq!(
        err(service(json!({"plugins": {"x-auth": {}}}))),
        "unknown plugin [x-auth]"
    );
    assert_eq!(
        err(service(json!({"upstream": {"nodes": {"127.0.0.1": 1}}}))),
        "invalid configuration: node 127.0.0.1 has no port (stream upstream nodes need one)"
    );
    assert_eq!(
        references(Kind::Service, &json!({"upstream_id": 7})),
        vec![(Kind::Upstream, "7".to_string())]
    );
}

#[test]
fn plugin_metadata_is_checked_by_plugin() {
    let meta = |v: Value| validate(Kind::PluginMetadata, &v, &plugins(), NotEnabled::Refuse);
    meta(json!({"id": "syslog", "log_format": {"client": "$remote_addr"}})).unwrap();
    meta(json!({"id": "limit-conn", "anything": 1})).unwrap();
    assert_eq!(
        err(meta(json!({"id": "syslog", "log_format": "x"}))),
        r#"invalid configuration: property "log_format" validation failed: wrong type: expected object, got string"#
    );
    assert_eq!(err(meta(json!({"id": "x-auth"}))), "invalid plugin name");
    assert_eq!(err(meta(json!({}))), "missing plugin name");
}

#[test]
fn plugin_schemas_are_published_from_the_checked_definition() {
    let s = crate::model::plugin_schema_json("limit-conn").unwrap();
    assert_eq!(s["type"], "object");
    assert_eq!(s["properties"]["conn"]["exclusiveMinimum"], 0);
    assert_eq!(
        s["required"],
        json!(["conn", "burst", "default_conn_delay", "key"])
    );
    assert_eq!(
        s["properties"]["key_type"]["enum"],
        json!(["var", "var_combination"])
    );
    let ip = crate::model::plugin_schema_json("ip-restriction").unwrap();
    assert_eq!(ip["oneOf"][0]["required"], json!(["whitelist"]));
    assert!(crate::model::plugin_schema_json("x-auth").is_none());
    let meta = crate::model::plugin_metadata_schema_json("syslog").unwrap();
    assert_eq!(meta["properties"]["log_format"]["type"], "object");
    assert_eq!(
        check_schema(Kind::Service, &json!({"name": 1})).unwrap_err(),
        r#"property "name" validation failed: wrong type: expected string, got number"#
    );
}
