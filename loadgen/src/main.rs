//! `loadgen`: drives a running payments-ledger server with concurrent payments,
//! duplicate resends, same-key races, timeouts with retries and reads, then verifies
//! the ledger. Exits 1 when the verifier finds any violation.

use clap::Parser;
use loadgen::Options;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = Options::parse();
    let json = options.json;
    match loadgen::run(options).await {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if report.violations.is_empty() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
