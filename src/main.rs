//! The `patchfeed` binary: parse the command line, set up logging to
//! stderr (`RUST_LOG`, default `patchfeed=info,warn`), run the server.
//!
//! Exit status: 0 after a clean shutdown, 2 for a configuration error, 75
//! ([`patchfeed::app::EXIT_STORAGE_FAILED`]) when writes to the data dir
//! kept failing, 1 for anything else.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use patchfeed::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "patchfeed=info,warn".into()),
        )
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("patchfeed: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("patchfeed: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(patchfeed::app::run(config, args.demo)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<patchfeed::app::StorageFailed>().is_some() => {
                    eprintln!("patchfeed: {e:#}");
                    ExitCode::from(patchfeed::app::EXIT_STORAGE_FAILED)
                }
                Err(e) => {
                    eprintln!("patchfeed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
