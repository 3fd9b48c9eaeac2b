//! A throwaway PostgreSQL 15 cluster with `email_accounts` preloaded.

use super::{free_port, run_directory, run_script, wait_until};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Postgres {
    pub port: u16,
    directory: PathBuf,
    // Dropped last: removes the data directory after the server stopped.
    _root: Option<tempfile::TempDir>,
}

impl Postgres {
    /// Starts a new cluster; `settings` are extra postgresql.conf lines.
    pub fn start(settings: &[&str]) -> Postgres {
        let root = run_directory("postgres");
        let port = free_port();
        let directory = root.path().join("cluster");
        let mut arguments = vec!["start".to_owned(), path_text(&directory), port.to_string()];
        arguments.extend(settings.iter().map(|setting| setting.to_string()));
        run_script("postgres.sh", &arguments.iter().map(String::as_str).collect::<Vec<_>>());
        Postgres { port, directory, _root: Some(root) }
    }

    /// Starts a streaming hot standby of this cluster, in this cluster's run directory.
    pub fn start_standby(&self) -> Postgres {
        let port = free_port();
        let directory = self.directory.with_file_name(format!("standby-{port}"));
        run_script(
            "postgres.sh",
            &["start-standby", &path_text(&directory), &port.to_string(), &self.port.to_string()],
        );
        Postgres { port, directory, _root: None }
    }

    pub fn connection_string(&self, database: &str) -> String {
        self.connection_string_as(database, "postgres")
    }

    pub fn connection_string_as(&self, database: &str, role: &str) -> String {
        format!("host=127.0.0.1 port={} user={role} dbname={database} connect_timeout=10", self.port)
    }

    pub fn connect(&self, database: &str) -> postgres::Client {
        self.connect_as(database, "postgres")
    }

    pub fn connect_as(&self, database: &str, role: &str) -> postgres::Client {
        postgres::Client::connect(&self.connection_string_as(database, role), postgres::NoTls)
            .unwrap_or_else(|error| panic!("cannot connect to {database} as {role} on port {}: {error}", self.port))
    }

    /// Connects, retrying while the server restarts (e.g. after a crash).
    pub fn connect_when_ready(&self, database: &str) -> postgres::Client {
        wait_until("the server to accept connections", Duration::from_secs(60), || {
            postgres::Client::connect(&self.connection_string(database), postgres::NoTls).ok()
        })
    }

    /// After a crash: connects (again and again, as the server may still be
    /// resetting) until `check` answers `Some`; returns that connection too.
    pub fn reconnect_until<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&mut postgres::Client) -> Result<Option<T>, postgres::Error>,
    ) -> (postgres::Client, T) {
        wait_until(what, Duration::from_secs(60), || {
            let mut client = postgres::Client::connect(&self.connection_string("postgres"), postgres::NoTls).ok()?;
            let found = check(&mut client).ok()??;
            Some((client, found))
        })
    }

    pub fn stop(&self, mode: &str) {
        run_script("postgres.sh", &["stop", &path_text(&self.directory), mode]);
    }

    pub fn start_again(&self) {
        run_script("postgres.sh", &["start", &path_text(&self.directory), &self.port.to_string()]);
    }

    /// Everything the server logged so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.directory.join("server.log")).unwrap_or_default()
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(super::script("postgres.sh"))
            .args(["stop", &path_text(&self.directory), "immediate"])
            .output();
        if std::thread::panicking() {
            eprintln!("--- server log of the cluster on port {} ---\n{}", self.port, self.server_log());
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_owned()
}
