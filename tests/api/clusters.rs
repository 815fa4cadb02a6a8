//! PostgreSQL clusters of a test's own, from Debian's binaries on free ports: a primary,
//! standbys made from it by `pg_basebackup -R`, and pgbouncer in front of one. Each is
//! stopped and its directory removed when dropped, and by the process-exit cleanup of
//! `services` if the test dies first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::services::{
    as_postgres, free_port, initdb, is_root, newest_postgres_bin, own_directory, path,
    register_cleanup, run,
};

pub const MISSING_BINARIES: &str =
    "PostgreSQL's server binaries are not installed (apt-get install postgresql)";

pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    directory: PathBuf,
    as_root: bool,
    /// The `-o` options it starts with (the port, and the primary's synchronous standby).
    settings: String,
}

impl Cluster {
    /// A primary that streams WAL to standbys; with `synchronous_standby`, a commit
    /// waits until the standby of that `application_name` has it. That setting is
    /// given on the command line, not in a file, so a standby copied from this cluster
    /// does not inherit it (once promoted, it would wait for a standby of its own).
    pub fn primary(synchronous_standby: Option<&str>) -> Option<Self> {
        let mut cluster = Self::empty("primary")?;
        initdb(&cluster.bin, &cluster.data(), cluster.as_root);
        std::fs::write(
            cluster.data().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf is written");
        if let Some(standby) = synchronous_standby {
            cluster
                .settings
                .push_str(&format!(" -c synchronous_standby_names={standby}"));
        }
        cluster.start();
        Some(cluster)
    }

    /// A hot standby of `primary` streaming as `application_name`, made by
    /// `pg_basebackup -R` and started.
    pub fn standby_of(primary: &Self, application_name: &str) -> Self {
        let cluster = Self::empty(application_name).expect("the binaries were found before");
        run(
            as_postgres(&cluster.bin.join("pg_basebackup"), cluster.as_root).args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                path(&cluster.data()),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ]),
        );
        let auto_conf = cluster.data().join("postgresql.auto.conf");
        let mut settings = std::fs::read_to_string(&auto_conf).unwrap_or_default();
        settings.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={application_name}'\n",
            primary.port
        ));
        std::fs::write(&auto_conf, settings).expect("postgresql.auto.conf is written");
        cluster.start();
        cluster
    }

    fn empty(what: &str) -> Option<Self> {
        let bin = newest_postgres_bin()?;
        let directory = own_directory(&format!("cluster-{what}"));
        let as_root = is_root();
        if as_root {
            run(Command::new("chown").args(["postgres:postgres", path(&directory)]));
        }
        let port = free_port();
        let cluster = Self {
            port,
            settings: format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c max_connections=100 -c wal_level=replica -c max_wal_senders=10 \
                 -c hot_standby=on -c fsync=off -c full_page_writes=off",
                path(&directory)
            ),
            bin,
            directory,
            as_root,
        };
        register_cleanup(cluster.stop_command());
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.directory.join("data")
    }

    fn pg_ctl(&self) -> Command {
        as_postgres(&self.bin.join("pg_ctl"), self.as_root)
    }

    fn stop_command(&self) -> String {
        format!(
            "{} {} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
            if self.as_root {
                "runuser -u postgres --"
            } else {
                ""
            },
            path(&self.bin.join("pg_ctl")),
            path(&self.data()),
            path(&self.directory)
        )
    }

    pub fn start(&self) {
        run(self.pg_ctl().args([
            "-D",
            path(&self.data()),
            "-l",
            path(&self.directory.join("log")),
            "-o",
            &self.settings,
            "-w",
            "start",
        ]));
    }

    /// As a crash would: `kill -9` of the postmaster, its backends left to die.
    pub fn kill(&self) {
        let pid_file =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("the cluster runs");
        let pid = pid_file.lines().next().expect("a pid").trim().to_owned();
        run(Command::new("kill").args(["-9", &pid]));
        // The backends notice their postmaster is gone and exit; wait until the port
        // refuses, as it would on a dead machine.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        run(Command::new("pkill").args(["-9", "-f", path(&self.data())]));
    }

    pub fn promote(&self) {
        run(self
            .pg_ctl()
            .args(["-D", path(&self.data()), "-w", "promote"]));
    }

    /// Runs `sql` with psql on database `database`; returns what it printed, unaligned.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Waits until a standby of `application_name` streams from this primary in
    /// `sync_state` (`sync` or `async`).
    pub fn await_standby(&self, application_name: &str, sync_state: &str) {
        for _ in 0..400 {
            let state = self.sql(
                "postgres",
                &format!(
                    "SELECT sync_state FROM pg_stat_replication \
                     WHERE application_name = '{application_name}' AND state = 'streaming'"
                ),
            );
            if state == sync_state {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("standby {application_name} never streamed as {sync_state}");
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &self.stop_command()])
            .status();
    }
}

/// pgbouncer in transaction pooling mode in front of one database.
pub struct Pgbouncer {
    pub port: u16,
    directory: PathBuf,
}

impl Pgbouncer {
    /// `None` when pgbouncer is not installed.
    pub fn transaction_mode(
        upstream_port: u16,
        database: &str,
        server_connections: u32,
    ) -> Option<Self> {
        let binary = PathBuf::from("/usr/sbin/pgbouncer");
        if !binary.exists() {
            return None;
        }
        let directory = own_directory("pgbouncer");
        let port = free_port();
        let pid_file = directory.join("pgbouncer.pid");
        std::fs::write(
            directory.join("pgbouncer.ini"),
            format!(
                "[databases]\n{database} = host=127.0.0.1 port={upstream_port} dbname={database}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
                 pool_mode = transaction\ndefault_pool_size = {server_connections}\n\
                 max_client_conn = 500\npidfile = {}\nlogfile = {}\n",
                path(&directory.join("users.txt")),
                path(&pid_file),
                path(&directory.join("log")),
            ),
        )
        .expect("pgbouncer.ini is written");
        std::fs::write(directory.join("users.txt"), "\"postgres\" \"\"\n")
            .expect("users.txt is written");
        register_cleanup(format!(
            "kill -9 $(cat {} 2>/dev/null) >/dev/null 2>&1; rm -rf {}",
            path(&pid_file),
            path(&directory)
        ));
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:postgres", path(&directory)]));
        }
        let bouncer = Self { port, directory };
        bouncer.start();
        Some(bouncer)
    }

    pub fn start(&self) {
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", "/usr/sbin/pgbouncer"]);
            command
        } else {
            Command::new("/usr/sbin/pgbouncer")
        };
        run(command.args(["-d", path(&self.directory.join("pgbouncer.ini"))]));
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("pgbouncer did not listen on {}", self.port);
    }

    pub fn stop(&self) {
        let pid_file = self.directory.join("pgbouncer.pid");
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "kill -9 $(cat {} 2>/dev/null) >/dev/null 2>&1",
                    path(&pid_file)
                ),
            ])
            .status();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                let _ = std::fs::remove_file(&pid_file);
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
