//! The `statehouse` binary: parses the command line, loads and validates the configuration,
//! starts telemetry and hands over to a role's library (`run(config, shutdown)`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use statehouse_core::ServiceName;
use statehouse_runtime::config::{Config, Role, Sources};

#[derive(Parser)]
#[command(name = "statehouse", version, about = "Stateful serverless services on Kafka", long_about = None)]
struct Cli {
    /// Configuration file (TOML). Default: $STATEHOUSE_CONFIG, else ./statehouse.toml if present.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set kafka.bootstrap-servers=kafka:9092` (repeatable;
    /// beats the file and STATEHOUSE__* environment variables).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: the client front door (gRPC, gRPC-Web, HTTP/JSON).
    Gateway(RoleArgs),
    /// Run a processor: the sidecar of one user function.
    Processor(RoleArgs),
    /// Run the projector: a service's projections, built from its journal.
    Projector(RoleArgs),
    /// Prepare and inspect Kafka and Cassandra.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the effective configuration (secrets masked).
    Config {
        /// Validate it for this role as well.
        #[arg(long, value_enum)]
        role: Option<RoleName>,
    },
}

#[derive(Args)]
struct RoleArgs {
    /// Load and validate the configuration, print it (secrets masked), and exit: 0 if valid.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Create or upgrade the Cassandra keyspace and tables (idempotent).
    Migrate,
    /// The registered services and their entity types.
    Services {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A service's partitions: owner (routing table), epoch, journal end, backup checkpoint, lag.
    Partitions {
        service: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One entity: its journal (decoded to JSON), snapshots and current state.
    Entity {
        service: String,
        /// `<persistence_id>|<entity_id>`, or the entity id if the service has one entity type.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Erase one entity (right to be forgotten) through the owner of its partition: tombstones
    /// for its journal and values keys, its Cassandra rows removed, its active instance
    /// evicted, an audit record in the `<prefix>audit` topic.
    Erase {
        service: String,
        /// `<persistence_id>|<entity_id>`, or the entity id if the service has one entity type.
        key: String,
        /// Why (kept in the audit record).
        #[arg(long)]
        reason: String,
        /// Print what would be erased; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who asks (default: $USER@hostname).
        #[arg(long)]
        requested_by: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Certificates for trying TLS (`docs/tls.md`).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// A service's projections: their generations, progress, lag and parked events.
    Projections {
        /// The service (default: projector.service, else processor.service).
        #[arg(long, global = true)]
        service: Option<String>,
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// The service's projections and the generation each serves.
    List,
    /// One projection: generations, progress and lag per journal partition, parked events.
    Status { name: String },
    /// Rebuild a projection from offset 0 into a new generation; the current one keeps serving
    /// until the new one has caught up, then the projector switches.
    Reset { name: String },
    /// Let the projector pass a parked event (it is not folded into its row).
    Skip {
        name: String,
        /// The journal partition of the parked event.
        #[arg(long)]
        partition: i32,
        /// Its offset.
        #[arg(long)]
        offset: i64,
        /// The generation it is parked in (default: the one served).
        #[arg(long)]
        generation: Option<i32>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Mint a local CA, a server and a client certificate (development only) and print the
    /// configuration keys that use them.
    Dev {
        /// The folder to write `ca.pem`, `ca.key`, `server.pem`, `server.key`, `client.pem`,
        /// `client.key` to (created; files replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Names (DNS or IP) the certificates are valid for, besides localhost and 127.0.0.1
        /// (comma separated or repeated).
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create a service's topics and the shared registry/routing topics (idempotent; verifies
    /// the partition count and cleanup policy of topics that exist).
    Create {
        /// The service name.
        #[arg(long)]
        service: String,
        /// Partitions (default: processor.partitions).
        #[arg(long)]
        partitions: Option<u32>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleName {
    Gateway,
    Processor,
    Projector,
    Admin,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Gateway => Role::Gateway,
            RoleName::Processor => Role::Processor,
            RoleName::Projector => Role::Projector,
            RoleName::Admin => Role::Admin,
        }
    }
}

mod inspect;
mod projections;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli, role: Role) -> anyhow::Result<Config> {
    let sources = Sources {
        file: cli.config.clone(),
        overrides: cli.overrides.clone(),
    };
    let config = Config::load(&sources)?;
    config.validate(role)?;
    Ok(config)
}

fn runtime(
    options: &statehouse_runtime::config::RuntimeOptions,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if options.worker_threads > 0 {
        builder.worker_threads(options.worker_threads);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Gateway(args) => run_role(&cli, Role::Gateway, "gateway", args),
        Command::Processor(args) => run_role(&cli, Role::Processor, "processor", args),
        Command::Projector(args) => run_role(&cli, Role::Projector, "projector", args),
        Command::Config { role } => {
            let config = match role {
                Some(role) => load(&cli, (*role).into())?,
                None => Config::load(&Sources {
                    file: cli.config.clone(),
                    overrides: cli.overrides.clone(),
                })?,
            };
            print!("{}", config.masked_toml());
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Certs {
                    command: CertsCommand::Dev { out, names },
                },
        } => certs_dev(out, names),
        Command::Admin { command } => {
            let config = load(&cli, Role::Admin)?;
            let runtime = runtime(&config.runtime)?;
            // The trace exporter's channel needs the runtime; the guard flushes it before the
            // runtime goes.
            let _entered = runtime.enter();
            let _telemetry =
                statehouse_runtime::telemetry::init(&inspect::telemetry(&config), "admin")
                    .map_err(anyhow::Error::msg)?;
            runtime
                .block_on(admin(command, &config))
                .map_err(|e| explain_kafka(e, &config.kafka))
        }
    }
}

/// An error that came from brokers Statehouse could not reach gets librdkafka's reason (a
/// refused SASL login, a failed TLS handshake) in front, when it gives one within 5 s.
fn explain_kafka(error: anyhow::Error, kafka: &statehouse_kafka::Options) -> anyhow::Error {
    if !statehouse_kafka::diagnose::is_unreachable(&format!("{error:#}")) {
        return error;
    }
    match statehouse_kafka::diagnose::connection_problem(kafka, std::time::Duration::from_secs(5)) {
        Some(reason) => error.context(format!("Kafka at {}: {reason}", kafka.bootstrap_servers)),
        None => error,
    }
}

/// `statehouse admin certs dev`: needs no configuration (nothing is connected to).
fn certs_dev(out: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    let files = statehouse_runtime::tls::dev::mint(out, names)
        .with_context(|| format!("minting development certificates into {}", out.display()))?;
    let show = |p: &std::path::Path| p.display().to_string();
    println!(
        "Development certificates (do not use in production) for: {}",
        files.names.join(", ")
    );
    println!(
        "  CA          {} (key {})",
        show(&files.ca_cert),
        show(&files.ca_key)
    );
    println!(
        "  server      {} (key {}): server and client use",
        show(&files.server_cert),
        show(&files.server_key)
    );
    println!(
        "  client      {} (key {}): client use",
        show(&files.client_cert),
        show(&files.client_key)
    );
    println!();
    println!(
        "TLS on the gateway's client port (clients trust {}):",
        show(&files.ca_cert)
    );
    println!("  [gateway.tls]");
    println!("  cert-file = {:?}", show(&files.server_cert));
    println!("  key-file = {:?}", show(&files.server_key));
    println!("  # client certificates too (clients present client.pem / client.key):");
    println!("  # client-ca-file = {:?}", show(&files.ca_cert));
    println!();
    println!("mTLS between the gateway and processors, and between processors:");
    println!("  [internal-tls]");
    println!("  enabled = true");
    println!("  ca-file = {:?}", show(&files.ca_cert));
    println!("  # processors: server.pem (it serves and calls); the gateway: client.pem");
    println!("  cert-file = {:?}", show(&files.server_cert));
    println!("  key-file = {:?}", show(&files.server_key));
    if let Some(name) = names.first() {
        println!("  allowed-peer-names = [{name:?}]");
        println!("  server-name = {name:?}");
    }
    Ok(())
}

fn run_role(cli: &Cli, role: Role, name: &str, args: &RoleArgs) -> anyhow::Result<()> {
    let config = load(cli, role).with_context(|| format!("configuration of the {name}"))?;
    if args.check_config {
        print!("{}", config.masked_toml());
        eprintln!("statehouse {name}: configuration OK");
        return Ok(());
    }
    let runtime = runtime(&config.runtime)?;
    // The trace exporter's channel needs the runtime; the guard flushes it before the runtime
    // goes.
    let _entered = runtime.enter();
    let _telemetry =
        statehouse_runtime::telemetry::init(&config.telemetry, name).map_err(anyhow::Error::msg)?;
    tracing::info!(role = name, config = %config.masked_toml(), "starting");
    let kafka = config.kafka.clone();
    let result = runtime.block_on(async move {
        let shutdown = statehouse_runtime::shutdown::on_signals();
        match role {
            Role::Processor => statehouse_processor::run(config, shutdown)
                .await
                .context("processor"),
            Role::Gateway => statehouse_gateway::run(config, shutdown)
                .await
                .context("gateway"),
            Role::Projector => statehouse_projections::run(config, shutdown)
                .await
                .context("projector"),
            _ => anyhow::bail!(
                "the {name} role is not available in this build yet; only `statehouse {name} --check-config` works"
            ),
        }
    });
    result.map_err(|e| explain_kafka(e, &kafka))
}

async fn admin(command: &AdminCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        AdminCommand::Topics {
            command:
                TopicsCommand::Create {
                    service,
                    partitions,
                },
        } => {
            let service = ServiceName::new(service.clone())?;
            let partitions = partitions.unwrap_or(config.processor.partitions);
            let admin = statehouse_kafka::admin::Admin::new(&config.kafka)?;
            let outcomes = admin
                .ensure_service(&service, partitions)
                .await
                .with_context(|| format!("creating the topics of {service}"))?;
            for (topic, outcome) in outcomes {
                let what = match outcome {
                    statehouse_kafka::admin::Outcome::Created => "created",
                    statehouse_kafka::admin::Outcome::AlreadyExists => "exists (verified)",
                };
                println!("{topic}: {what}");
            }
            Ok(())
        }
        AdminCommand::Services { json } => {
            inspect::run(config, inspect::Request::Services, *json).await
        }
        AdminCommand::Partitions { service, json } => {
            inspect::run(config, inspect::Request::Partitions { service }, *json).await
        }
        AdminCommand::Entity { service, key, json } => {
            inspect::run(config, inspect::Request::Entity { service, key }, *json).await
        }
        AdminCommand::Erase {
            service,
            key,
            reason,
            dry_run,
            requested_by,
            json,
        } => {
            let request = inspect::Request::Erase {
                service,
                key,
                reason,
                dry_run: *dry_run,
                requested_by: requested_by.as_deref(),
            };
            inspect::run(config, request, *json).await
        }
        AdminCommand::Projections { service, command } => {
            projections::run(config, service.as_deref(), command).await
        }
        AdminCommand::Certs {
            command: CertsCommand::Dev { out, names },
        } => certs_dev(out, names),
        AdminCommand::Migrate => {
            let report = statehouse_store::migrations::run(&config.cassandra)
                .await
                .context("migrating Cassandra")?;
            for v in &report.applied {
                println!("keyspace {}: applied migration {v}", report.keyspace);
            }
            for v in &report.already_applied {
                println!(
                    "keyspace {}: migration {v} already applied",
                    report.keyspace
                );
            }
            Ok(())
        }
    }
}
