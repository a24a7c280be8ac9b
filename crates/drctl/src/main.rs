//! drctl: a disaster-recovery controller for Docker and docker-compose stacks.

mod backups;
mod context;
mod data;
mod doctor;
mod error;
mod notify;
mod plan;
mod rehearse;
mod render;
mod run;
mod runner;
mod schedule;
mod status;
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
    /// Execute a runbook: journal every step, print the report.
    Run {
        /// A runbook file, or a name in the runbooks folder.
        runbook: String,
        /// Answer `confirm` steps with yes.
        #[arg(long, short)]
        yes: bool,
        /// The backup set restores use: a set id, or `latest` (overrides the runbook's `backup:`).
        #[arg(long, value_name = "ID|latest")]
        backup: Option<String>,
        /// Events as JSON lines on stdout, then the report as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted or failed run from its journal (finished steps are not redone).
    Resume {
        run_id: String,
        #[arg(long, short)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Containers and health of the stack's services, and the last run.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The report of a run (default: the newest).
    Report {
        run_id: Option<String>,
        #[arg(long, value_parser = ["md", "json"], default_value = "md")]
        format: String,
    },
    /// Take a backup set of every target now.
    Backup {
        /// Tag the set (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The backup repository: list, show, verify and prune sets.
    Backups {
        #[command(subcommand)]
        action: BackupsCmd,
    },
    /// Run a runbook against a scratch copy of the stack, then tear the copy down.
    Rehearse {
        runbook: String,
        /// The backup set to copy the stack from: an id, or `latest` (default: the runbook's
        /// `backup:`, else latest).
        #[arg(long)]
        backup: Option<String>,
        /// Keep the scratch copy for inspection.
        #[arg(long)]
        keep: bool,
        #[arg(long, short)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the schedules of drctl.yml (cron, UTC) until stopped: JSON logs, Prometheus /metrics.
    Schedule(schedule::ScheduleArgs),
    /// Print the JSON Schema of runbooks or of drctl.yml.
    Schema {
        #[arg(value_enum, default_value = "runbook")]
        which: SchemaKind,
    },
}

#[derive(Subcommand)]
enum BackupsCmd {
    /// Every set, complete or not, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A set's manifest.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Download and check every object of a set (nothing is restored).
    Verify {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete what the retention policy does not keep (never the newest complete set).
    Prune {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaKind {
    Runbook,
    Config,
}

/// `--backup ID|latest`.
fn selection_arg(b: &str) -> drctl_core::runbook::Selection {
    if b == "latest" {
        drctl_core::runbook::Selection::Latest
    } else {
        drctl_core::runbook::Selection::Id(b.to_string())
    }
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
        Command::Run {
            runbook,
            yes,
            backup,
            json,
        } => {
            let backup = backup.map(|b| selection_arg(&b));
            runtime()?.block_on(run::run(
                config,
                &runbook,
                run::RunArgs { yes, json, backup },
            ))
        }
        Command::Resume { run_id, yes, json } => runtime()?.block_on(run::resume(
            config,
            &run_id,
            run::RunArgs {
                yes,
                json,
                backup: None,
            },
        )),
        Command::Status { json } => runtime()?.block_on(status::run(config, json)),
        Command::Report { run_id, format } => run::report(config, run_id.as_deref(), &format),
        Command::Backup { tags, json } => runtime()?.block_on(backups::backup(config, tags, json)),
        Command::Backups { action } => runtime()?.block_on(async {
            match action {
                BackupsCmd::List { json } => backups::list(config, json).await,
                BackupsCmd::Show { id, json } => backups::show(config, &id, json).await,
                BackupsCmd::Verify { id, json } => backups::verify(config, &id, json).await,
                BackupsCmd::Prune { dry_run, json } => backups::prune(config, dry_run, json).await,
            }
        }),
        Command::Rehearse {
            runbook,
            backup,
            keep,
            yes,
            json,
        } => {
            let backup = backup.map(|b| {
                if b == "latest" {
                    drctl_core::runbook::Selection::Latest
                } else {
                    drctl_core::runbook::Selection::Id(b)
                }
            });
            runtime()?.block_on(rehearse::run(
                config,
                &runbook,
                rehearse::RehearseArgs {
                    backup,
                    keep,
                    yes,
                    json,
                },
            ))
        }
        Command::Schedule(args) => schedule::run(config, cli.verbose, args),
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

/// Keep glibc's heap from growing with the data: the data path allocates 8 MiB parts on
/// several threads, and by default glibc raises its mmap threshold after the first such
/// buffer is freed, then serves the next ones from per-thread arenas that fragment (tens
/// of MiB of peak memory that holds no data). A fixed threshold maps and unmaps big
/// buffers; two arenas are plenty for a process whose heavy work is I/O.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
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
