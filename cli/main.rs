//! `finpool`: the one binary. It serves the pool (`up`), runs the demo,
//! and is the command-line client for brokerages, operators and regulators.

// The API's hot paths allocate many small, short-lived buffers (HTTP/2
// frames, protobuf and JSON): malloc and free were about a tenth of the
// submit path's profile under `finpool bench submit` with glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`; the sys crate names
/// no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before it goes back to the
/// kernel. The scheduler's working set comes back every cycle (snapshot,
/// score indexes, plan): with mimalloc's 1 s default, pages freed after one
/// cycle were purged and then faulted in again, zeroed by the kernel, in
/// the next (`finpool bench scheduler --tenants 1000` spent a tenth of its
/// time in `clear_page_erms`). 10 s is jemalloc's default decay. An
/// operator's `MIMALLOC_PURGE_DELAY` wins.
const PURGE_DELAY_MS: std::os::raw::c_long = 10_000;

fn main() -> ExitCode {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one allocator option, before any other thread runs
        // (mimalloc's option setters are not thread-safe).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    let cli = finpool_cli::args::Cli::parse();
    // A watch (`job list -w`) notices a reader that left and ends with 0.
    if !finpool_cli::is_server(&cli.command) && !finpool_cli::is_watch(&cli.command) {
        // `finpool job list -o json | head`: a reader that leaves is not an
        // error; die quietly of SIGPIPE, as Unix tools do. (Sockets are
        // written with MSG_NOSIGNAL, so this reaches only stdout/stderr.)
        // SAFETY: setting a signal's disposition to its default, once, before
        // any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
        Err(e) => match e.downcast_ref::<finpool_cli::Outcome>() {
            Some(outcome) => {
                eprintln!("{}", outcome.message);
                ExitCode::from(outcome.code)
            }
            None => {
                eprintln!("error: {}", finpool_cli::describe_error(&e));
                ExitCode::FAILURE
            }
        },
    }
}
