//! `finpool`: the one binary. It serves the pool (`up`), runs the demo,
//! and is the command-line client for brokerages, operators and regulators.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = finpool_cli::args::Cli::parse();
    finpool_cli::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(finpool_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", finpool_cli::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}
