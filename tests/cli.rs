//! The `finpool` command line, run as a user would: the demo, tokens, and
//! the client commands against a real server.

mod common;

use std::process::Command;

use finpool_proto::v1 as pb;

use common::*;

fn finpool(server: Option<&Server>, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_finpool"));
    cmd.args(args)
        .env_remove("FINPOOL_TOKEN")
        .env_remove("FINPOOL_ADDR");
    if let Some(s) = server {
        cmd.env("FINPOOL_ADDR", &s.addr);
    }
    if let Some(t) = token {
        cmd.env("FINPOOL_TOKEN", t);
    }
    cmd.output().expect("running finpool")
}

/// A fresh server whose tenant alpha may hold `limit` A100s (one
/// guaranteed), with alpha's token and client. The directory goes last.
async fn alpha_server(
    limit: i64,
) -> (
    tempfile::TempDir,
    Server,
    String,
    finpool_cli::client::Clients,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, limit).await;
    let token = server.token(finpool_api::Role::Tenant, Some("alpha"));
    let alpha = server.tenant("alpha").await;
    (dir, server, token, alpha)
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_runs_every_brokerages_jobs_to_completion() {
    let out = finpool(None, None, &["demo"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for tenant in ["alpha-securities", "beacon-capital", "cedar-brokerage"] {
        let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(tenant)).collect();
        assert!(
            rows.len() > 2,
            "{tenant} has jobs in the summary:\n{stdout}"
        );
    }
    assert!(stdout.contains("alpha-securities   8/8"), "{stdout}");
    assert!(stdout.contains("beacon-capital     7/7"), "{stdout}");
    assert!(stdout.contains("cedar-brokerage    4/4"), "{stdout}");
    assert!(
        stdout.contains("result: 19 of 19 jobs succeeded across 3 brokerages"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no GPU was ever shared by two tenants"),
        "{stdout}"
    );
    // The pool is kept busy: no job holds out for its model's card while
    // the rest of the pool idles.
    let utilization: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("GPU utilization over the demo: "))
        .and_then(|rest| rest.split('%').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no utilization line:\n{stdout}"));
    assert!(utilization >= 50.0, "utilization {utilization}%:\n{stdout}");
    assert!(
        stdout.contains("longest wait while a card the job could use was idle: "),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_work_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data_dir = dir.path().to_str().unwrap();

    let out = finpool(
        None,
        None,
        &[
            "token",
            "issue",
            "--role",
            "operator",
            "--data-dir",
            data_dir,
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let operator = text(&out).0.trim().to_owned();

    let out = finpool(
        Some(&server),
        Some(&operator),
        &[
            "tenant",
            "create",
            "alpha",
            "--quota",
            "A100=1:2",
            "--display-name",
            "Alpha Securities",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("A100 1/2"));

    let out = finpool(
        None,
        None,
        &[
            "token",
            "issue",
            "--role",
            "tenant",
            "--tenant",
            "alpha",
            "--data-dir",
            data_dir,
        ],
    );
    let alpha = text(&out).0.trim().to_owned();
    let out = finpool(
        None,
        None,
        &["token", "issue", "--role", "tenant", "--data-dir", data_dir],
    );
    assert!(!out.status.success(), "a tenant token needs --tenant");

    let job_file = dir.path().join("job.yaml");
    std::fs::write(
        &job_file,
        "name: from-yaml\ncommand: [sh, -c, 'echo hello from $CUDA_VISIBLE_DEVICES']\n\
         resources:\n  gpu:\n    whole_gpus: 1\n  gpu_classes: [A100]\n",
    )
    .unwrap();
    let out = finpool(
        Some(&server),
        Some(&alpha),
        &["job", "submit", "-f", job_file.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let id = stdout.split_whitespace().nth(1).unwrap().to_owned();

    let out = finpool(Some(&server), Some(&alpha), &["job", "logs", "-f", &id]);
    assert_eq!(text(&out).0, "hello from 0\n");
    let out = finpool(
        Some(&server),
        Some(&alpha),
        &["job", "get", &id, "-o", "json"],
    );
    let job: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(job["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(job["placement"]["gpus"][0]["index"], 0);

    // Flags work too, and `--` separates the command.
    let out = finpool(
        Some(&server),
        Some(&alpha),
        &[
            "job",
            "submit",
            "--name",
            "from-flags",
            "--gpu-milli",
            "250",
            "--",
            "echo",
            "hi",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let out = finpool(Some(&server), Some(&alpha), &["job", "list", "-o", "json"]);
    let jobs: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2);

    // A job file with an unknown field is refused, naming it.
    std::fs::write(&job_file, "name: typo\ncommand: [true]\ngpus: 2\n").unwrap();
    let out = finpool(
        Some(&server),
        Some(&alpha),
        &["job", "submit", "-f", job_file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("unknown field `gpus`"),
        "{:?}",
        text(&out)
    );

    // Server-side validation comes back by field.
    let out = finpool(
        Some(&server),
        Some(&alpha),
        &[
            "job", "submit", "--name", "too-many", "--gpus", "0", "--", "true",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("InvalidArgument: resources.gpu.whole_gpus"),
        "{:?}",
        text(&out)
    );

    let out = finpool(Some(&server), Some(&alpha), &["node", "list"]);
    assert!(text(&out).0.contains("node-a"), "{:?}", text(&out));
    let out = finpool(Some(&server), Some(&alpha), &["usage"]);
    assert!(
        text(&out).0.contains("tenant alpha: 2 jobs"),
        "{:?}",
        text(&out)
    );

    let out = finpool(Some(&server), None, &["job", "list"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no token"));
}

/// `finpool … | head`: the reader leaving is not an error (no panic, no
/// exit 101); the client dies quietly of SIGPIPE, as Unix tools do.
#[test]
fn a_closed_pipe_is_not_an_error() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    // The OpenAPI document (about 90 KiB) overflows the pipe's buffer.
    let mut child = std::process::Command::new(finpool_bin())
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone now; the rest of the output has nowhere to go.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// `--log-format json` writes one JSON object per log line, and text logs
/// carry no colour codes when stderr is not a terminal.
#[test]
fn logs_are_json_lines_or_plain_text() {
    use std::io::{BufRead, BufReader};
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(finpool_bin())
            .args(["--log-format", format, "up", "--listen", "127.0.0.1:0"])
            .args(["--metrics-addr", "off", "--sandbox", "off", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env_remove("FINPOOL_DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut logs = Vec::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            let serving = line.starts_with("finpool is serving");
            logs.push(line);
            if serving {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let all = logs.join("\n");
        assert!(!all.contains('\u{1b}'), "{format}: colour codes in {all}");
        let events: Vec<serde_json::Value> = logs
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        match format {
            "json" => {
                assert!(!events.is_empty(), "no JSON log line in {all}");
                assert!(
                    events
                        .iter()
                        .all(|e| e["level"].is_string() && e["fields"].is_object())
                );
            }
            _ => assert!(events.is_empty() && all.contains(" INFO "), "{all}"),
        }
    }
}

/// `finpool completion SHELL` prints a script the shell accepts, naming
/// the commands.
#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(finpool_bin())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["finpool", "job", "tenant", "simulate"] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
        if shell == "bash" {
            // bash parses it (and defines the completion function). From a
            // file: the script is longer than one argument may be.
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &script).unwrap();
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(file.path())
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let bad = std::process::Command::new(finpool_bin())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tcsh"));
}

/// `job wait` and `job logs -f` end with the job's outcome: 0 succeeded,
/// 3 failed, 4 cancelled, 5 still running at --timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_wait_and_logs_follow_exit_with_the_jobs_outcome() {
    let (_dir, server, token, mut alpha) = alpha_server(2).await;
    let ok = submit(&mut alpha, shell_job("ok", whole(1), "echo fine")).await;
    let bad = submit(&mut alpha, shell_job("bad", whole(1), "echo oops; exit 3")).await;
    let slow = submit(&mut alpha, shell_job("slow", share(100), "sleep 30")).await;

    let run = |args: &[&str]| finpool(Some(&server), Some(&token), args);
    let out = run(&["job", "wait", &ok.id]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = run(&["job", "wait", &bad.id]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("failed"), "{:?}", text(&out));
    let out = run(&["job", "logs", "-f", &bad.id]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).0.contains("oops"));
    let out = run(&["job", "logs", "-f", &ok.id]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    // Without -f, the output so far, and no verdict.
    let out = run(&["job", "logs", &bad.id]);
    assert_eq!(out.status.code(), Some(0));

    let out = run(&["job", "wait", &slow.id, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
    let out = run(&["job", "cancel", &slow.id]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = run(&["job", "wait", &slow.id, "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
}

/// Jobs are named by a unique name or a unique part (prefix or suffix) of
/// their id; a
/// shortened list says that more exist; a first transition reads "new".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_by_name_or_prefix_and_lists_that_say_there_is_more() {
    let (_dir, server, token, mut alpha) = alpha_server(2).await;
    let first = submit(&mut alpha, shell_job("risk-eod", whole(1), "true")).await;
    submit(&mut alpha, shell_job("dup", whole(1), "true")).await;
    submit(&mut alpha, shell_job("dup", whole(1), "true")).await;
    let run = |args: &[&str]| finpool(Some(&server), Some(&token), args);

    let suffix = &first.id[first.id.len() - 8..];
    for given in [suffix, "risk-eod", first.id.as_str()] {
        let out = run(&["job", "get", given, "-o", "json"]);
        assert!(out.status.success(), "{given}: {:?}", text(&out));
        assert!(text(&out).0.contains(&first.id), "{given}");
    }
    // The ids' common prefix (their time) names no one job.
    let out = run(&["job", "get", &first.id[..4]]);
    assert!(text(&out).1.contains("jobs match"), "{:?}", text(&out));
    let out = run(&["job", "get", "dup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("2 jobs match"), "{:?}", text(&out));
    let out = run(&["job", "get", "no-such-job"]);
    assert!(
        text(&out).1.contains("no job has this name"),
        "{:?}",
        text(&out)
    );

    let out = run(&["job", "list", "--page-size", "1"]);
    assert!(out.status.success());
    assert!(
        text(&out).1.contains("more exist: --all"),
        "{:?}",
        text(&out)
    );
    let out = run(&["job", "list", "--all"]);
    assert!(!text(&out).1.contains("more exist"));

    let out = run(&["job", "get", "risk-eod"]);
    assert!(!text(&out).0.contains("unspecified"), "{}", text(&out).0);
}

/// `finpool up &` and at once `token issue`: the token waits for the key
/// of a server that is starting; without a server it says so at once.
#[test]
fn token_issue_waits_for_a_starting_server_and_explains_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let started = std::time::Instant::now();
    let out = finpool(
        None,
        None,
        &[
            "token",
            "issue",
            "--role",
            "operator",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("the server has not started"),
        "{:?}",
        text(&out)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "no server: no wait"
    );

    for _ in 0..3 {
        let fresh = dir.path().join(format!("fresh-{}", rand_suffix()));
        let mut server = std::process::Command::new(finpool_bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--metrics-addr",
                "off",
                "--sandbox",
                "off",
            ])
            .arg("--data-dir")
            .arg(&fresh)
            .env_remove("FINPOOL_DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // At once, as `finpool up & finpool token issue …` does: the data
        // dir may not even exist yet.
        let out = finpool(
            None,
            None,
            &[
                "token",
                "issue",
                "--role",
                "operator",
                "--data-dir",
                fresh.to_str().unwrap(),
            ],
        );
        server.kill().unwrap();
        server.wait().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        assert_eq!(text(&out).0.trim().split('.').count(), 3, "a JWT");
    }
}

/// A pending job shows its place in the queue (its tenant's queue, and
/// the jobs ahead in the pool) and a quota reason with the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_get_shows_the_queue_position_and_the_quota_numbers() {
    let (_dir, server, token, mut alpha) = alpha_server(1).await;
    // Every job on the A100s, where alpha's quota binds.
    let on_a100 = |name: &str, script: &str| {
        let mut spec = shell_job(name, whole(1), script);
        spec.resources.as_mut().unwrap().gpu_classes = vec!["A100".into()];
        spec
    };
    let mut hold = on_a100("hold", "sleep 60");
    // Above the others' priorities: they may not preempt it.
    hold.priority = 10;
    let hold = submit(&mut alpha, hold).await;
    wait_for(
        &mut alpha,
        std::time::Duration::from_secs(30),
        "hold runs",
        |jobs| {
            jobs.iter()
                .any(|j| j.id == hold.id && j.state == pb::JobState::Running as i32)
        },
    )
    .await;
    let older = submit(&mut alpha, on_a100("older", "true")).await;
    let mut urgent = on_a100("urgent", "true");
    urgent.priority = 5;
    let urgent = submit(&mut alpha, urgent).await;
    wait_for(
        &mut alpha,
        std::time::Duration::from_secs(30),
        "reasons",
        |jobs| {
            jobs.iter()
                .filter(|j| j.reason_code == "QuotaLimit")
                .count()
                == 2
        },
    )
    .await;
    let run = |args: &[&str]| finpool(Some(&server), Some(&token), args);

    // The urgent job goes first within alpha; the older one is second.
    let out = run(&["job", "get", &older.id, "-o", "json"]);
    let job: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(job["queue_position"]["in_tenant"], 2, "{job}");
    assert_eq!(job["queue_position"]["tenant_pending"], 2, "{job}");
    assert_eq!(job["queue_position"]["ahead_in_pool"], 1, "{job}");
    assert_eq!(job["queue_position"]["pool_pending"], 2, "{job}");
    assert_eq!(job["reason_code"], "QuotaLimit");
    assert_eq!(
        job["reason"], "quota: A100 limit 1 GPU; holding 1, this job asks 1",
        "{job}"
    );
    let out = run(&["job", "get", &urgent.id]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("queue      1 of 2 in tenant alpha's queue"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 pending jobs of 2 in the pool ahead"),
        "{stdout}"
    );
    assert!(stdout.contains("quota: A100 limit 1 GPU"), "{stdout}");
    // The REST door carries the same fields.
    let rest = server
        .rest(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}", older.id),
            Some(&token),
        )
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = rest.json().await.unwrap();
    assert_eq!(body["queue_position"]["in_tenant"], 2, "{body}");
    assert_eq!(body["reason_code"], "QuotaLimit", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("holding 1"),
        "{body}"
    );
    // A running job has no queue position.
    let out = run(&["job", "get", &hold.id, "-o", "json"]);
    let job: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert!(
        job.get("queue_position").is_none_or(|q| q.is_null()),
        "{job}"
    );
    let out = run(&["job", "get", &hold.id]);
    assert!(!text(&out).0.contains("queue "), "{}", text(&out).0);
}

/// No output of a job's life, tables or JSON, watch events included,
/// shows an enum's "unspecified" value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_lifecycle_outputs_never_say_unspecified() {
    let (_dir, server, token, _alpha) = alpha_server(2).await;
    let watch = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_finpool"));
        cmd.args(["job", "watch"]);
        if json {
            cmd.args(["-o", "json"]);
        }
        cmd.env("FINPOOL_ADDR", &server.addr)
            .env("FINPOOL_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let watchers = [watch(false), watch(true)];
    // Let the watchers subscribe before the job's first transition.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let run = |args: &[&str]| finpool(Some(&server), Some(&token), args);
    let mut outputs = Vec::new();
    let out = run(&[
        "job",
        "submit",
        "--name",
        "life",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let id = text(&out).0.split_whitespace().nth(1).unwrap().to_owned();
    outputs.push(text(&out).0);
    for args in [
        vec!["job", "get", &id],
        vec!["job", "get", &id, "-o", "json"],
        vec!["job", "list"],
        vec!["job", "list", "-o", "json"],
        vec!["job", "wait", &id, "-o", "json"],
        vec!["job", "get", &id],
        vec!["job", "get", &id, "-o", "json"],
        vec!["job", "list", "-o", "json"],
        vec!["node", "list"],
        vec!["node", "list", "-o", "json"],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {:?}", text(&out));
        outputs.push(text(&out).0);
    }
    let rest = server
        .rest(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}"),
            Some(&token),
        )
        .send()
        .await
        .unwrap();
    outputs.push(rest.text().await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for mut w in watchers {
        w.kill().unwrap();
        let out = w.wait_with_output().unwrap();
        let events = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(events.contains(&id), "the watcher saw the job: {events}");
        outputs.push(events);
    }
    for out in &outputs {
        assert!(!out.to_lowercase().contains("unspecified"), "{out}");
    }
    // The first transition reads "new" in text, and has no `from` in JSON.
    assert!(
        outputs[outputs.len() - 2].contains("new -> pending"),
        "{}",
        outputs[outputs.len() - 2]
    );
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `-o json` prints what REST returns for the same object (64-bit
/// integers as numbers); `-o yaml` is the same document; `-o wide` adds
/// columns; simulate and bench take `-o` too (no more `--format`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_match_rest_and_each_other() {
    let (_dir, server, token, mut alpha) = alpha_server(2).await;
    let job = submit(&mut alpha, shell_job("fmt", whole(1), "echo hi")).await;
    wait_for(
        &mut alpha,
        std::time::Duration::from_secs(30),
        "the job to end",
        |jobs| jobs.iter().all(|j| is_terminal(j.state)),
    )
    .await;
    let run = |args: &[&str]| finpool(Some(&server), Some(&token), args);

    let out = run(&["job", "get", &job.id, "-o", "json"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let cli: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    let rest: serde_json::Value = server
        .rest(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}", job.id),
            Some(&token),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cli, rest, "the CLI's JSON is REST's");
    assert!(
        cli["spec"]["resources"]["gpu"]["whole_gpus"].is_number(),
        "int64 as a number: {cli}"
    );

    let out = run(&["job", "get", &job.id, "-o", "yaml"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let yaml: serde_json::Value = serde_yaml_ng::from_str(&text(&out).0).unwrap();
    assert_eq!(yaml, cli, "YAML is the same document");

    let out = run(&["job", "list", "-o", "yaml"]);
    let yaml: serde_json::Value = serde_yaml_ng::from_str(&text(&out).0).unwrap();
    assert_eq!(yaml[0]["id"], job.id.as_str());

    let (table, _) = text(&run(&["job", "list"]));
    let (wide, _) = text(&run(&["job", "list", "-o", "wide"]));
    for column in ["NODE", "GPU INDICES", "ATTEMPTS"] {
        assert!(!table.contains(column), "{table}");
        assert!(wide.contains(column), "{wide}");
    }
    let (wide, _) = text(&run(&["node", "list", "-o", "wide"]));
    assert!(wide.contains("UUID"), "{wide}");

    let out = run(&["job", "list", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("'xml'") && stderr.contains("--output") && stderr.contains("yaml"),
        "{stderr}"
    );

    // The offline commands print with -o as well.
    let out = finpool(
        None,
        None,
        &[
            "bench", "index", "--nodes", "10", "--pods", "20", "-o", "yaml",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let report: serde_json::Value = serde_yaml_ng::from_str(&text(&out).0).unwrap();
    assert!(report.is_object(), "{report}");
    let out = finpool(None, None, &["bench", "index", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "--format is gone from bench");
}

/// --addr and --token belong to the commands that call a server.
#[test]
fn client_flags_only_on_client_commands() {
    for command in [
        &["up", "--help"][..],
        &["demo", "--help"],
        &["simulate", "openb", "--help"],
        &["bench", "scheduler", "--help"],
        &["crd", "--help"],
        &["completion", "--help"],
    ] {
        let (help, _) = text(&finpool(None, None, command));
        assert!(
            !help.contains("--token") && !help.contains("--addr"),
            "{command:?}:\n{help}"
        );
    }
    for command in [
        &["job", "list", "--help"][..],
        &["tenant", "create", "--help"],
        &["usage", "--help"],
        &["report", "usage", "--help"],
        &["token", "revoke", "--help"],
    ] {
        let (help, _) = text(&finpool(None, None, command));
        assert!(
            help.contains("--token") && help.contains("--addr"),
            "{command:?}:\n{help}"
        );
    }
    // The demo serves on a port of its own: --addr is refused, not ignored.
    let out = finpool(None, None, &["demo", "--addr", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--addr"), "{:?}", text(&out));
    // Before or after the subcommand, as kubectl takes them.
    let out = finpool(
        None,
        None,
        &["job", "--addr", "127.0.0.1:1", "list", "--token", "t"],
    );
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(text(&out).1.contains("cannot reach"), "{:?}", text(&out));
}

/// Lines of the child's stdout, read on a thread, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

/// The child's exit code, waiting at most 20 s.
fn exit_code(child: &mut std::process::Child) -> Option<i32> {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("the watch did not end");
}

/// `-w` reprints on each change (with -o json, one document per line) and
/// ends with 0 at Ctrl-C or when its reader goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_change_and_ends_cleanly() {
    use std::time::Duration;
    let (_dir, server, token, mut alpha) = alpha_server(2).await;
    let job = submit(&mut alpha, shell_job("watched", whole(1), "sleep 2")).await;
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_finpool"))
            .args(args)
            .env("FINPOOL_ADDR", &server.addr)
            .env("FINPOOL_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };

    // job get -w -o json: a document per change, until the job ends.
    let mut get = spawn(&["job", "get", &job.id, "-w", "-o", "json"]);
    let lines = lines_of(&mut get);
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("JOB_STATE_SUCCEEDED") {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no change after {states:?}"));
        let doc: serde_json::Value = serde_json::from_str(&line).expect("a JSON document a line");
        assert_eq!(doc["id"], job.id.as_str());
        states.push(doc["state"].as_str().unwrap().to_owned());
    }
    assert!(states.len() >= 2, "{states:?}");
    // SAFETY: a signal to the child started above.
    unsafe { libc::kill(get.id() as i32, libc::SIGINT) };
    assert_eq!(exit_code(&mut get), Some(0), "Ctrl-C ends a watch with 0");

    // job list -w: its reader leaves; the next change ends it with 0.
    let mut list = spawn(&["job", "list", "-w", "-o", "json"]);
    let lines = lines_of(&mut list);
    let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    let jobs: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    drop(lines);
    // The reading thread ends at its next line; then the pipe is closed.
    submit(&mut alpha, shell_job("next", whole(1), "true")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    submit(&mut alpha, shell_job("after", whole(1), "true")).await;
    assert_eq!(
        exit_code(&mut list),
        Some(0),
        "a closed pipe ends a watch with 0"
    );

    // node list -w, a table, polled: Ctrl-C ends it.
    let mut nodes = spawn(&["node", "list", "-w"]);
    let lines = lines_of(&mut nodes);
    let mut table = String::new();
    while !table.contains("node-a") {
        table.push_str(&lines.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    // SAFETY: a signal to the child started above.
    unsafe { libc::kill(nodes.id() as i32, libc::SIGINT) };
    assert_eq!(exit_code(&mut nodes), Some(0));
}

/// Tables fit the terminal they print to (cells wrap), and keep their full
/// width in a pipe. `script` gives the command a real terminal, 80 columns
/// wide.
#[test]
fn tables_fit_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.token(finpool_api::Role::Operator, None);
    let widest = |out: &str| {
        out.lines()
            .map(|l| l.trim_end_matches('\r').chars().count())
            .max()
            .unwrap_or(0)
    };
    let piped = finpool(Some(&server), Some(&token), &["node", "list"]);
    assert!(piped.status.success(), "{:?}", text(&piped));
    let full = widest(&text(&piped).0);
    assert!(
        full > 80,
        "the test needs a table wider than 80 columns: {full}"
    );
    let command = format!(
        "stty cols 80 rows 50; {} node list",
        env!("CARGO_BIN_EXE_finpool")
    );
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("FINPOOL_ADDR", &server.addr)
        .env("FINPOOL_TOKEN", &token)
        .output()
        .expect("running script (util-linux)");
    assert!(tty.status.success(), "{:?}", text(&tty));
    let shown = text(&tty).0;
    assert!(shown.contains("node-a"), "{shown}");
    assert!(widest(&shown) <= 80, "wider than the terminal:\n{shown}");
}

/// The commands that print a fixed document take `-o` too: `crd` is YAML
/// (as the chart holds it) or one JSON `List`; `openapi` is JSON or YAML.
#[test]
fn document_commands_take_the_output_flag() {
    let yaml = finpool(None, None, &["crd"]);
    assert!(yaml.status.success(), "{:?}", text(&yaml));
    let stream: Vec<serde_json::Value> = text(&yaml)
        .0
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str(doc.trim_start_matches("---\n")).unwrap())
        .collect();
    let json = finpool(None, None, &["crd", "-o", "json"]);
    assert!(json.status.success(), "{:?}", text(&json));
    let list: serde_json::Value = serde_json::from_str(&text(&json).0).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap(), &stream);
    let kinds: Vec<&str> = stream
        .iter()
        .map(|c| c["spec"]["names"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");

    let json = finpool(None, None, &["openapi"]);
    let yaml = finpool(None, None, &["openapi", "-o", "yaml"]);
    assert!(json.status.success() && yaml.status.success());
    let from_json: serde_json::Value = serde_json::from_str(&text(&json).0).unwrap();
    let from_yaml: serde_json::Value = serde_yaml_ng::from_str(&text(&yaml).0).unwrap();
    assert_eq!(from_json, from_yaml);
    assert_eq!(from_json["openapi"], "3.0.3");
}
