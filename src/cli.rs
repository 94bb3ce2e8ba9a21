//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "membergate",
    version,
    about = "A self-hosted membership gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "config/membergate.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and print every problem found (exit code 2 if any).
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}
