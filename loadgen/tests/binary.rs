//! The `loadgen` binary against a real server on an embedded (SQLite) ledger: a clean
//! run exits 0 with a JSON report, a server that is not there exits 2. The library's
//! runs with duplicates, races and the database audit, on both backends, are in the
//! server's tests (tests/api/loadgen.rs).

use std::process::Command;

use payments_ledger::{Application, Config, auth};

/// A server on a fresh SQLite file and a client's key; the file goes when the guard
/// drops.
struct Server {
    address: String,
    api_key: String,
    database: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.database.clone().into_os_string();
            file.push(suffix);
            std::fs::remove_file(file).ok();
        }
    }
}

async fn start_server() -> Server {
    let database =
        std::env::temp_dir().join(format!("loadgen-test-{}.db", uuid::Uuid::new_v4().simple()));
    let config = Config::for_database(format!("sqlite://{}?mode=rwc", database.display()));
    let application = Application::build(config)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let client = auth::create_client(application.database(), "loadgen test")
        .await
        .expect("a client is created");
    tokio::spawn(application.run_until_stopped());
    Server {
        address,
        api_key: client.api_key,
        database,
    }
}

async fn run_loadgen(arguments: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(arguments)
            .output()
            .expect("loadgen runs")
    })
    .await
    .expect("the blocking task ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_exits_zero_with_a_json_report() {
    let server = start_server().await;
    let arguments = [
        "--url",
        &server.address,
        "--api-key",
        &server.api_key,
        "--concurrency",
        "4",
        "--requests",
        "60",
        "--accounts",
        "3",
        "--quiet",
        "--json",
    ];
    let output = run_loadgen(arguments.iter().map(|arg| arg.to_string()).collect()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["violations"], serde_json::json!([]));
    assert!(report["payments"].as_u64().unwrap_or(0) > 0, "{report}");
}

#[tokio::test]
async fn an_unreachable_server_exits_two() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let output = run_loadgen(vec![
        "--url".to_owned(),
        format!("http://127.0.0.1:{port}"),
        "--api-key".to_owned(),
        "lk_nothing".to_owned(),
        "--requests".to_owned(),
        "1".to_owned(),
        "--quiet".to_owned(),
    ])
    .await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
