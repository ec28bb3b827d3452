//! The command line: `patchfeed serve [--config FILE] [--listen ADDR]
//! [--data-dir DIR] [--demo]`. Flags override the file.
//!
//! Parsing only (clap); reading and validating the file is
//! [`crate::config`]'s, running the server [`crate::app`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// The whole command line.
#[derive(Parser, Debug)]
#[command(
    name = "patchfeed",
    version,
    about = "Turns any JSON-over-HTTP API into a resumable stream of JSON Patches"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

/// The flags of `serve`; `--listen` and `--data-dir` beat the file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where the change log is kept [default: ./patchfeed-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also run a built-in upstream on loopback, registered as `demo`.
    #[arg(long)]
    pub demo: bool,
}

impl ServeArgs {
    /// The configuration: the file (or defaults), then the flags.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_override() {
        let cli = Cli::try_parse_from([
            "patchfeed",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--demo",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command;
        assert!(args.demo);
        let c = args.config().unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert!(Cli::try_parse_from(["patchfeed", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["patchfeed", "serve", "--bogus"]).is_err());
    }
}
