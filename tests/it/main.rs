//! Integration tests: the real server on loopback with ephemeral ports, and
//! real clients talking to it.

mod admin;
mod backend;
mod bandwidth;
mod capacity;
mod cli;
mod discovery;
mod etcd;
mod etcd_cluster;
mod faults;
mod hardening;
mod harness;
mod health;
mod limits;
mod observability;
mod operate;
mod persistence;
mod plugins;
mod proxy_protocol;
mod publish;
mod references;
mod reliability;
mod security;
mod services;
mod session;
mod speak;
mod standalone;
mod startup;
mod tcp;
mod tls;
mod tls_session;
mod top;
mod trust;
mod udp;
mod upgrade;
mod xrpc_redis;
