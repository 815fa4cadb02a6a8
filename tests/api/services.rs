//! The PostgreSQL server and Redis the tests talk to.
//!
//! `LEDGER_TEST_DATABASE_URL` (an admin connection) and `LEDGER_TEST_REDIS_URL` name
//! them when set, as CI sets both. When either is unset but Debian's binaries are
//! installed (`/usr/lib/postgresql/*/bin/initdb`, `redis-server`), this test process
//! starts its own on a free port in a temporary directory: a throwaway PostgreSQL
//! cluster (initdb refuses root, so as root it runs as the `postgres` user) and a
//! redis-server. Both are stopped and their directory removed when the process ends:
//! by an `atexit` handler when the test harness exits, and by a watchdog in a process
//! group of its own when the process dies any other way (a signal, Ctrl-C). Only when
//! a binary is missing does a test print SKIP, naming the package to install.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The admin URL of the PostgreSQL server for tests, or `None` when there is none (the
/// caller prints SKIP with `MISSING_POSTGRES`).
pub fn postgres_admin_url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("LEDGER_TEST_DATABASE_URL")
            .ok()
            .or_else(start_postgres)
    })
    .clone()
}

/// The Redis URL for tests, or `None` when there is none (SKIP with `MISSING_REDIS`).
pub fn redis_url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("LEDGER_TEST_REDIS_URL")
            .ok()
            .or_else(start_redis)
    })
    .clone()
}

pub const MISSING_POSTGRES: &str = "LEDGER_TEST_DATABASE_URL is unset and PostgreSQL is not \
                                    installed (apt-get install postgresql)";
pub const MISSING_REDIS: &str = "LEDGER_TEST_REDIS_URL is unset and Redis is not installed \
                                 (apt-get install redis-server)";

/// Shell commands that stop what this process started and remove its files; run at
/// exit, and by the watchdog if the process dies without exiting.
static CLEANUPS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn start_postgres() -> Option<String> {
    let bin = newest_postgres_bin()?;
    let directory = own_directory("pg");
    let data = directory.join("data");
    let as_root = is_root();
    if as_root {
        run(Command::new("chown").args(["postgres:postgres", path(&directory)]));
    }
    let port = free_port();
    let stop = format!(
        "{} {} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
        if as_root {
            "runuser -u postgres --"
        } else {
            ""
        },
        path(&bin.join("pg_ctl")),
        path(&data),
        path(&directory)
    );
    register_cleanup(stop);
    initdb(&bin, &data, as_root);
    // Durability is the cluster's, not the ledger's, to test: a throwaway cluster
    // needs none. Enough connections for many test servers at once.
    let settings = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
         -c max_connections=300 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off",
        path(&directory)
    );
    run(as_postgres(&bin.join("pg_ctl"), as_root).args([
        "-D",
        path(&data),
        "-l",
        path(&directory.join("log")),
        "-o",
        &settings,
        "-w",
        "start",
    ]));
    Some(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

fn start_redis() -> Option<String> {
    let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(Path::new)
        .find(|binary| binary.exists())?;
    let directory = own_directory("redis");
    let port = free_port();
    let pid_file = directory.join("redis.pid");
    register_cleanup(format!(
        "kill -9 $(cat {pid} 2>/dev/null) >/dev/null 2>&1; rm -rf {}",
        path(&directory),
        pid = path(&pid_file)
    ));
    run(redis_server(binary, port).args([
        "--daemonize",
        "yes",
        "--pidfile",
        path(&pid_file),
        "--dir",
        path(&directory),
        "--logfile",
        path(&directory.join("log")),
    ]));
    for _ in 0..250 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(format!("redis://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the test redis-server did not start on port {port}");
}

/// A redis-server on `port` of 127.0.0.1 that keeps nothing on disk.
pub fn redis_server(binary: impl AsRef<std::ffi::OsStr>, port: u16) -> Command {
    let mut command = Command::new(binary);
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    command
}

/// Debian installs each major version under `/usr/lib/postgresql/<major>/bin`.
pub fn newest_postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// A new cluster in `data`, its superuser `postgres` with trust auth.
pub fn initdb(bin: &Path, data: &Path, as_root: bool) {
    run(as_postgres(&bin.join("initdb"), as_root).args([
        "-D",
        path(data),
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "--encoding=UTF8",
        "--locale=C",
    ]));
}

pub fn as_postgres(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", path(program)]);
        command
    } else {
        Command::new(program)
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

pub fn own_directory(what: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "ledger-test-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&directory).expect("a temporary directory");
    directory
}

pub fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

pub fn run(command: &mut Command) {
    let output = command.output().expect("a test service command starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Remembers `cleanup`, and on the first one arms both ways of running them all.
pub fn register_cleanup(cleanup: String) {
    let mut cleanups = CLEANUPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cleanups.push(cleanup.clone());
    if cleanups.len() == 1 {
        // SAFETY: `run_cleanups` is a plain function that never unwinds into C.
        unsafe { libc::atexit(run_cleanups) };
    }
    // A watchdog per service, in a process group of its own so that a Ctrl-C sent to
    // the test's group leaves it alive to clean up after the test process. The shell
    // starts it in the background and exits, so it belongs to no one here.
    let watchdog = format!(
        "(while kill -0 {} 2>/dev/null; do sleep 1; done; {cleanup}) &",
        std::process::id()
    );
    let started = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .expect("the cleanup watchdog starts");
    assert!(started.success(), "the cleanup watchdog starts");
}

extern "C" fn run_cleanups() {
    let cleanups = CLEANUPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for cleanup in cleanups.iter() {
        let _ = Command::new("sh")
            .args(["-c", cleanup])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
