//! The `siplb` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SIP load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match siplb::config::Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listen address(es), {} worker(s), {} destination(s), {} rule(s))",
                    file.display(),
                    c.listen.len(),
                    c.workers,
                    c.destinations.len(),
                    c.rules.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("siplb: {e}");
                std::process::exit(1);
            }
        },
        None => {
            let path = cli
                .config
                .context("--config FILE is required (or: siplb check-config FILE)")?;
            let _config = siplb::config::Config::load(&path)?;
            anyhow::bail!("the runtime is not built yet")
        }
    }
}
