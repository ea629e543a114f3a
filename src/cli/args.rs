//! Command-line arguments (clap derive only, no I/O).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// L4 (TCP/UDP) proxy compatible with the Apache APISIX stream proxy.
#[derive(Debug, Parser)]
#[command(name = "apisix-stream", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, the Admin API, the Control API and metrics until SIGINT/SIGTERM.
    ///
    /// Example: apisix-stream serve -c conf/config.yaml
    Serve(ServeArgs),
    /// Print shell completions for SHELL to stdout.
    ///
    /// Example: apisix-stream completions bash > /etc/bash_completion.d/apisix-stream
    Completions {
        /// Shell to generate completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    ///
    /// Example: apisix-stream man > /usr/local/share/man/man1/apisix-stream.1
    Man,
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Path of config.yaml (APISIX's format).
    #[arg(short, long, default_value = "conf/config.yaml", value_name = "PATH")]
    pub config: PathBuf,
}
