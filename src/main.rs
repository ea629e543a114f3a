//! The `apisix-stream` executable: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = apisix_stream::cli::Cli::parse();
    apisix_stream::logging::init();
    apisix_stream::tls::install_provider();
    match apisix_stream::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apisix-stream: {e:#}");
            ExitCode::FAILURE
        }
    }
}
