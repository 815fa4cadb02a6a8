//! What every benchmark here shares: settings from the environment, a database URL per
//! run, and the release server as a child process on a free port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map(|index| index + 3).unwrap_or(0);
    match url[scheme_end..].find('/') {
        Some(slash) => format!("{}/{name}", &url[..scheme_end + slash]),
        None => format!("{url}/{name}"),
    }
}

/// The release server, killed when dropped.
pub struct Server {
    process: Child,
    pub address: String,
}

/// The server binary under test: this build's, or `LEDGER_BENCH_SERVER_BIN` (say, one
/// built from an earlier commit, to compare before and after on one machine).
pub fn server_bin() -> String {
    std::env::var("LEDGER_BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_payments-ledger").to_owned())
}

impl Server {
    /// Starts `payments-ledger serve` with `environment` on a free port (its own cache
    /// namespace too) and waits until it listens.
    pub fn start(environment: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(server_bin());
        command
            .arg("serve")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("CACHE_NAMESPACE", format!("ledger-bench-{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (name, value) in environment {
            command.env(name, value);
        }
        let server = Self {
            process: command.spawn().expect("the server starts"),
            address: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not start listening");
    }

    /// The server's resident memory now, in MiB.
    #[allow(dead_code)] // not every benchmark reports memory
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
