//! The command line: argument types in [`args`], behaviour here.

pub mod args;
pub mod generate;

use std::path::Path;

use anyhow::Context;

use crate::config::{admin_key, Config};
use crate::server;
pub use args::{Cli, Command};

/// Run a parsed command line; errors become one line on stderr in `main`.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(opts) => serve(&opts.config),
        Command::Completions { shell } => generate::completions(shell, &mut std::io::stdout()),
        Command::Man => generate::man(&mut std::io::stdout()),
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut config = Config::load(path)?;
    let generated = admin_key::ensure_admin_keys(path, &text, &mut config)?;
    for g in &generated {
        // Shown once, as APISIX does; it is also written back into the file.
        eprintln!(
            "generated admin key for \"{}\" (saved in {}): {}",
            g.name,
            path.display(),
            g.key.expose()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::run(config))?;
    Ok(())
}
