use clap::Parser;
use payments_ledger::cli::{self, Cli};

/// glibc's allocator kept a burst of large queries' memory for good (RSS stayed at its
/// peak after the burst); mimalloc gives it back (docs/benchmarks.md, "Hostile traffic").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match cli::run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
