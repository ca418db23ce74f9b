//! The command line, declared with clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "finpool",
    version,
    about = "A shared GPU pool for brokerages: quotas, isolation, billing.",
    long_about = "finpool runs a multi-tenant GPU pool (`finpool up`, `finpool demo`) and is its \
                  command-line client. Client commands read the server address and a token from \
                  --addr / --token or FINPOOL_ADDR / FINPOOL_TOKEN."
)]
pub struct Cli {
    /// Logs on stderr: `text` (coloured only on a terminal) or `json` (one
    /// object per line, for log collectors).
    #[arg(long, global = true, value_enum, env = "FINPOOL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command reaches the server: only commands that call one
/// take these.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// The server's address.
    #[arg(
        long,
        global = true,
        env = "FINPOOL_ADDR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub addr: String,
    /// A bearer token (see `finpool token issue`).
    #[arg(long, global = true, env = "FINPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// How a command prints.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// `table` for people, `wide` for a table with more columns, `json` or
    /// `yaml` for scripts (JSON as the REST API returns it).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How client commands reach the server and print.
#[derive(Debug, Clone, Args)]
pub struct Global {
    #[command(flatten)]
    pub connect: Connect,
    /// `table` for people, `wide` for a table with more columns, `json` or
    /// `yaml` for scripts (JSON as the REST API returns it).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table (or a description) for people.
    Table,
    /// A table with more columns, where there are more to show.
    Wide,
    /// JSON, as the REST API returns it.
    Json,
    /// The same document as `json`, in YAML.
    Yaml,
}

impl Output {
    /// JSON or YAML: a document for scripts, not a table.
    pub fn is_document(self) -> bool {
        matches!(self, Output::Json | Output::Yaml)
    }

    /// For commands whose only output is a document (no table form):
    /// `table` and `wide` print it as JSON.
    pub fn document(self) -> Output {
        if self.is_document() {
            self
        } else {
            Output::Json
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the pool: API, scheduler, executor and store in one process.
    Up(UpArgs),
    /// Start a throwaway pool, run three brokerages' jobs on it, and summarise.
    Demo(DemoArgs),
    /// Sign API tokens with the pool's key.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Brokerages and their GPU quotas (operators).
    Tenant {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Base models cached on the pool's nodes.
    Model {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// GPU inventory and allocation.
    Node {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Submit, follow and cancel jobs.
    Job {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Metered GPU time of a tenant; with --from/--to, metered usage per
    /// tenant, class and kind over a period.
    Usage(UsageArgs),
    /// The regulator's reports (operators and regulators).
    Report {
        #[command(flatten)]
        connect: Connect,
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// The price book (operators set prices; everyone reads).
    Price {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: PriceCommand,
    },
    /// Invoices per tenant and billing period.
    Invoice {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: InvoiceCommand,
    },
    /// Billing periods: list them, close one (operators).
    Period {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: PeriodCommand,
    },
    /// Replay public traces through the scheduler.
    #[command(subcommand)]
    Simulate(SimulateCommand),
    /// Measure the scheduler's and the API's speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the REST API's OpenAPI 3 document (also served at
    /// /openapi.json): JSON, or YAML with `-o yaml`.
    Openapi(OutputArgs),
    /// Print the custom resource definitions (Tenant, BaseModel,
    /// InferenceJob) as YAML, as charts/finpool/crds/ holds them; `-o json`
    /// prints them as one JSON `List`.
    Crd(OutputArgs),
    /// Run the node agent: publish this node's GPUs (NVML) and cached
    /// models on its Node (a DaemonSet in a cluster).
    Agent(AgentArgs),
    /// Run the Kubernetes operator (in a cluster, with PostgreSQL).
    Operator(OperatorArgs),
    /// Serve the API alone (in a cluster: PostgreSQL, nodes and pod logs
    /// from Kubernetes).
    Api(ApiServeArgs),
    /// Run the in-cluster scheduler: the shared scheduling cycle over
    /// pending pods and nodes, binding as the leader of a Lease.
    Scheduler(SchedulerArgs),
    /// Print a shell completion script: `source <(finpool completion bash)`.
    Completion {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The tamper-evident audit log: export it, fetch its checkpoint and
    /// public key (regulators and operators), verify them offline.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// The system of record: jobs, tenants and the cycle's memory.
    #[arg(long, env = "FINPOOL_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The namespace of the scheduler's leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "finpool-system")]
    pub leader_election_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// SIGTERM to SIGKILL for a preempted pod (its eviction's grace).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,
    /// Assumed for jobs that set no max runtime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub default_max_runtime: Duration,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The Node to publish on: the pod's spec.nodeName (downward API).
    #[arg(long, env = "NODE_NAME", required_unless_present = "print")]
    pub node_name: Option<String>,
    /// The node's model cache: each subdirectory with a model's name is
    /// published as a cached model.
    #[arg(long, default_value = finpool_agent::run::DEFAULT_MODEL_CACHE)]
    pub model_cache: PathBuf,
    /// How often the cards' use is sampled and published.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,
    /// How often the cards are discovered again (MIG changes, a driver
    /// that came up late); checked at each sample.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub rediscover: Duration,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Exit non-zero when the node has no usable GPU (without it: warn,
    /// serve health, look again at each rediscovery).
    #[arg(long)]
    pub require_gpu: bool,
    /// One round (discover, sample, publish), then exit.
    #[arg(long)]
    pub discover_once: bool,
    /// With --discover-once: print the cards and the labels and
    /// annotations a publish would apply, as JSON; apply nothing.
    #[arg(long, requires = "discover_once")]
    pub print: bool,
    /// With --print: a fake NVLink node of N H100s instead of NVML (demos).
    #[arg(long, hide = true, requires = "print", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub fake_gpus: Option<u32>,
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The system of record: jobs, tenants and usage live there.
    #[arg(long, env = "FINPOOL_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The namespace of the operator's leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "finpool-system")]
    pub leader_election_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Where the nodes cache base models (mounted read-only into jobs).
    #[arg(long, default_value = finpool_operator::build::DEFAULT_MODEL_CACHE)]
    pub model_cache: String,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Placement decisions per second and their latency, finpool against best-fit.
    Scheduler(BenchSchedulerArgs),
    /// Authenticated, durable job submissions per second through a real
    /// server, against the same database's raw single-row insert rate.
    Submit(BenchSubmitArgs),
    /// The in-cluster scheduler's index: Nodes and pending Pods applied
    /// per second (against a plain map), and the time to a ready snapshot.
    Index(BenchIndexArgs),
    /// Closing a billing period at scale on SQLite: meter a month of job
    /// runs, then close it, against the raw insert rate of the same rows.
    Close(BenchCloseArgs),
}

#[derive(Debug, Args)]
pub struct BenchCloseArgs {
    /// Tenants the month's jobs are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub tenants: usize,
    /// Jobs (one run each) over the month.
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: usize,
    /// Seeds the draw of the jobs' tenants, sizes and times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct BenchIndexArgs {
    /// Nodes applied to the index.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Pending Pods applied to the index.
    #[arg(long, default_value_t = 100_000)]
    pub pods: usize,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct BenchSubmitArgs {
    /// The database behind the server: the embedded SQLite, or PostgreSQL
    /// (with --database-url).
    #[arg(long, value_parser = ["sqlite", "postgres"], default_value = "sqlite")]
    pub db: String,
    /// For --db postgres: a server URL ending in a database name; the
    /// bench creates a scratch database beside it and drops it after.
    #[arg(long, env = "FINPOOL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Concurrent clients, each its own tenant and gRPC connection.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Submits in all.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Rows for the raw insert baseline.
    #[arg(long, default_value_t = 2_000)]
    pub raw_rows: usize,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct BenchSchedulerArgs {
    /// Nodes in the simulated pool.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// GPUs on each node.
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: u32,
    /// Tasks in the queue, placed one after another.
    #[arg(long, default_value_t = 100_000)]
    pub pending: usize,
    /// Draw the queue from this openb pod list instead of the built-in mix.
    #[arg(long, env = "FINPOOL_OPENB_PODS")]
    pub pods: Option<PathBuf>,
    /// Spread the queue over this many tenants, each with a guarantee
    /// and a limit, so that quotas and isolation are checked on every
    /// decision; 0 places tenant-less work.
    #[arg(long, default_value_t = 0)]
    pub tenants: usize,
    /// Jobs that arrive per scheduling cycle (each cycle rebuilds its
    /// snapshot of the pool and its running jobs, as every driver does).
    #[arg(long, default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch: usize,
    /// Seeds the queue's draw (and random-fit).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Timed runs per policy, the policies taking turns; each policy's
    /// median run is reported (this machine's speed drifts between runs).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub runs: usize,
    /// Untimed runs per policy before the timed ones, so that no policy
    /// pays for the process's first touch of its memory (a long-running
    /// scheduler pays it once, at start).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum SimulateCommand {
    /// The FGD paper's protocol on Alibaba's cluster-trace-gpu-v2023 (openb).
    Openb(SimulateOpenbArgs),
    /// Recount a --placements file independently of the simulator.
    Check(SimulateCheckArgs),
    /// Alibaba's GenAI LoRA inference trace: base-model locality and fairness.
    Genai(SimulateGenaiArgs),
    /// Tenants with weights and guarantees competing over time (a scenario file).
    Fairness(SimulateFairnessArgs),
}

#[derive(Debug, Args)]
pub struct SimulateGenaiArgs {
    /// lora_request_trace.csv
    #[arg(long, env = "FINPOOL_GENAI_TRACE")]
    pub trace: PathBuf,
    /// basemodel_update_latency_anon.csv
    #[arg(long, env = "FINPOOL_GENAI_LOAD_LATENCY")]
    pub load_latency: PathBuf,
    /// The pool (a pool file, as for `finpool up --pool`).
    #[arg(long)]
    pub pool: PathBuf,
    /// Offered load(s), comma-separated (e.g. 0.5,0.7,0.9).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9")]
    pub load: Vec<f64>,
    /// Policies (comma-separated); both by default.
    #[arg(long, value_delimiter = ',', default_value = "finpool,least-loaded")]
    pub policy: Vec<String>,
    /// Seeds the draw of request arrivals.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// finpool's fair-share half-life in seconds (the platform default).
    #[arg(long, default_value_t = finpool_scheduler::tenants::DEFAULT_FAIR_SHARE_HALF_LIFE_S as f64)]
    pub half_life_s: f64,
    /// finpool's order among borrowing jobs of tenants with equal fair
    /// share: response-ratio (highest (wait + run time) ÷ run time next)
    /// or age (first come, first served).
    #[arg(long, default_value = "response-ratio")]
    pub borrow_order: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SimulateFairnessArgs {
    /// A scenario file (TOML); see examples/fairness-scenario.toml.
    #[arg(long)]
    pub scenario: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SimulateOpenbArgs {
    /// The node list, e.g. openb_node_list_gpu_node.csv.
    #[arg(long, env = "FINPOOL_OPENB_NODES")]
    pub nodes: PathBuf,
    /// A pod list, e.g. openb_pod_list_default.csv.
    #[arg(long, env = "FINPOOL_OPENB_PODS")]
    pub pods: PathBuf,
    /// Policies to run, in one invocation (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "finpool,fgd,bestfit,random"
    )]
    pub policy: Vec<String>,
    /// Seeds: a range `42..51` (inclusive) or a list `42,43`.
    #[arg(long, default_value = "42..51")]
    pub seeds: String,
    /// Inflate the workload to this multiple of GPU capacity.
    #[arg(long, default_value_t = 1.3)]
    pub tune: f64,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Draw every policy's allocation curve into this file: .svg or .png.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write every pod's placement per seed and policy to this CSV file.
    #[arg(long)]
    pub placements: Option<PathBuf>,
    /// Seeds run in parallel (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SimulateCheckArgs {
    /// The node list the placements were made on.
    #[arg(long, env = "FINPOOL_OPENB_NODES")]
    pub nodes: PathBuf,
    /// A placements file written by `simulate openb --placements`.
    #[arg(long)]
    pub placements: PathBuf,
    /// Recount the state when arrivals first reached this percent of the
    /// GPU capacity (as the simulator reads its curve), not the end.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub at: Option<u64>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Holds the database, the signing key, job logs and the model cache.
    #[arg(long, default_value = "./finpool-data")]
    pub data_dir: PathBuf,
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, apart from
    /// the API port (per-tenant figures are for the pool's operators);
    /// `off` for none.
    #[arg(long, env = "FINPOOL_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// A pool file (TOML) declaring GPU classes and nodes. Without one:
    /// the GPUs NVML finds, else the built-in example pool.
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// PostgreSQL instead of the embedded SQLite.
    #[arg(long, env = "FINPOOL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,
    /// Max runtime for jobs that set none.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub default_max_runtime: Duration,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Base-model locality: with `on`, a job may hold out for a card that
    /// already holds its model, for at most the model's load time (times
    /// --locality-wait-factor); with `off`, jobs take any card at once.
    #[arg(long, value_enum, default_value_t = Locality::On)]
    pub locality: Locality,
    /// How many of its model's load times a job may wait for a warm card
    /// (or for balance between models) while a usable card is idle.
    #[arg(long, default_value_t = 1.0)]
    pub locality_wait_factor: f64,
    /// Disk-to-GPU bandwidth of the nodes, for models registered without
    /// a load time and not yet measured: load time = size ÷ bandwidth.
    #[arg(long, default_value_t = finpool_scheduler::cycle::DEFAULT_NODE_BANDWIDTH_MIB_S)]
    pub node_bandwidth_mib_s: u64,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The API's limits and token keys, as `up` and `api` take them.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Requests per second each tenant (or operator/regulator) may make,
    /// sustained; 0 turns the limit off.
    #[arg(long, default_value_t = 200.0)]
    pub rate_limit: f64,
    /// Requests a caller may make in a burst above the sustained rate.
    #[arg(long, default_value_t = 400.0)]
    pub rate_burst: f64,
    /// Requests per second from one source address without a valid token
    /// (health probes, reflection, failed logins); 0 turns the limit off.
    #[arg(long, default_value_t = finpool_api::RateLimit::ANONYMOUS.per_second)]
    pub anonymous_rate_limit: f64,
    /// The most jobs one tenant may have pending.
    #[arg(long, default_value_t = finpool_api::state::DEFAULT_PENDING_CAP)]
    pub pending_cap: u32,
    /// The most job watches and log follows one caller (a tenant's callers
    /// together) may have open at once.
    #[arg(long, default_value_t = finpool_api::streams::DEFAULT_STREAMS_PER_CALLER)]
    pub streams_per_caller: u32,
    /// The most streams open on the server, all callers together (also at
    /// most half the file descriptors the process may hold).
    #[arg(long, default_value_t = finpool_api::streams::DEFAULT_STREAMS_TOTAL)]
    pub streams_total: u32,
    /// The longest-lived tenant token the server accepts.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_tenant_token_ttl: Duration,
    /// The longest-lived operator or regulator token the server accepts.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    pub max_staff_token_ttl: Duration,
    /// Usage is metered in intervals of this length, aligned to UTC (whole
    /// seconds that divide a day).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub meter_interval: Duration,
    /// Billing periods: `month` (calendar months, UTC) or a length that is
    /// a multiple of --meter-interval.
    #[arg(long, default_value = "month")]
    pub billing_period: String,
    /// An interval is metered this long after it ends, so that runs being
    /// written as it ended are in.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub meter_settle: Duration,
    /// How often the server runs a metering pass (`finpool up`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub meter_every: Duration,
    /// A JWKS file with more token keys (an external OIDC issuer's), named
    /// by `kid`; tokens signed with them must carry --jwks-issuer.
    #[arg(long, requires = "jwks_issuer")]
    pub jwks: Option<PathBuf>,
    /// The `iss` of tokens signed with the --jwks keys.
    #[arg(long)]
    pub jwks_issuer: Option<String>,
    /// How often the audit log's checkpoint is signed (when the log grew;
    /// also at shutdown).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub audit_checkpoint_every: Duration,
}

/// `finpool api`: the API alone, in a cluster.
#[derive(Debug, Args)]
pub struct ApiServeArgs {
    /// Holds the signing key (`jwt-signing-key.pk8`, mounted read-only);
    /// nothing is written there.
    #[arg(long, default_value = "/var/lib/finpool")]
    pub data_dir: PathBuf,
    /// Where the API listens.
    #[arg(long, default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// The system of record (PostgreSQL).
    #[arg(long, env = "FINPOOL_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The longest max runtime a job may ask for.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_runtime_cap: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (apart from
    /// the API port: per-tenant figures are for the pool's operators).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub api: ApiArgs,
    /// The audit log's Ed25519 signing key (PKCS#8 DER, a mounted Secret
    /// shared by every API replica); default: `audit-signing-key.pk8` in
    /// --data-dir. It must exist: nothing is written in a cluster.
    #[arg(long, env = "FINPOOL_AUDIT_KEY")]
    pub audit_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Locality {
    On,
    Off,
}

/// How jobs are isolated (see the README's "Job sandbox").
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// `required`: every job runs in a bubblewrap sandbox as its tenant's
    /// uid, and a host that cannot do that refuses to start.
    /// `best-effort`: as much of it as the host allows, with warnings.
    /// `off`: jobs run as the server's user.
    #[arg(long, default_value = "required", value_name = "MODE")]
    pub sandbox: finpool_standalone::SandboxMode,
    /// The uids (and gids) tenants' jobs run as, one per tenant.
    #[arg(long, default_value_t = finpool_standalone::UidRange::default(), value_name = "START:COUNT")]
    pub sandbox_uids: finpool_standalone::UidRange,
    /// The most processes and threads one job may have (its cgroup's
    /// pids.max).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub sandbox_pids_max: u32,
    /// `host`: jobs share the host's network (they can reach whatever
    /// listens there, the API included). `none`: a network namespace with
    /// loopback only.
    #[arg(long, default_value = "host", value_parser = ["host", "none"])]
    pub sandbox_network: String,
}

impl SandboxArgs {
    pub fn config(&self) -> finpool_standalone::SandboxConfig {
        finpool_standalone::SandboxConfig {
            mode: self.sandbox,
            uids: self.sandbox_uids,
            pids_max: self.sandbox_pids_max,
            network: self.sandbox_network == "host",
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's data dir here instead of a temporary one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run on this pool file instead of the built-in example pool.
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// The demo's jobs are its own, so it sandboxes them as far as the
    /// host allows (`best-effort`) unless told otherwise.
    #[arg(long, default_value = "best-effort", value_name = "MODE")]
    pub sandbox: finpool_standalone::SandboxMode,
    /// With `json` or `yaml`, the narrative goes to stderr and stdout gets
    /// one document: every job and the summary's figures.
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign a token with the key in the data dir (created by `finpool up`).
    Issue(TokenIssueArgs),
    /// Refuse every token of a subject issued before now (or --before):
    /// for a leaked token, or someone who left.
    Revoke {
        /// The tokens' subject (`sub`), e.g. tenant:alpha.
        subject: String,
        /// Revoke tokens issued before this RFC 3339 time instead of now.
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        global: Global,
    },
}

#[derive(Debug, Args)]
pub struct TokenIssueArgs {
    /// Who the token speaks for: a tenant (its own jobs), an operator
    /// (the pool), or a regulator (reads everything, changes nothing).
    #[arg(long, value_parser = ["tenant", "operator", "regulator"])]
    pub role: String,
    /// The tenant a tenant-role token is bound to.
    #[arg(long)]
    pub tenant: Option<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Who the token is for (its `sub`); defaults to the role and tenant.
    #[arg(long)]
    pub subject: Option<String>,
    /// The server's data dir, which holds the signing key.
    #[arg(long, default_value = "./finpool-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a brokerage.
    Create(TenantCreateArgs),
    /// List brokerages.
    List {
        /// Keep watching: print the list again whenever it changes
        /// (polled every 2 s); Ctrl-C ends.
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one brokerage.
    Get {
        /// The brokerage's id.
        id: String,
    },
    /// Set a brokerage's quota on one GPU class.
    Quota(TenantQuotaArgs),
    /// Suspend a brokerage: its tokens are refused and its pending jobs
    /// wait (running jobs keep running) until it is resumed.
    Suspend {
        /// The brokerage's id.
        id: String,
        /// Why; kept with the tenant and shown to operators.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended brokerage.
    Resume {
        /// The brokerage's id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TenantCreateArgs {
    /// The brokerage's id (a label: lowercase letters, digits, dashes).
    pub id: String,
    /// Its name for people (default: the id).
    #[arg(long)]
    pub display_name: Option<String>,
    /// CLASS=GUARANTEED:LIMIT[:LENDING_LIMIT], repeatable (e.g. A100-80G=2:4).
    #[arg(long = "quota")]
    pub quotas: Vec<String>,
    /// Share of idle capacity relative to other tenants.
    #[arg(long, default_value_t = 1)]
    pub weight: i64,
    /// `exclusive`: whole GPUs only; `shared-within-tenant`: fractional
    /// shares beside its own jobs only; `mig`: hardware partitions, which
    /// may sit beside other tenants on one card.
    #[arg(long, value_parser = ["exclusive", "shared-within-tenant", "mig"], default_value = "shared-within-tenant")]
    pub isolation: String,
}

#[derive(Debug, Args)]
pub struct TenantQuotaArgs {
    /// The brokerage's id.
    pub id: String,
    /// The GPU class the quota is for (e.g. A100-80G).
    #[arg(long)]
    pub class: String,
    /// GPUs always available to the tenant.
    #[arg(long)]
    pub guaranteed: i64,
    /// The most GPUs it may hold in all.
    #[arg(long, conflicts_with = "borrowing_limit")]
    pub limit: Option<i64>,
    /// How far above its guarantee it may borrow.
    #[arg(long)]
    pub borrowing_limit: Option<i64>,
    /// The most of its idle guarantee others may borrow (default: all).
    #[arg(long)]
    pub lending_limit: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a base model.
    Register(ModelRegisterArgs),
    /// List base models.
    List,
}

#[derive(Debug, Args)]
pub struct ModelRegisterArgs {
    /// The model's name (a label: lowercase letters, digits, dashes).
    pub name: String,
    /// Size of its weights on disk, in MiB.
    #[arg(long)]
    pub size_mib: i64,
    /// The least GPU memory a card needs to run it, in MiB.
    #[arg(long, default_value_t = 0)]
    pub min_gpu_memory_mib: i64,
    /// How long loading it onto a card takes (e.g. 12s). Unset: the
    /// scheduler measures loads, or divides its size by the node bandwidth.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub load_time: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Nodes, their GPUs and what holds them.
    List {
        /// Keep watching: print the nodes again whenever they change
        /// (polled every 2 s); Ctrl-C ends.
        #[arg(short, long)]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job, from flags or from a YAML file (-f).
    Submit(Box<JobSubmitArgs>),
    /// List jobs, newest first.
    List(JobListArgs),
    /// Show a job with its history.
    Get {
        /// The job: its id, a unique prefix or suffix of it, or its unique name.
        id: String,
        /// Keep watching: print the job again at each of its state
        /// changes (with -o json, one JSON document per line); Ctrl-C ends.
        #[arg(short, long)]
        watch: bool,
    },
    /// Cancel a job.
    Cancel {
        /// The job: its id, a unique prefix or suffix of it, or its unique name.
        id: String,
        /// Why, for the job's history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print a job's output; -f follows it until the job ends, and exits
    /// with the job's outcome (see `finpool job wait`).
    Logs {
        /// The job: its id, a unique prefix or suffix of it, or its unique name.
        id: String,
        /// Keep printing until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stream job state changes (all you may see, or one job).
    Watch {
        /// Only this job.
        id: Option<String>,
    },
    /// Wait until a job ends; the exit code is its outcome: 0 succeeded,
    /// 3 failed, 4 cancelled, 5 still running at --timeout.
    Wait {
        /// The job: its id, a unique prefix or suffix of it, or its unique name.
        id: String,
        /// Give up after this long (`30s`, `2h`); forever by default.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

#[derive(Debug, Args)]
pub struct JobSubmitArgs {
    /// A YAML job spec (the fields of finpool.v1.JobSpec). Flags override it.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// The job's name (unique names let commands name the job by it).
    #[arg(long)]
    pub name: Option<String>,
    /// Base model to mount (FINPOOL_MODEL_PATH).
    #[arg(long)]
    pub model: Option<String>,
    /// Whole GPUs.
    #[arg(long, conflicts_with_all = ["gpu_milli", "gpu_memory_mib"])]
    pub gpus: Option<i64>,
    /// A fractional GPU share, in milli-GPU.
    #[arg(long)]
    pub gpu_milli: Option<i64>,
    /// GPU memory for a fractional share.
    #[arg(long)]
    pub gpu_memory_mib: Option<i64>,
    /// Allowed GPU classes (repeatable).
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// CPU, in milli-cores.
    #[arg(long)]
    pub cpu_milli: Option<i64>,
    /// Memory, in MiB.
    #[arg(long)]
    pub memory_mib: Option<i64>,
    /// Order within the tenant: higher goes first, and may preempt its
    /// lower-priority jobs.
    #[arg(long)]
    pub priority: Option<i32>,
    /// e.g. 30s, 10m, 2h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_runtime: Option<Duration>,
    /// A submit again with the same key returns the first job instead of
    /// creating another.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// KEY=VALUE (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Run again from the start if the server restarts under the job.
    #[arg(long)]
    pub requeue_on_restart: bool,
    /// The program and its arguments (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct JobListArgs {
    /// Only jobs in this state (repeatable).
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Operators and regulators: only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Jobs per page (the server caps it).
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// Follow every page, not just the first.
    #[arg(long)]
    pub all: bool,
    /// Keep watching: print the list again whenever a job you may see
    /// changes state (with -o json, one JSON document per line); Ctrl-C ends.
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Per-tenant GPU time by class, jobs and charges; guarantee
    /// compliance; preemptions; the pool's capacity split into used, held
    /// idle and idle; denied attempts; node locations; the audit
    /// checkpoint. A range of closed billing periods gives the same bytes
    /// every time.
    Usage(ReportUsageArgs),
}

#[derive(Debug, Args)]
pub struct ReportUsageArgs {
    /// Start of the range, RFC 3339 (`2026-11-01T00:00:00Z`).
    #[arg(long)]
    pub from: String,
    /// End of the range (exclusive), RFC 3339.
    #[arg(long)]
    pub to: String,
    /// json, csv or html (one self-contained page with SVG charts).
    #[arg(long, value_parser = ["json", "csv", "html"], default_value = "json")]
    pub format: String,
    /// Write the report here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Operators and regulators may name a tenant (every tenant's usage
    /// when omitted); tenants get their own.
    #[arg(long)]
    pub tenant: Option<String>,
    /// RFC 3339 start of a period (e.g. 2026-03-01T00:00:00Z): metered
    /// usage per class and kind from then.
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339 end of the period (default: now).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Debug, Subcommand)]
pub enum PriceCommand {
    /// Add a price version (operators): in effect from --effective-from
    /// until the next version; prices are never edited.
    Set(PriceSetArgs),
    /// Every price version.
    List,
}

#[derive(Debug, Args)]
pub struct PriceSetArgs {
    /// gpu_used, gpu_held_idle, cpu or memory.
    #[arg(long)]
    pub kind: String,
    /// The GPU class (for gpu_used and gpu_held_idle).
    #[arg(long = "class", default_value = "")]
    pub gpu_class: String,
    /// Fen per GPU-hour (GPU kinds), core-hour (cpu) or GiB-hour (memory).
    #[arg(long)]
    pub rate_fen: i64,
    /// RFC 3339, a metering interval boundary (e.g. 2026-04-01T00:00:00Z).
    #[arg(long)]
    pub effective_from: String,
}

#[derive(Debug, Subcommand)]
pub enum InvoiceCommand {
    /// Invoices: a tenant's own; others may filter by --tenant.
    List {
        /// Operators and regulators: only this tenant's invoices.
        #[arg(long)]
        tenant: Option<String>,
        /// A period's label, such as 2026-03.
        #[arg(long)]
        period: Option<String>,
    },
    /// One invoice with its lines.
    Show {
        /// The invoice's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeriodCommand {
    /// Billing periods on record, and the current one.
    List,
    /// Meter and close a period (operators): invoices, journal entries,
    /// and the period frozen.
    Close {
        /// RFC 3339: the period holding this time (default: the last
        /// period that has ended).
        #[arg(long)]
        at: Option<String>,
    },
    /// Run a metering pass now (operators).
    Meter,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the log as JSON lines, one signed canonical entry per line:
    /// from the API (a regulator's or operator's token), or read from the
    /// database with --data-dir / --database-url.
    Export(AuditOutArgs),
    /// Write the latest signed checkpoint (API, --data-dir or --database-url).
    Checkpoint(AuditOutArgs),
    /// Write the log's public key (PEM): from the key in --data-dir or
    /// --key, or as the API reports it (pin one obtained out of band).
    PublicKey(AuditKeyArgs),
    /// Check an export against a checkpoint (and that it extends an older
    /// one), with no database: prints OK with the tree size and root, or
    /// fails naming the first bad sequence number.
    Verify(AuditVerifyArgs),
}

/// Where `finpool audit` reads the log: the API unless one of these.
#[derive(Debug, Clone, Args)]
pub struct AuditSource {
    /// Read the SQLite database of this data dir directly.
    #[arg(long, conflicts_with = "database_url")]
    pub data_dir: Option<PathBuf>,
    /// Read this PostgreSQL database directly.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditOutArgs {
    #[command(flatten)]
    pub source: AuditSource,
    #[command(flatten)]
    pub connect: Connect,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct AuditKeyArgs {
    /// The data dir holding `audit-signing-key.pk8`.
    #[arg(long, conflicts_with = "key")]
    pub data_dir: Option<PathBuf>,
    /// The signing key itself (PKCS#8 DER).
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub connect: Connect,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The export (`finpool audit export`).
    #[arg(long)]
    pub export: PathBuf,
    /// The checkpoint to verify against.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The log's public key (PEM).
    #[arg(long)]
    pub public_key: PathBuf,
    /// A checkpoint taken earlier: the newer one must extend it.
    #[arg(long)]
    pub older_checkpoint: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The command line is consistent (no clashing flags or short names).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    let name = match arg.get_long() {
                        Some(long) => format!("--{long}"),
                        None => format!("<{id}>"),
                    };
                    missing.push(format!("{path} {name}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "finpool", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without help text:\n{}",
            missing.join("\n")
        );
    }

    /// --addr and --token only where a server is called; -o wherever
    /// something is printed.
    #[test]
    fn client_flags_only_on_client_commands() {
        fn has(cmd: &clap::Command, path: &[&str], long: &str) -> bool {
            let mut cmd = cmd.clone();
            cmd.build();
            let mut at = &cmd;
            for name in path {
                at = at.find_subcommand(name).expect(name);
            }
            at.get_arguments().any(|a| a.get_long() == Some(long))
        }
        let cli = Cli::command();
        for path in [
            &["up"][..],
            &["demo"],
            &["simulate", "openb"],
            &["bench", "scheduler"],
            &["crd"],
            &["openapi"],
            &["completion"],
            &["token", "issue"],
            &["audit", "verify"],
            &["agent"],
        ] {
            for flag in ["addr", "token"] {
                assert!(!has(&cli, path, flag), "{path:?} takes --{flag}");
            }
        }
        for path in [
            &["job", "list"][..],
            &["job", "get"],
            &["tenant", "create"],
            &["node", "list"],
            &["usage"],
            &["report", "usage"],
            &["price", "list"],
            &["invoice", "show"],
            &["period", "close"],
            &["token", "revoke"],
            &["audit", "export"],
        ] {
            for flag in ["addr", "token"] {
                assert!(has(&cli, path, flag), "{path:?} lacks --{flag}");
            }
        }
        for path in [
            &["job", "list"][..],
            &["demo"],
            &["simulate", "fairness"],
            &["bench", "submit"],
            &["bench", "close"],
        ] {
            assert!(has(&cli, path, "output"), "{path:?} lacks -o");
        }
    }
}
