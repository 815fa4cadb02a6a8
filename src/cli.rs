//! The command line. Every subcommand prints what a script needs on stdout and
//! diagnostics on stderr, and exits non-zero on failure.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{CacheConfig, Config, DatabaseConfig, Migrations, ServerConfig};
use crate::ids::ClientId;
use crate::metrics::Metrics;
use crate::startup::{self, Application};
use crate::{auth, db, graphql, ledger, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "payments-ledger",
    version,
    about = "A payments ledger GraphQL server"
)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub cache: CacheConfig,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and serve GraphQL at /graphql, GraphiQL at / and the dashboard at
    /// /dashboard (the default).
    Serve,
    /// Apply migrations and exit (whatever DATABASE_MIGRATIONS says).
    Migrate,
    /// Print the GraphQL schema (SDL); schema.graphql is its output.
    Schema,
    /// Manage clients (tenants) and their API keys.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// PostgreSQL: grant ROLE what the server needs and nothing more (run as the role
    /// that owns the tables; docs/operations.md, "Database roles").
    GrantAppRole {
        /// An existing role the server will log in as.
        role: String,
    },
    /// Write one client's ledger entries (with payment, metadata and running balance)
    /// to stdout for reconciliation: account by account, oldest first, streaming.
    Export {
        /// The client's id, or its name (as `client create` was given it).
        #[arg(long)]
        client: String,
        /// Entries created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Entries created before this RFC 3339 time.
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, value_enum, default_value = "csv")]
        format: ledger::export::Format,
    },
    /// Check every ledger invariant from the database; exits 1 listing any violation.
    Verify {
        /// A file of acknowledged payments, one "<idempotency key><TAB><payment id>" per
        /// line (as `loadgen --acknowledged-log` writes): each key must have exactly
        /// that payment.
        #[arg(long)]
        acknowledged: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a client; its new API key is printed alone on the last line.
    Create {
        /// A name to recognize the client by.
        name: String,
    },
    /// Give a client another API key (to rotate keys: add, switch, revoke the old);
    /// the new key is printed alone on the last line.
    AddKey {
        /// The client's id, as `client create` printed it.
        client_id: uuid::Uuid,
    },
    /// Revoke a key, named by its id or by the key itself. Every instance refuses it
    /// within API_KEY_CACHE_SECONDS.
    RevokeKey {
        /// A key id (as `client keys` lists it) or the key (`lk_…`).
        key: String,
    },
    /// List a client's keys (id, created, revoked); never the keys themselves.
    Keys {
        /// The client's id.
        client_id: uuid::Uuid,
    },
}

/// Runs the parsed command; the process exit code follows the result.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config {
        database: cli.database,
        server: cli.server,
        cache: cli.cache,
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Migrate | Command::GrantAppRole { .. } = command {
        config.database.migrations = Migrations::Apply;
    }
    match command {
        Command::Serve => {
            telemetry::init();
            let app = Application::build(config).await?;
            startup::greet_first_run(&app).await?;
            tracing::info!(
                "listening on http://{} (GraphiQL at /, dashboard at /dashboard, GraphQL at /graphql)",
                app.state().config.server.listen_addr.ip().to_string()
                    + ":"
                    + &app.port().to_string()
            );
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            startup::connect_and_migrate(&config, &Metrics::new()).await?;
            println!("migrations applied");
        }
        Command::Schema => print!("{}", graphql::sdl()),
        Command::Client { command } => {
            let metrics = Metrics::new();
            let db = startup::connect_and_migrate(&config, &metrics).await?;
            let writes = startup::connect_for_writes(&config, &metrics).await?;
            run_client_command(&db, &writes, command).await?;
        }
        Command::GrantAppRole { role } => {
            let metrics = Metrics::new();
            startup::connect_and_migrate(&config, &metrics).await?;
            let writes = startup::connect_for_writes(&config, &metrics).await?;
            db::grant_app_role(&writes, &role).await?;
            println!(
                "granted {role} what the server needs; run it as {role} with DATABASE_MIGRATIONS=check"
            );
        }
        Command::Export {
            client,
            since,
            until,
            format,
        } => {
            let db = startup::connect_and_migrate(&config, &Metrics::new()).await?;
            let request = ledger::export::ExportRequest {
                client: ledger::export::find_client(&db, &client).await?,
                since,
                until,
                format,
            };
            let out = std::io::BufWriter::new(std::io::stdout());
            let written = ledger::export::export(&db, &request, out).await?;
            eprintln!("exported {written} entries");
        }
        Command::Verify { acknowledged } => {
            let db = startup::connect_and_migrate(&config, &Metrics::new()).await?;
            let mut violations = ledger::audit::find_violations(&db).await?;
            if let Some(path) = acknowledged {
                let log = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                violations.extend(ledger::audit::check_acknowledged(&db, &log).await?);
            }
            if !violations.is_empty() {
                for violation in &violations {
                    println!("VIOLATION {violation}");
                }
                anyhow::bail!("{} invariant violation(s)", violations.len());
            }
            println!("ledger verified: every invariant holds");
        }
    }
    Ok(())
}

/// `db` reads; `writes` runs the commands that write, each in a transaction.
async fn run_client_command(
    db: &sea_orm::DatabaseConnection,
    writes: &sea_orm::DatabaseConnection,
    command: ClientCommand,
) -> anyhow::Result<()> {
    match command {
        ClientCommand::Create { name } => {
            let created = auth::create_client(writes, &name).await?;
            println!("created client {name:?} with id {}", created.id.0);
            println!(
                "key id {}; the API key, shown only this once:",
                created.key.id
            );
            println!("{}", created.api_key);
        }
        ClientCommand::AddKey { client_id } => {
            let key = auth::add_key(writes, ClientId(client_id)).await?;
            println!("key id {}; the API key, shown only this once:", key.id);
            println!("{}", key.api_key);
        }
        ClientCommand::RevokeKey { key } => {
            let revoked = auth::revoke_key(writes, auth::KeyRef::parse(&key)?).await?;
            println!(
                "revoked key {} of client {}; every instance refuses it within API_KEY_CACHE_SECONDS",
                revoked.id, revoked.client_id
            );
        }
        ClientCommand::Keys { client_id } => {
            for key in auth::list_keys(db, ClientId(client_id)).await? {
                let revoked = key.revoked_at.map_or_else(
                    || "active".to_owned(),
                    |at| format!("revoked {}", at.to_rfc3339()),
                );
                println!(
                    "{}\tcreated {}\t{revoked}",
                    key.id,
                    key.created_at.to_rfc3339()
                );
            }
        }
    }
    Ok(())
}
