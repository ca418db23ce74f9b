//! Shared helpers for the end-to-end tests: a real `finpool up` process on a
//! random port with a temporary data dir, tokens, and clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use finpool_api::{Role, SigningKey};
use finpool_cli::client::Clients;
use finpool_domain::Name;
use finpool_proto::v1 as pb;

/// A small simulated pool: two A100 nodes (4 + 2 cards) and one L4 node.
pub const TEST_POOL: &str = r#"
[[gpu_classes]]
name = "A100"
memory_mib = 81920

[[gpu_classes]]
name = "L4"
memory_mib = 24576

[[nodes]]
name = "node-a"
cpu_milli = 32000
memory_mib = 131072
labels = { location = "test-dc-1" }
gpus = { class = "A100", count = 4 }

[[nodes]]
name = "node-b"
cpu_milli = 16000
memory_mib = 65536
labels = { location = "test-dc-1" }
gpus = { class = "A100", count = 2 }

[[nodes]]
name = "node-l4"
cpu_milli = 16000
memory_mib = 65536
labels = { location = "test-dc-2" }
gpus = { class = "L4", count = 2 }
"#;

/// A running `finpool up`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `finpool up` on `data_dir` (with [`TEST_POOL`]) and waits
    /// until it listens.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    /// As [`Server::start`], with more `finpool up` arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// As [`Server::start_with`], with more variables in the server's
    /// environment.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let pool = data_dir.join("pool.toml");
        if !pool.exists() {
            std::fs::create_dir_all(data_dir).unwrap();
            std::fs::write(&pool, TEST_POOL).unwrap();
        }
        let mut child = Command::new(finpool_bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--stop-grace",
                "1s",
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--pool")
            .arg(&pool)
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env_remove("FINPOOL_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting finpool up");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("finpool is serving on ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("finpool up did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn token(&self, role: Role, tenant: Option<&str>) -> String {
        token_for(&self.data_dir, role, tenant, Duration::from_secs(3600))
    }

    pub async fn client(&self, token: &str) -> Clients {
        Clients::connect(&self.addr, Some(token)).await.unwrap()
    }

    pub async fn operator(&self) -> Clients {
        self.client(&self.token(Role::Operator, None)).await
    }

    pub async fn tenant(&self, id: &str) -> Clients {
        self.client(&self.token(Role::Tenant, Some(id))).await
    }

    /// A REST request to `path` with `token` (if any).
    pub fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = http_client().request(method, format!("{}{path}", self.addr));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Where `/metrics` is served, as `up` announced it.
    pub async fn metrics_url(&self) -> String {
        for _ in 0..100 {
            if let Some(url) = self
                .logs()
                .lines()
                .find_map(|l| l.strip_prefix("metrics: "))
            {
                return url.trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("finpool up announced no metrics address:\n{}", self.logs());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A store backend for tests that must hold on both.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// A fresh database of its own on the test PostgreSQL server.
    Postgres {
        base: String,
        url: String,
    },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// Starts `finpool up` on this backend.
    pub fn start(&self, data_dir: &Path, extra: &[&str]) -> Server {
        match self {
            Backend::Sqlite => Server::start_with(data_dir, extra),
            Backend::Postgres { url, .. } => {
                let mut args = vec!["--database-url", url.as_str()];
                args.extend_from_slice(extra);
                Server::start_with(data_dir, &args)
            }
        }
    }

    /// Drops a PostgreSQL test database (best effort).
    pub async fn cleanup(&self) {
        if let Backend::Postgres { base, url } = self {
            finpool_store::testing::drop_postgres_database(base, url).await;
        }
    }
}

/// SQLite, plus PostgreSQL when `FINPOOL_TEST_DATABASE_URL` names a server
/// (CI sets it and fails without it; a plain local run prints a skip line).
pub async fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    match std::env::var(finpool_store::testing::TEST_DATABASE_URL_VAR) {
        Ok(base) => {
            let url = finpool_store::testing::fresh_postgres_database(&base)
                .await
                .expect("FINPOOL_TEST_DATABASE_URL is set but PostgreSQL is unreachable");
            all.push(Backend::Postgres { base, url });
        }
        Err(_) => eprintln!(
            "postgres half skipped: set FINPOOL_TEST_DATABASE_URL to run it (.ci/run does)"
        ),
    }
    all
}

/// The `finpool` binary under test: this build's, or `FINPOOL_TEST_BIN`
/// (say, a release build, for timings).
pub fn finpool_bin() -> PathBuf {
    std::env::var_os("FINPOOL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_finpool")))
}

/// An HTTP client for the REST tests (one per call: each test has its
/// own runtime, and pooled connections belong to one).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn token_for(data_dir: &Path, role: Role, tenant: Option<&str>, ttl: Duration) -> String {
    let key = SigningKey::load(data_dir).unwrap();
    let tenant = tenant.map(|t| Name::parse("tenant", t).unwrap());
    key.issue("test", role, tenant.as_ref(), ttl, now_seconds())
        .unwrap()
}

/// Creates a tenant with one A100 quota.
pub async fn create_tenant(op: &mut Clients, id: &str, guaranteed: i64, limit: i64) {
    op.tenants
        .create_tenant(pb::CreateTenantRequest {
            id: id.into(),
            display_name: id.into(),
            quotas: [(
                "A100".to_owned(),
                pb::Quota {
                    guaranteed,
                    limit,
                    ..Default::default()
                },
            )]
            .into(),
            weight: 1,
            isolation: 0,
        })
        .await
        .unwrap();
}

/// A job running `sh -c script` on `gpu`.
pub fn shell_job(name: &str, gpu: pb::gpu_request::Kind, script: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: name.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        resources: Some(pb::Resources {
            gpu: Some(pb::GpuRequest { kind: Some(gpu) }),
            gpu_classes: vec![],
            cpu_milli: 500,
            memory_mib: 256,
        }),
        ..Default::default()
    }
}

pub fn whole(n: i64) -> pb::gpu_request::Kind {
    pb::gpu_request::Kind::WholeGpus(n)
}

pub fn share(milli: i64) -> pb::gpu_request::Kind {
    pb::gpu_request::Kind::Share(pb::GpuShare {
        milli,
        memory_mib: 1024,
    })
}

pub async fn submit(c: &mut Clients, spec: pb::JobSpec) -> pb::Job {
    c.jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

pub fn is_terminal(state: i32) -> bool {
    [
        pb::JobState::Succeeded,
        pb::JobState::Failed,
        pb::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// Every job the client may see (all pages).
pub async fn list_all(c: &mut Clients) -> Vec<pb::Job> {
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return jobs;
        }
        token = page.next_page_token;
    }
}

/// Polls until `done` holds for the listed jobs, or panics after `timeout`.
pub async fn wait_for(
    c: &mut Clients,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[pb::Job]) -> bool,
) -> Vec<pb::Job> {
    let start = Instant::now();
    loop {
        let jobs = list_all(c).await;
        if done(&jobs) {
            return jobs;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}; jobs: {jobs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn read_logs(c: &mut Clients, id: &str) -> String {
    use tokio_stream::StreamExt;
    let mut stream = c
        .jobs
        .stream_logs(pb::StreamLogsRequest {
            id: id.into(),
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(chunk.unwrap().data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn millis(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1000 + t.nanos as i64 / 1_000_000
}
