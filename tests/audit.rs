//! The audit log through a real `finpool up` and the `finpool audit`
//! commands: mutations and denied attempts are recorded on both doors,
//! exports verify against signed checkpoints (and a newer checkpoint
//! against an older one), and an attacker with the database, who drops
//! the append-only triggers and edits, deletes, reorders or inserts rows,
//! is named by `finpool audit verify` with the first bad seq. A history
//! rewritten after a checkpoint, even re-signed with the real key, fails
//! the consistency check, and the server itself refuses to sign over it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use finpool_api::Role;
use finpool_audit::{Checkpoint, Entry, Frontier, SignedEntry};
use finpool_proto::v1 as pb;
use sqlx::Connection;

fn finpool(server: Option<&Server>, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(finpool_bin());
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

/// Runs `finpool audit …` and returns stdout, failing the test on error.
fn audit_ok(server: Option<&Server>, token: Option<&str>, args: &[&str]) -> String {
    let out = finpool(server, token, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "finpool {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Runs `finpool audit verify …`, which must fail; returns its stderr.
fn verify_fails(args: &[&str]) -> String {
    let out = finpool(None, None, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "verify passed a tampered log:\n{stdout}"
    );
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The log's entries, as the export holds them.
fn entries(export: &Path) -> Vec<Entry> {
    std::fs::read_to_string(export)
        .unwrap()
        .lines()
        .map(|l| SignedEntry::from_line(l).unwrap().entry)
        .collect()
}

/// Exports through the API (as a regulator) until the log holds `n`
/// entries and the latest checkpoint covers them; returns the export.
async fn settle(server: &Server, regulator: &str, n: usize, out: &Path, checkpoint: &Path) {
    let start = Instant::now();
    loop {
        audit_ok(
            Some(server),
            Some(regulator),
            &["audit", "export", "--out", s(out)],
        );
        let got = entries(out).len();
        assert!(got <= n, "more entries than expected: {:#?}", entries(out));
        if got == n {
            let cp = finpool(
                Some(server),
                Some(regulator),
                &["audit", "checkpoint", "--out", s(checkpoint)],
            );
            if cp.status.success()
                && std::fs::read_to_string(checkpoint)
                    .unwrap()
                    .contains(&format!("\ntree_size {n}\n"))
            {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the log did not reach {n} entries and a checkpoint over them; it has {got}:\n{:#?}\n{}",
            entries(out),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then wait: the audit queue is flushed and a last checkpoint
/// signed.
fn stop(mut server: Server) -> String {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let _ = server.child.wait();
    std::thread::sleep(Duration::from_millis(100));
    server.logs()
}

/// A copy of the data dir, for one attacker.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_file(to.join("finpool.lock"));
}

/// Runs statements on a data dir's database, triggers dropped first, as
/// someone with the database file would.
async fn tamper(dir: &Path, statements: &[String]) {
    let url = format!("sqlite://{}", dir.join("finpool.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for statement in [
        "DROP TRIGGER audit_log_append_only_update",
        "DROP TRIGGER audit_log_append_only_delete",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(statements.iter().cloned())
    {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    c.close().await.unwrap();
}

fn blob(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("X'{hex}'")
}

/// Entry `seq` of `log`, re-encoded with another actor: a consistent
/// forgery of its canonical bytes (the signature cannot follow).
fn forged(log: &[Entry], seq: u64, new_seq: u64) -> Vec<u8> {
    let mut e = log[seq as usize - 1].clone();
    e.actor = "mallory".into();
    e.seq = new_seq;
    e.canonical()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_verifies_and_names_tampering() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let files = root.path();
    let server = Server::start_with(&dir, &["--audit-checkpoint-every", "1s"]);
    let regulator = server.token(Role::Regulator, None);
    let mut op = server.operator().await;
    let mut alpha = server.tenant("alpha").await;

    // 1-2: two tenants (operator, gRPC).
    create_tenant(&mut op, "alpha", 1, 2).await;
    create_tenant(&mut op, "beta", 1, 2).await;
    // 3: a submit.
    let job = submit(&mut alpha, shell_job("audited", whole(1), "true")).await;
    // 4: a regulator may change nothing.
    let mut reg = server.client(&regulator).await;
    let refused = reg
        .tenants
        .create_tenant(pb::CreateTenantRequest {
            id: "gamma".into(),
            display_name: "x".into(),
            weight: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // 5: another tenant's job is not found, and that is a denial.
    let mut beta = server.tenant("beta").await;
    let refused = beta
        .jobs
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    // 6: no token, over REST.
    let response = server
        .rest(reqwest::Method::POST, "/v1/models", None)
        .json(&serde_json::json!({"name": "m", "size_mib": 1, "min_gpu_memory_mib": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // 7: a mutation over REST, named by the caller's request id, which
    // the answer echoes.
    let response = server
        .rest(
            reqwest::Method::POST,
            "/v1/models",
            Some(&server.token(Role::Operator, None)),
        )
        .header("x-request-id", "audit-test-7")
        .json(&serde_json::json!({"name": "qwen", "size_mib": 1024, "min_gpu_memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "audit-test-7");
    // 8: a tenant may not read the audit log.
    let alpha_token = server.token(Role::Tenant, Some("alpha"));
    let export = files.join("export-1.jsonl");
    let out = finpool(
        Some(&server),
        Some(&alpha_token),
        &["audit", "export", "--out", s(&export)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
    // 9: a submit refused for its input fails (not denied).
    let bad = shell_job("bad", whole(0), "true");
    let refused = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let cp1 = files.join("checkpoint-1.txt");
    settle(&server, &regulator, 9, &export, &cp1).await;
    let log = entries(&export);
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    let find = |action: &str, outcome: &str| {
        log.iter()
            .find(|e| e.action.ends_with(action) && e.outcome.to_string() == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in {log:#?}"))
    };
    let created = find("/CreateTenant", "ok");
    assert_eq!(
        (created.role.as_str(), created.target.as_str()),
        ("operator", "tenant/alpha")
    );
    let submitted = find("/SubmitJob", "ok");
    assert_eq!(submitted.target, format!("job/{}", job.id));
    assert_eq!(submitted.tenant.as_deref(), Some("alpha"));
    assert_eq!(submitted.role, "tenant");
    assert_eq!(
        find("/CreateTenant", "denied:PERMISSION_DENIED").role,
        "regulator"
    );
    let cross = find("/GetJob", "denied:NOT_FOUND");
    assert_eq!(cross.tenant.as_deref(), Some("beta"));
    assert_eq!(cross.target, format!("job/{}", job.id));
    let anonymous = find("/RegisterModel", "denied:UNAUTHENTICATED");
    assert_eq!(
        (anonymous.actor.as_str(), anonymous.role.as_str()),
        ("address/127.0.0.1", "anonymous")
    );
    let rest = find("/RegisterModel", "ok");
    assert_eq!(rest.request_id, "audit-test-7");
    assert_eq!(rest.target, "model/qwen");
    assert_eq!(
        find("/ListAuditEntries", "denied:PERMISSION_DENIED")
            .tenant
            .as_deref(),
        Some("alpha")
    );
    find("/SubmitJob", "failed:INVALID_ARGUMENT");
    // Every other request got an id of its own (a UUIDv7).
    let mut ids: Vec<&str> = log.iter().map(|e| e.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 9);

    // The public key, out of band from the data dir; the server says the same.
    let key = files.join("audit-key.pem");
    audit_ok(
        None,
        None,
        &[
            "audit",
            "public-key",
            "--data-dir",
            s(&dir),
            "--out",
            s(&key),
        ],
    );
    let served = files.join("served-key.pem");
    audit_ok(
        Some(&server),
        Some(&regulator),
        &["audit", "public-key", "--out", s(&served)],
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(&served).unwrap()
    );
    let ok = audit_ok(
        None,
        None,
        &[
            "audit",
            "verify",
            "--export",
            s(&export),
            "--checkpoint",
            s(&cp1),
            "--public-key",
            s(&key),
        ],
    );
    assert!(ok.starts_with("OK: tree size 9, root "), "{ok}");

    // More history, a newer checkpoint that extends the older one.
    let mut op_rest_refused = server.tenant("beta").await;
    let refused = op_rest_refused
        .tenants
        .suspend_tenant(pb::SuspendTenantRequest {
            id: "alpha".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    op.tenants
        .set_quota(pb::SetQuotaRequest {
            tenant_id: "alpha".into(),
            gpu_class: "A100".into(),
            quota: Some(pb::Quota {
                guaranteed: 2,
                limit: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // A suspended tenant's token is refused, and named in the log.
    op.tenants
        .suspend_tenant(pb::SuspendTenantRequest {
            id: "beta".into(),
            reason: "audit".into(),
        })
        .await
        .unwrap();
    let refused = beta
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let export2 = files.join("export-2.jsonl");
    let cp2 = files.join("checkpoint-2.txt");
    settle(&server, &regulator, 13, &export2, &cp2).await;
    let log2 = entries(&export2);
    assert!(
        log2.iter()
            .any(|e| e.target == "tenant/alpha/quotas/A100" && e.outcome.is_ok())
    );
    assert!(log2.iter().any(|e| e.action.ends_with("/SuspendTenant")
        && e.target == "tenant/beta"
        && e.outcome.is_ok()));
    let suspended = log2.last().unwrap();
    assert_eq!(suspended.action, "/finpool.v1.JobService/ListJobs");
    assert_eq!(suspended.outcome.to_string(), "denied:UNAUTHENTICATED");
    assert_eq!(
        (suspended.role.as_str(), suspended.tenant.as_deref()),
        ("tenant", Some("beta"))
    );
    let ok = audit_ok(
        None,
        None,
        &[
            "audit",
            "verify",
            "--export",
            s(&export2),
            "--checkpoint",
            s(&cp2),
            "--older-checkpoint",
            s(&cp1),
            "--public-key",
            s(&key),
        ],
    );
    assert!(
        ok.contains("tree size 13") && ok.contains("extends the older checkpoint"),
        "{ok}"
    );
    // The old checkpoint still holds for the new export's prefix.
    let ok = audit_ok(
        None,
        None,
        &[
            "audit",
            "verify",
            "--export",
            s(&export2),
            "--checkpoint",
            s(&cp1),
            "--public-key",
            s(&key),
        ],
    );
    assert!(
        ok.contains("tree size 9") && ok.contains("4 after the checkpoint"),
        "{ok}"
    );

    // Shut down: nothing is lost, and the direct export (the database,
    // no server) is the same log.
    let logs = stop(server);
    assert!(logs.contains("audit checkpoint signed"), "{logs}");
    let direct = files.join("export-direct.jsonl");
    audit_ok(
        None,
        None,
        &[
            "audit",
            "export",
            "--data-dir",
            s(&dir),
            "--out",
            s(&direct),
        ],
    );
    assert_eq!(
        std::fs::read(&direct).unwrap(),
        std::fs::read(&export2).unwrap()
    );
    let cp_direct = files.join("checkpoint-direct.txt");
    audit_ok(
        None,
        None,
        &[
            "audit",
            "checkpoint",
            "--data-dir",
            s(&dir),
            "--out",
            s(&cp_direct),
        ],
    );
    assert_eq!(
        std::fs::read(&cp_direct).unwrap(),
        std::fs::read(&cp2).unwrap()
    );

    // An attacker with the database drops the triggers and …
    let log = entries(&export2);
    let cases: Vec<(&str, Vec<String>, u64)> = vec![
        // (a) edits entry 5, re-encoding its bytes consistently;
        (
            "edit",
            vec![format!(
                "UPDATE audit_log SET actor = 'mallory', canonical = {} WHERE seq = 5",
                blob(&forged(&log, 5, 5))
            )],
            5,
        ),
        // (b) deletes entry 3;
        (
            "delete",
            vec!["DELETE FROM audit_log WHERE seq = 3".into()],
            3,
        ),
        // (c) swaps entries 6 and 7;
        (
            "reorder",
            vec![
                "UPDATE audit_log SET seq = 1000 WHERE seq = 6".into(),
                "UPDATE audit_log SET seq = 6 WHERE seq = 7".into(),
                "UPDATE audit_log SET seq = 7 WHERE seq = 1000".into(),
            ],
            6,
        ),
        // (d) slips an entry in at 4, moving the rest up.
        (
            "insert",
            vec![
                "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 4".into(),
                "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000".into(),
                format!(
                    "INSERT INTO audit_log (seq, at, actor, role, tenant, action, target, \
                     request_id, outcome, canonical, leaf_hash, signature) \
                     SELECT 4, at, 'mallory', role, tenant, action, target, request_id, outcome, \
                     {}, leaf_hash, signature FROM audit_log WHERE seq = 3",
                    blob(&forged(&log, 3, 4))
                ),
            ],
            4,
        ),
    ];
    for (kind, statements, bad) in cases {
        let copy = files.join(format!("data-{kind}"));
        copy_dir(&dir, &copy);
        tamper(&copy, &statements).await;
        let tampered = files.join(format!("export-{kind}.jsonl"));
        audit_ok(
            None,
            None,
            &[
                "audit",
                "export",
                "--data-dir",
                s(&copy),
                "--out",
                s(&tampered),
            ],
        );
        for checkpoint in [&cp2, &cp1] {
            let stderr = verify_fails(&[
                "audit",
                "verify",
                "--export",
                s(&tampered),
                "--checkpoint",
                s(checkpoint),
                "--public-key",
                s(&key),
            ]);
            assert!(
                stderr.contains(&format!("FAILED at seq {bad}:")),
                "{kind}: {stderr}"
            );
        }
    }

    // (e) An insider with the key rewrites entry 2 and re-signs it, then
    // signs a new checkpoint over the rewritten log.
    let copy = files.join("data-rewritten");
    copy_dir(&dir, &copy);
    let signer = finpool_api::audit::load_key(&dir.join(finpool_api::audit::KEY_FILE)).unwrap();
    let mut rewritten = log[1].clone();
    rewritten.outcome = finpool_audit::Outcome::Ok;
    rewritten.target = "tenant/innocent".into();
    let signed = rewritten.clone().sign(&signer);
    tamper(
        &copy,
        &[format!(
            "UPDATE audit_log SET target = 'tenant/innocent', canonical = {}, leaf_hash = {}, \
             signature = {} WHERE seq = 2",
            blob(&rewritten.canonical()),
            blob(&rewritten.leaf_hash()),
            blob(&signed.signature)
        )],
    )
    .await;
    let tampered = files.join("export-rewritten.jsonl");
    audit_ok(
        None,
        None,
        &[
            "audit",
            "export",
            "--data-dir",
            s(&copy),
            "--out",
            s(&tampered),
        ],
    );
    // Every entry is signed, but the checkpoints the regulator holds say no.
    let stderr = verify_fails(&[
        "audit",
        "verify",
        "--export",
        s(&tampered),
        "--checkpoint",
        s(&cp2),
        "--public-key",
        s(&key),
    ]);
    assert!(
        stderr.contains("FAILED: the first 13 entries hash to"),
        "{stderr}"
    );
    let mut frontier = Frontier::new();
    for e in entries(&tampered) {
        frontier.push(e.leaf_hash());
    }
    let resigned = Checkpoint {
        tree_size: frontier.size(),
        root: frontier.root(),
        timestamp_ms: finpool_domain::Timestamp::now().0,
        key_id: String::new(),
    }
    .sign(&signer);
    let cp3 = files.join("checkpoint-rewritten.txt");
    std::fs::write(&cp3, resigned.to_text()).unwrap();
    // Alone, the forged checkpoint fits the forged log …
    audit_ok(
        None,
        None,
        &[
            "audit",
            "verify",
            "--export",
            s(&tampered),
            "--checkpoint",
            s(&cp3),
            "--public-key",
            s(&key),
        ],
    );
    // … but it does not extend the checkpoint taken before.
    let stderr = verify_fails(&[
        "audit",
        "verify",
        "--export",
        s(&tampered),
        "--checkpoint",
        s(&cp3),
        "--older-checkpoint",
        s(&cp1),
        "--public-key",
        s(&key),
    ]);
    assert!(stderr.contains("history rewritten"), "{stderr}");

    // The server itself notices at start and signs nothing over it.
    let server = Server::start_with(&copy, &["--audit-checkpoint-every", "1s"]);
    let regulator = server.token(Role::Regulator, None);
    let mut op = server.operator().await;
    create_tenant(&mut op, "after-rewrite", 1, 2).await;
    let start = Instant::now();
    while !server.logs().contains("contradicts its last checkpoint") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let latest = files.join("checkpoint-after.txt");
    audit_ok(
        Some(&server),
        Some(&regulator),
        &["audit", "checkpoint", "--out", s(&latest)],
    );
    assert_eq!(
        std::fs::read(&latest).unwrap(),
        std::fs::read(&cp2).unwrap()
    );
}
