//! The README's Quickstart, run exactly as written: the block is taken
//! from README.md and run by bash in a fresh directory, where
//! `./target/release/finpool` is the binary under test and `cargo` does
//! nothing (the binary is built already). Each step's output is checked.

mod common;

use std::path::Path;
use std::process::Command;

use common::finpool_bin;

/// The first ```sh block after `heading`.
fn block_after(readme: &str, heading: &str) -> String {
    let start = readme.find(heading).expect("the heading is in the README");
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let close = rest[open..].find("```").expect("the block ends");
    rest[open..open + close].to_owned()
}

#[test]
fn the_quickstart_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let quickstart = block_after(&readme, "## Quickstart");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(finpool_bin(), dir.path().join("target/release/finpool")).unwrap();
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    // Not the block's business: stopping what it started, and where its
    // server's metrics go (another server of the suite may hold 9464).
    let script = format!(
        "set -euo pipefail\nshopt -s expand_aliases\ncargo() {{ :; }}\n\
         export FINPOOL_METRICS_ADDR=off\n\
         trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{quickstart}"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_remove("FINPOOL_TOKEN")
        .env_remove("FINPOOL_DATABASE_URL")
        .env_remove("FINPOOL_ADDR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Quickstart failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        // tenant create, model register, node list
        "alpha-sec",
        "qwen2-7b-instruct",
        // two submits
        "submitted",
        // job logs -f hello
        "GPUs ",
        // job get hello: its history
        "succeeded",
        // job list -o json
        "\"tenant_id\": \"alpha-sec\"",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing:\n{stdout}\n{stderr}"
        );
    }
    assert!(!stdout.contains("unspecified"));
}
