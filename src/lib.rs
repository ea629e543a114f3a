//! apisix-stream: an L4 (TCP/UDP) proxy compatible with the Apache APISIX
//! stream proxy, in one executable.
//!
//! Module map:
//! - [`config`]: `conf/config.yaml` with APISIX's keys, validated before
//!   anything binds; admin key generation and write-back.
//! - [`model`]: stream routes, upstreams and SSL objects, validated with
//!   APISIX's rules and error texts.
//! - [`store`]: where those objects live (the embedded crash-safe store by
//!   default) behind one trait with a change feed.
//! - [`admin`]: the APISIX-3-compatible Admin API over the store.
//! - [`server`]: `serve`, wiring the pieces together and handling signals.
//! - [`cli`]: the command line.
//!
//! Control path: an Admin API write is validated, made durable by the store,
//! and announced on the store's change feed; readers rebuild from it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod model;
pub mod server;
pub mod store;
