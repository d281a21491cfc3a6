//! Developer tasks for the Statehouse workspace, run as `cargo xtask <command>`:
//!
//! * `infra up|down|status|logs`: a local Kafka (KRaft) and Cassandra for development and
//!   the integration tests, without Docker ([`infra`]).
//! * `ci`: everything CI checks, in order ([`ci`]).
//! * `dev`: Statehouse with its sample service, for trying it out ([`dev`]).
//! * `fuzz`: build the fuzz targets and run each for a few seconds ([`fuzz`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod ci;
mod dev;
mod digest;
mod fuzz;
mod infra;
mod layout;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Statehouse developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop or inspect the local Kafka and Cassandra.
    Infra {
        #[command(subcommand)]
        command: InfraCommand,
    },
    /// Run what CI runs: fmt, clippy, infra up, the workspace tests.
    Ci(ci::Args),
    /// Run Statehouse with the sample shopping cart (infra, user function, processor, gateway).
    Dev(dev::Args),
    /// Build the fuzz targets (cargo-fuzz) and run each for a few seconds from its corpus.
    Fuzz(fuzz::Args),
    /// Benchmark Statehouse against the stateless+Cassandra baseline and the Kafka floor.
    Bench(bench::Args),
}

#[derive(Debug, Subcommand)]
enum InfraCommand {
    /// Start Kafka and Cassandra in the background (does nothing if they are healthy).
    Up {
        /// Also run a Kafka cluster of this many broker+controller nodes (ports 19092..)
        /// for fault tests; 1 runs only the single node on 9092.
        #[arg(long, default_value_t = 1)]
        kafka_brokers: u16,
        /// Also run Jaeger (built once from the Go module proxy), the trace collector of the
        /// tracing tests.
        #[arg(long)]
        jaeger: bool,
        /// Also run a Kafka node that takes only SASL_SSL clients (127.0.0.1:9096) and a
        /// Cassandra node that takes only TLS clients that log in (127.0.0.1:9142), for the
        /// secured-infrastructure tests; certificates and passwords in `<infra>/secure/`.
        #[arg(long)]
        secure: bool,
    },
    /// Stop every service; no process is left behind.
    Down {
        /// Also delete the services' data (logs are kept).
        #[arg(long)]
        wipe: bool,
    },
    /// Show each service's process, health, version, ports and paths; exits 1 if any is unhealthy.
    Status,
    /// Print the end of every service's logs.
    Logs {
        /// Lines per log file.
        #[arg(long, short = 'n', default_value_t = 40)]
        lines: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` is a clean "no" (e.g. `status` with an unhealthy service).
fn run(cli: Cli) -> anyhow::Result<bool> {
    let layout = layout::Layout::from_env()?;
    match cli.command {
        Command::Infra { command } => match command {
            InfraCommand::Up {
                kafka_brokers,
                jaeger,
                secure,
            } => infra::up(
                &layout,
                infra::Extras {
                    kafka_brokers,
                    jaeger,
                    secure,
                },
            )
            .map(|()| true),
            InfraCommand::Down { wipe } => infra::down(&layout, wipe).map(|()| true),
            InfraCommand::Status => infra::status(&layout),
            InfraCommand::Logs { lines } => infra::logs(&layout, lines).map(|()| true),
        },
        Command::Ci(args) => ci::run(&layout, &args).map(|()| true),
        Command::Dev(args) => dev::run(&layout, &args).map(|()| true),
        Command::Fuzz(args) => fuzz::run(&layout, &args).map(|()| true),
        Command::Bench(args) => bench::run(&layout, &args).map(|()| true),
    }
}
