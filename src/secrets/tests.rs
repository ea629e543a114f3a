//! Reference parsing and resolution, without a secret manager.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::store::unservable_reason;

fn entry(kind: Kind, value: Value) -> Entry {
    Entry {
        kind,
        id: "1".into(),
        value: Arc::new(value),
        create_rev: 1,
        mod_rev: 1,
    }
}

#[test]
fn references_parse_as_apisix_reads_them() {
    let env = |name: &str, key: Option<&str>| {
        Some(Ok(Reference::Env {
            name: name.into(),
            key: key.map(str::to_string),
        }))
    };
    assert_eq!(Reference::parse("$env://CERT"), env("CERT", None));
    assert_eq!(Reference::parse("$ENV://CERT"), env("CERT", None));
    assert_eq!(
        Reference::parse("$Env://J/auth-key"),
        env("J", Some("auth-key"))
    );
    assert_eq!(Reference::parse("plain"), None);
    assert_eq!(Reference::parse("$remote_addr"), None);
    assert_eq!(
        Reference::parse("$secret://vault/1/apisix/tls/cert"),
        Some(Ok(Reference::Secret {
            manager: "vault".into(),
            id: "1".into(),
            key: "apisix/tls/cert".into()
        }))
    );
    assert_eq!(
        Reference::parse("$secret://vault"),
        Some(Err("error format: no secret manager".into()))
    );
    assert_eq!(
        Reference::parse("$secret://vault/1"),
        Some(Err("error format: no secret conf id".into()))
    );
    assert_eq!(
        Reference::parse("$secret://vault/1/"),
        Some(Err("error format: no secret key id".into()))
    );
}

#[test]
fn env_values_and_json_keys() {
    // PATH is set in every test environment.
    let path = std::env::var("PATH").expect("PATH");
    assert_eq!(env_value("PATH", None), Ok(path));
    let e = env_value("APISIX_STREAM_TEST_SURELY_UNSET", None).expect_err("unset");
    assert_eq!(
        e,
        "environment variable APISIX_STREAM_TEST_SURELY_UNSET is not set"
    );
    let e = env_value("PATH", Some("k")).expect_err("not JSON");
    assert!(e.contains("not a JSON object"), "{e}");
}

#[test]
fn only_ssl_material_and_plugin_settings_are_resolved() {
    let r = Resolver::default();
    let path = std::env::var("PATH").expect("PATH");
    let mut route = entry(
        Kind::StreamRoute,
        json!({"id": "1", "desc": "$env://PATH",
            "plugins": {"syslog": {"host": "$env://PATH", "list": ["$ENV://PATH"]}},
            "upstream": {"nodes": {"127.0.0.1:1": 1}}}),
    );
    r.resolve(&mut route);
    assert_eq!(route.value["desc"], "$env://PATH", "outside plugins: kept");
    assert_eq!(route.value["plugins"]["syslog"]["host"], json!(path));
    assert_eq!(route.value["plugins"]["syslog"]["list"][0], json!(path));
    assert!(unservable_reason(&route.value).is_none());

    let mut ssl = entry(
        Kind::Ssl,
        json!({"id": "1", "cert": "$env://PATH", "key": "k", "snis": ["$env://PATH"],
            "client": {"ca": "$env://PATH"}}),
    );
    r.resolve(&mut ssl);
    assert_eq!(ssl.value["cert"], json!(path));
    assert_eq!(ssl.value["client"]["ca"], json!(path));
    assert_eq!(ssl.value["snis"][0], "$env://PATH");

    // Without a reference the very same value is kept.
    let mut plain = entry(Kind::Ssl, json!({"id": "1", "cert": "c", "key": "k"}));
    let before = Arc::clone(&plain.value);
    r.resolve(&mut plain);
    assert!(Arc::ptr_eq(&before, &plain.value));
}

#[test]
fn an_unresolvable_reference_marks_the_object_with_why() {
    let r = Resolver::default();
    let mut ssl = entry(
        Kind::Ssl,
        json!({"id": "1", "cert": "$env://APISIX_STREAM_TEST_SURELY_UNSET", "key": "$env://PATH"}),
    );
    r.resolve(&mut ssl);
    let why = unservable_reason(&ssl.value).expect("marked");
    assert_eq!(
        why,
        "cannot resolve $env://APISIX_STREAM_TEST_SURELY_UNSET (cert): environment variable APISIX_STREAM_TEST_SURELY_UNSET is not set"
    );
    assert_eq!(
        ssl.value["key"], "$env://PATH",
        "a marked object keeps its references, never half of its values"
    );

    let mut route = entry(
        Kind::StreamRoute,
        json!({"id": "1", "plugins": {"syslog": {"host": "$secret://vault/9/a/b"}}}),
    );
    r.resolve(&mut route);
    let why = unservable_reason(&route.value).expect("marked");
    assert_eq!(
        why,
        "cannot resolve $secret://vault/9/a/b (plugins.syslog.host): no secret conf, secret_uri: $secret://vault/9/a/b"
    );
}

#[test]
fn secrets_objects_are_checked_as_apisix_checks_them() {
    let ok = json!({"id": "vault/1", "uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "$env://VAULT_TOKEN"});
    assert_eq!(validate(&ok), Ok(()));
    assert_eq!(
        validate(&json!({"id": "aws/1", "uri": "http://x"})),
        Err("invalid secret manager: aws".into())
    );
    let e = validate(&json!({"id": "vault/1", "uri": "http://127.0.0.1:8200", "prefix": "kv"}))
        .expect_err("no token");
    assert!(e.starts_with("invalid configuration: "), "{e}");
    assert!(e.contains("token"), "{e}");
}
