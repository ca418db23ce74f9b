//! The `finpool` command line, as a library so tests can drive it.

pub mod args;
pub mod client;
pub mod commands;
pub mod demo;
pub mod output;
pub mod progress;
pub mod watch;

use std::io::IsTerminal;

use args::{Cli, Command, LogFormat, Output};

/// Whether the command is a long-running server (it logs at info, and
/// keeps Rust's ignored SIGPIPE: a peer gone is an error to handle).
pub fn is_server(command: &Command) -> bool {
    matches!(
        command,
        Command::Up(_)
            | Command::Operator(_)
            | Command::Api(_)
            | Command::Scheduler(_)
            | Command::Agent(_)
    )
}

/// Logs go to stderr, as text (coloured only on a terminal) or JSON lines;
/// `RUST_LOG` overrides the default level.
pub fn init_tracing(cli: &Cli) {
    let default = if is_server(&cli.command) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Whether the command keeps watching (`--watch`): it handles a closed
/// stdout itself and ends with exit 0, so SIGPIPE must not kill it.
pub fn is_watch(command: &Command) -> bool {
    use args::{JobCommand, NodeCommand, TenantCommand};
    match command {
        Command::Job { command, .. } => match command {
            JobCommand::List(args) => args.watch,
            JobCommand::Get { watch, .. } => *watch,
            // `job watch` is a stream too.
            JobCommand::Watch { .. } => true,
            _ => false,
        },
        Command::Node {
            command: NodeCommand::List { watch },
            ..
        } => *watch,
        Command::Tenant {
            command: TenantCommand::List { watch },
            ..
        } => *watch,
        _ => false,
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => commands::up::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Token(args) => commands::token::run(args).await,
        Command::Tenant { global, command } => commands::tenant::run(&global, command).await,
        Command::Model { global, command } => commands::model::run(&global, command).await,
        Command::Node { global, command } => commands::node::run(&global, command).await,
        Command::Job { global, command } => commands::job::run(&global, command).await,
        Command::Usage(args) => commands::usage::run(args).await,
        Command::Report { connect, command } => commands::report::run(&connect, command).await,
        Command::Price { global, command } => commands::billing::price(&global, command).await,
        Command::Invoice { global, command } => commands::billing::invoice(&global, command).await,
        Command::Period { global, command } => commands::billing::period(&global, command).await,
        Command::Simulate(args) => commands::simulate::run(args),
        Command::Bench(args) => commands::bench::run(args).await,
        Command::Crd(out) => {
            if out.output == Output::Json {
                let list = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": finpool_operator::crd::all(),
                });
                output::serialized(out.output, &list)?;
            } else {
                // The chart's crds/ holds this stream as it is.
                print!("{}", finpool_operator::crd::yaml());
            }
            Ok(())
        }
        Command::Agent(args) => commands::agent::run(args).await,
        Command::Operator(args) => commands::operator::run(args).await,
        Command::Api(args) => commands::api::run(args).await,
        Command::Scheduler(args) => commands::scheduler::run(args).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "finpool",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Audit(args) => commands::audit::run(args).await,
        Command::Openapi(out) => {
            // A document: JSON unless YAML is asked for.
            output::serialized(out.output, &finpool_api::rest::openapi::document())
        }
    }
}

/// An error for people: a gRPC status reads as its code and message.
/// A command that ran fine but reports an outcome through its exit code
/// (`job wait`, `job logs -f`): main exits with `code`, saying `message`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Outcome {
    pub code: u8,
    pub message: String,
}

pub fn describe_error(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return format!("{:?}: {}", status.code(), status.message());
    }
    format!("{e:#}")
}
