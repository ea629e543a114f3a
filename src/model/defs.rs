//! The JSON schemas of the resources (stream routes, upstreams, ssls, services, plugin metadata),
//! as APISIX defines them (apisix/schema_def.lua and the plugins' own schemas), built once and shared.

use std::sync::OnceLock;

use serde_json::{json, Value};

use super::schema::{Format, Schema};

/// Pattern of node hosts, SNIs and `upstream_host`.
pub(crate) const HOST_PATTERN: &str = r"^\*?[0-9a-zA-Z-._\[\]:]+$";
/// Pattern of a stream route's `sni` (adds the lone `*`).
/// SNI of routes and SSL objects: a host, a `*.`/`*` wildcard, or `*` alone (the catch-all certificate).
pub(crate) const ROUTE_SNI_PATTERN: &str = r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$";
/// Pattern of secret references (`$env://`, `$secret://`).
pub(crate) const SECRET_URI_PATTERN: &str = r"^\$(secret|vault|env|ENV)://";
/// Pattern a chash `key` must match with `hash_on: vars` (apisix/schema_def.lua).
pub(crate) const HASH_VARS_PATTERN: &str = r"^((uri|server_name|server_addr|request_uri|remote_port|remote_addr|query_string|host|hostname|mqtt_client_id)|arg_[0-9a-zA-z_-]+)$";

/// `id_schema`: string 1–64 of `[a-zA-Z0-9-_.]` or integer ≥ 1.
pub(crate) fn id_schema() -> Schema {
    Schema::any().any_of(vec![
        Schema::string().len(1, 64).pattern(r"^[a-zA-Z0-9-_.]+$"),
        Schema::integer().min(1.0),
    ])
}

fn name_def() -> Schema {
    Schema::string().len(1, 256)
}

fn desc_def() -> Schema {
    Schema::string().max_len(256)
}

fn labels_def() -> Schema {
    Schema::object().pattern_props(Schema::string().len(1, 256).pattern(r"^\S+$"))
}

fn timestamp_def() -> Schema {
    Schema::integer()
}

/// `ip_def`: IPv4, IPv4/CIDR, IPv6, IPv6/CIDR (loosely, as APISIX's patterns).
pub(crate) fn ip_def() -> Schema {
    Schema::string().any_of(vec![
        Schema::string().format(Format::Ipv4),
        Schema::string().pattern(r"^([0-9]{1,3}.){3}[0-9]{1,3}/[0-9]{1,2}$"),
        Schema::string().format(Format::Ipv6),
        Schema::string().pattern(
            r"^([a-fA-F0-9]{0,4}:){1,8}(:[a-fA-F0-9]{0,4}){0,8}([a-fA-F0-9]{0,4})?/[0-9]{1,3}$",
        ),
    ])
}

fn certificate_def() -> Schema {
    Schema::string().len(128, 64 * 1024)
}

fn private_key_def() -> Schema {
    Schema::string().len(64, 64 * 1024)
}

fn secret_uri_def() -> Schema {
    Schema::string().pattern(SECRET_URI_PATTERN)
}

fn nodes_def() -> Schema {
    let node = Schema::object()
        .prop("host", Schema::string().pattern(HOST_PATTERN))
        .prop("port", Schema::integer().range(1.0, 65535.0))
        .prop("weight", Schema::integer().min(0.0))
        .prop("priority", Schema::integer())
        .prop("metadata", Schema::object())
        .required(&["host", "weight"]);
    Schema::any().any_of(vec![
        Schema::object().pattern_props(Schema::integer().min(0.0)),
        Schema::array(node),
    ])
}

fn timeout_def() -> Schema {
    Schema::object()
        .prop("connect", Schema::number().gt(0.0))
        .prop("send", Schema::number().gt(0.0))
        .prop("read", Schema::number().gt(0.0))
        .required(&["connect", "send", "read"])
}

fn http_statuses() -> Schema {
    Schema::array(Schema::integer().range(200.0, 599.0))
        .min_items(1)
        .unique()
}

/// Bytes written as hex digits, two per byte.
fn hex_def() -> Schema {
    Schema::string()
        .len(2, usize::MAX)
        .pattern("^([0-9a-fA-F]{2})+$")
}

fn health_checker_def() -> Schema {
    let active = Schema::object()
        .prop(
            "type",
            Schema::string().str_enum(&["http", "https", "tcp", "udp"]),
        )
        .prop("timeout", Schema::number())
        .prop("concurrency", Schema::integer())
        .prop("host", Schema::string().pattern(HOST_PATTERN))
        .prop("port", Schema::integer().range(1.0, 65535.0))
        .prop("http_path", Schema::string())
        .prop(
            "http_method",
            Schema::string().str_enum(&["GET", "POST", "PUT", "HEAD"]),
        )
        .prop("http_req_body", Schema::string())
        .prop("send", Schema::string().len(1, usize::MAX))
        .prop("receive", Schema::string().len(1, usize::MAX))
        .prop("send_hex", hex_def())
        .prop("receive_hex", hex_def())
        .prop("https_verify_certificate", Schema::boolean())
        .prop(
            "healthy",
            Schema::object()
                .prop("interval", Schema::integer().min(1.0))
                .prop("http_statuses", http_statuses())
                .prop("successes", Schema::integer().range(1.0, 254.0)),
        )
        .prop(
            "unhealthy",
            Schema::object()
                .prop("interval", Schema::integer().min(1.0))
                .prop("http_statuses", http_statuses())
                .prop("http_failures", Schema::integer().range(1.0, 254.0))
                .prop("tcp_failures", Schema::integer().range(1.0, 254.0))
                .prop("timeouts", Schema::integer().range(1.0, 254.0)),
        )
        .prop(
            "req_headers",
            Schema::array(Schema::string()).min_items(1).unique(),
        );
    let passive = Schema::object()
        .prop("type", Schema::string().str_enum(&["http", "https", "tcp"]))
        .prop(
            "healthy",
            Schema::object()
                .prop("http_statuses", http_statuses())
                .prop("successes", Schema::integer().range(0.0, 254.0)),
        )
        .prop(
            "unhealthy",
            Schema::object()
                .prop("http_statuses", http_statuses())
                .prop("tcp_failures", Schema::integer().range(0.0, 254.0))
                .prop("timeouts", Schema::integer().range(0.0, 254.0))
                .prop("http_failures", Schema::integer().range(0.0, 254.0)),
        );
    Schema::object()
        .prop("active", active)
        .prop("passive", passive)
        .any_of(vec![
            Schema::any().required(&["active"]),
            Schema::any().required(&["active", "passive"]),
        ])
}

fn upstream_tls_def() -> Schema {
    Schema::object()
        .prop("client_cert_id", id_schema())
        .prop("client_cert", certificate_def())
        .prop("client_key", private_key_def())
        .prop("verify", Schema::boolean())
        .dependency(
            "client_cert",
            Schema::any()
                .required(&["client_key"])
                .not(Schema::any().required(&["client_cert_id"])),
        )
        .dependency(
            "client_key",
            Schema::any()
                .required(&["client_cert"])
                .not(Schema::any().required(&["client_cert_id"])),
        )
        .dependency(
            "client_cert_id",
            Schema::any().not(Schema::any().any_of(vec![
                Schema::any().required(&["client_cert"]),
                Schema::any().required(&["client_key"]),
            ])),
        )
}

fn build_upstream() -> Schema {
    Schema::object()
        .prop("id", id_schema())
        .prop("name", name_def())
        .prop("desc", desc_def())
        .prop("labels", labels_def())
        .prop("create_time", timestamp_def())
        .prop("update_time", timestamp_def())
        .prop("nodes", nodes_def())
        .prop("type", Schema::string())
        .prop(
            "hash_on",
            Schema::string().str_enum(&[
                "vars",
                "header",
                "cookie",
                "consumer",
                "vars_combinations",
            ]),
        )
        .prop("key", Schema::string())
        .prop("retries", Schema::integer().min(0.0))
        .prop("retry_timeout", Schema::number().min(0.0))
        .prop("timeout", timeout_def())
        .prop(
            "scheme",
            Schema::any().str_enum(&[
                "grpc", "grpcs", "http", "https", "tcp", "tls", "udp", "kafka",
            ]),
        )
        .prop("tls", upstream_tls_def())
        .prop("checks", health_checker_def())
        .prop(
            "keepalive_pool",
            Schema::object()
                .prop("size", Schema::integer().min(1.0))
                .prop("idle_timeout", Schema::number().min(0.0))
                .prop("requests", Schema::integer().min(1.0)),
        )
        .prop(
            "pass_host",
            Schema::any().str_enum(&["pass", "node", "rewrite"]),
        )
        .prop("upstream_host", Schema::string().pattern(HOST_PATTERN))
        .prop("service_name", Schema::string().len(1, 256))
        .prop("discovery_type", Schema::string())
        .prop(
            "discovery_args",
            Schema::object()
                .prop("namespace_id", Schema::string())
                .prop("group_name", Schema::string()),
        )
        .closed()
        .one_of(vec![
            Schema::any().required(&["nodes"]),
            Schema::any().required(&["service_name", "discovery_type"]),
        ])
}

fn build_stream_route() -> Schema {
    let protocol = Schema::object()
        .prop("name", Schema::string())
        .prop("superior_id", id_schema())
        .prop("conf", Schema::object())
        .prop(
            "logger",
            Schema::array(
                Schema::object()
                    .prop("name", Schema::string())
                    .prop("filter", Schema::of(super::schema::Ty::Array))
                    .prop("conf", Schema::object())
                    .required(&["name"]),
            ),
        )
        .required(&["name"]);
    Schema::object()
        .prop("id", id_schema())
        .prop("name", name_def())
        .prop("desc", desc_def())
        .prop("labels", labels_def())
        .prop("create_time", timestamp_def())
        .prop("update_time", timestamp_def())
        .prop("remote_addr", ip_def())
        .prop("server_addr", ip_def())
        .prop("server_port", Schema::integer().range(1.0, 65535.0))
        .prop("sni", Schema::string().pattern(ROUTE_SNI_PATTERN))
        .prop("upstream", upstream().clone())
        .prop("upstream_id", id_schema())
        .prop("service_id", id_schema())
        .prop("plugins", Schema::object())
        .prop("protocol", protocol)
        .closed()
}

fn build_ssl() -> Schema {
    let cert = || Schema::any().one_of(vec![certificate_def(), secret_uri_def()]);
    let key = || Schema::any().one_of(vec![private_key_def(), secret_uri_def()]);
    Schema::object()
        .prop("id", id_schema())
        .prop("desc", desc_def())
        .prop("labels", labels_def())
        .prop("create_time", timestamp_def())
        .prop("update_time", timestamp_def())
        .prop("type", Schema::any().str_enum(&["server", "client"]))
        .prop("cert", cert())
        .prop("key", key())
        .prop("sni", Schema::string().pattern(ROUTE_SNI_PATTERN))
        .prop(
            "snis",
            Schema::array(Schema::string().pattern(ROUTE_SNI_PATTERN)).min_items(1),
        )
        .prop("certs", Schema::array(cert()))
        .prop("keys", Schema::array(key()))
        .prop(
            "client",
            Schema::object()
                .prop("ca", certificate_def())
                .prop("depth", Schema::integer().min(0.0))
                .prop(
                    "skip_mtls_uri_regex",
                    Schema::array(Schema::string()).min_items(1).unique(),
                )
                .required(&["ca"]),
        )
        .prop(
            "status",
            Schema::any().enumeration(vec![json!(1), json!(0)]),
        )
        .prop(
            "ssl_protocols",
            Schema::array(Schema::any().str_enum(&["TLSv1.1", "TLSv1.2", "TLSv1.3"]))
                .max_items(3)
                .unique(),
        )
        .closed()
        .if_then_else(
            Schema::any().prop("type", Schema::any().str_enum(&["server"])),
            Some(Schema::any().one_of(vec![
                Schema::any().required(&["sni", "key", "cert"]),
                Schema::any().required(&["snis", "key", "cert"]),
            ])),
            Some(Schema::any().required(&["key", "cert"])),
        )
}

fn build_service() -> Schema {
    Schema::object()
        .prop("id", id_schema())
        .prop("name", name_def())
        .prop("desc", desc_def())
        .prop("labels", labels_def())
        .prop("create_time", timestamp_def())
        .prop("update_time", timestamp_def())
        .prop("plugins", Schema::object())
        .prop("upstream", upstream().clone())
        .prop("upstream_id", id_schema())
        .prop("script", Schema::string().len(10, 102_400))
        .prop("enable_websocket", Schema::boolean())
        .prop(
            "hosts",
            Schema::array(Schema::string().pattern(HOST_PATTERN))
                .min_items(1)
                .unique(),
        )
        .closed()
}

/// The service schema (apisix/schema_def.lua `service`).
pub(crate) fn service() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(build_service)
}

/// What every plugin_metadata object is checked against before its
/// plugin's own metadata schema: an object.
pub(crate) fn plugin_metadata() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(Schema::object)
}

/// syslog's `metadata_schema` (with the batch processor's `max_pending_entries`).
fn syslog_metadata() -> Schema {
    Schema::object()
        .prop("log_format", Schema::object())
        .prop("max_pending_entries", Schema::integer().min(1.0))
}

/// The metadata schema of a stream plugin that declares one (APISIX gives
/// the others an empty object schema).
pub(crate) fn metadata(name: &str) -> Option<&'static Schema> {
    static SL: OnceLock<Schema> = OnceLock::new();
    match name {
        "syslog" => Some(SL.get_or_init(syslog_metadata)),
        _ => None,
    }
}

/// The upstream schema.
pub(crate) fn upstream() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(build_upstream)
}

/// The stream route schema.
pub(crate) fn stream_route() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(build_stream_route)
}

/// The ssl schema.
pub(crate) fn ssl() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(build_ssl)
}

/// The `_meta` block every plugin conf may carry (apisix/plugin.lua `plugin_injected_schema`).
fn meta_def() -> Schema {
    Schema::object()
        .prop("disable", Schema::boolean())
        .prop(
            "error_response",
            Schema::any().one_of(vec![Schema::string(), Schema::object()]),
        )
        .prop("priority", Schema::integer())
        .prop("filter", Schema::of(super::schema::Ty::Array))
}

fn with_meta(s: Schema) -> Schema {
    s.prop("_meta", meta_def())
}

fn ip_restriction() -> Schema {
    let list = || Schema::array(ip_def()).min_items(1);
    with_meta(
        Schema::object()
            .prop("message", Schema::string().len(1, 1024))
            .prop("response_code", Schema::integer().range(403.0, 404.0))
            .prop("whitelist", list())
            .prop("blacklist", list())
            .one_of(vec![
                Schema::any().required(&["whitelist"]),
                Schema::any().required(&["blacklist"]),
            ]),
    )
}

fn limit_conn() -> Schema {
    with_meta(
        Schema::object()
            .prop("conn", Schema::integer().gt(0.0))
            .prop("burst", Schema::integer().min(0.0))
            .prop("default_conn_delay", Schema::number().gt(0.0))
            .prop("only_use_default_delay", Schema::boolean())
            .prop("key", Schema::string())
            .prop(
                "key_type",
                Schema::string().str_enum(&["var", "var_combination"]),
            )
            .prop("rejected_code", Schema::integer().range(200.0, 599.0))
            .prop("rejected_msg", Schema::string().len(1, usize::MAX))
            .prop("allow_degradation", Schema::boolean())
            .required(&["conn", "burst", "default_conn_delay", "key"]),
    )
}

fn limit_bandwidth() -> Schema {
    with_meta(
        Schema::object()
            .prop("download_rate", Schema::integer().min(0.0))
            .prop("upload_rate", Schema::integer().min(0.0))
            .prop("burst", Schema::integer().min(0.0))
            .prop("key", Schema::string())
            .prop("key_type", Schema::string().str_enum(&["var"])),
    )
}

fn mqtt_proxy() -> Schema {
    with_meta(
        Schema::object()
            .prop("protocol_name", Schema::string())
            .prop("protocol_level", Schema::integer())
            .required(&["protocol_level"]),
    )
}

fn syslog() -> Schema {
    with_meta(
        Schema::object()
            .prop("host", Schema::string())
            .prop("port", Schema::integer())
            .prop("flush_limit", Schema::integer().min(1.0))
            .prop("drop_limit", Schema::integer())
            .prop("timeout", Schema::integer().min(1.0))
            .prop("sock_type", Schema::string().str_enum(&["tcp", "udp"]))
            .prop("pool_size", Schema::integer().min(5.0))
            .prop("tls", Schema::boolean())
            .prop("log_format", Schema::object())
            .prop("name", Schema::string())
            .prop("max_retry_count", Schema::integer().min(0.0))
            .prop("retry_delay", Schema::integer().min(0.0))
            .prop("buffer_duration", Schema::integer().min(1.0))
            .prop("inactive_timeout", Schema::integer().min(1.0))
            .prop("batch_max_size", Schema::integer().min(1.0))
            .required(&["host", "port"]),
    )
}

fn traffic_split() -> Schema {
    let matches =
        Schema::array(Schema::object().prop("vars", Schema::of(super::schema::Ty::Array)));
    let weighted = Schema::array(
        Schema::object()
            .prop("upstream_id", id_schema())
            .prop("upstream", upstream().clone())
            .prop("weight", Schema::integer().min(0.0)),
    )
    .min_items(1)
    .max_items(20);
    with_meta(
        Schema::object().prop(
            "rules",
            Schema::array(
                Schema::object()
                    .prop("match", matches)
                    .prop("weighted_upstreams", weighted),
            ),
        ),
    )
}

fn prometheus() -> Schema {
    with_meta(Schema::object().prop("prefer_name", Schema::boolean()))
}

/// The schema of a known stream plugin; `None` for a name this crate does not know.
pub(crate) fn plugin(name: &str) -> Option<&'static Schema> {
    static IP: OnceLock<Schema> = OnceLock::new();
    static LC: OnceLock<Schema> = OnceLock::new();
    static LB: OnceLock<Schema> = OnceLock::new();
    static MQ: OnceLock<Schema> = OnceLock::new();
    static SL: OnceLock<Schema> = OnceLock::new();
    static TS: OnceLock<Schema> = OnceLock::new();
    static PR: OnceLock<Schema> = OnceLock::new();
    Some(match name {
        "ip-restriction" => IP.get_or_init(ip_restriction),
        "limit-conn" => LC.get_or_init(limit_conn),
        "limit-bandwidth" => LB.get_or_init(limit_bandwidth),
        "mqtt-proxy" => MQ.get_or_init(mqtt_proxy),
        "syslog" => SL.get_or_init(syslog),
        "traffic-split" => TS.get_or_init(traffic_split),
        "prometheus" => PR.get_or_init(prometheus),
        _ => return None,
    })
}

/// Whether a JSON string is a secret reference that is resolved at run time.
pub(crate) fn is_secret_ref(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.starts_with("$env://")
            || s.starts_with("$secret://")
            || s.starts_with("$ENV://")
            || s.starts_with("$vault://")
    })
}
