//! Integration tests: the real server on loopback with ephemeral ports, and
//! real clients talking to it.

mod admin;
mod backend;
mod cli;
mod harness;
mod observability;
mod persistence;
mod proxy_protocol;
mod startup;
mod tcp;
mod tls;
mod top;
mod udp;
