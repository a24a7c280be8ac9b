//! drctl: a disaster-recovery controller for Docker and docker-compose stacks.

mod context;
mod doctor;
mod error;
mod plan;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::CliError;

#[derive(Parser)]
#[command(
    name = "drctl",
    version,
    about = "Disaster-recovery controller for Docker and docker-compose stacks"
)]
struct Cli {
    /// drctl.yml to use (default: $DRCTL_CONFIG, else drctl.yml here or in a parent folder).
    #[arg(long, global = true, env = "DRCTL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check runbooks (default: drctl.yml and every runbook in its folder).
    Validate {
        /// Runbook files or names.
        runbooks: Vec<String>,
        /// Print the problems as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the resolved plan of a runbook, changing nothing.
    Plan {
        /// A runbook file, or a name in the runbooks folder.
        runbook: String,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Do not ask the Docker daemon which containers each step touches.
        #[arg(long)]
        offline: bool,
    },
    /// Check what a run needs: Docker, compose, the repository, credentials.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of runbooks or of drctl.yml.
    Schema {
        #[arg(value_enum, default_value = "runbook")]
        which: SchemaKind,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaKind {
    Runbook,
    Config,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("failed to start the async runtime: {e}")))
}

fn run(cli: Cli) -> Result<(), CliError> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Validate { runbooks, json } => validate::run(config, &runbooks, json),
        Command::Plan {
            runbook,
            json,
            offline,
        } => runtime()?.block_on(plan::run(config, &runbook, json, offline)),
        Command::Doctor { json } => runtime()?.block_on(doctor::run(config, json)),
        Command::Schema { which } => {
            let schema = match which {
                SchemaKind::Runbook => drctl_core::schema::runbook_schema(),
                SchemaKind::Config => drctl_core::schema::config_schema(),
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("schema serializes")
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            match &e {
                CliError::Invalid(d) if d.is_empty() => {}
                CliError::Invalid(d) => {
                    eprintln!("{d}");
                    eprintln!(
                        "error: {} problem{} found",
                        d.len(),
                        if d.len() == 1 { "" } else { "s" }
                    );
                }
                CliError::Failed(m) if m.is_empty() => {}
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(code as u8)
        }
    }
}
