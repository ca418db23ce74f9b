//! The audit log in the store, on every backend: SQLite always, and
//! PostgreSQL when FINPOOL_TEST_DATABASE_URL is set. Appends are numbered
//! without gaps under concurrency (across stores too), the tables refuse
//! UPDATE, DELETE and TRUNCATE, and an attacker who drops the triggers and
//! edits, deletes, reorders or inserts rows is named by `verify`.

use std::collections::BTreeSet;

use finpool_audit::{Checkpoint, Entry, Frontier, Outcome, Signer, VerifyError, verify};
use finpool_store::{Store, StoreConfig, testing};
use sqlx::Connection;

struct Backend {
    store: Store,
    /// For poking at the database behind the store's back.
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite")
    }

    /// Runs statements as someone with direct access to the database.
    async fn exec(&self, statements: &[&str]) -> Vec<Result<(), String>> {
        let mut out = Vec::new();
        if self.is_sqlite() {
            let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            for s in statements {
                out.push(
                    sqlx::query(sqlx::AssertSqlSafe(*s))
                        .execute(&mut c)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                );
            }
        } else {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            for s in statements {
                out.push(
                    sqlx::query(sqlx::AssertSqlSafe(*s))
                        .execute(&mut c)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                );
            }
        }
        out
    }

    /// Drops the append-only triggers, as an attacker with the database
    /// would.
    async fn drop_triggers(&self) {
        let statements: &[&str] = if self.is_sqlite() {
            &[
                "DROP TRIGGER audit_log_append_only_update",
                "DROP TRIGGER audit_log_append_only_delete",
            ]
        } else {
            &["DROP TRIGGER audit_log_no_update ON audit_log"]
        };
        for r in self.exec(statements).await {
            r.unwrap();
        }
    }
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("finpool.db");
    let mut all = vec![Backend {
        store: Store::open(&StoreConfig::Sqlite(path.clone()))
            .await
            .unwrap(),
        url: format!("sqlite://{}", path.display()),
        _dir: Some(dir),
    }];
    if let Ok(base) = std::env::var(testing::TEST_DATABASE_URL_VAR) {
        let url = testing::fresh_postgres_database(&base)
            .await
            .unwrap_or_else(|e| panic!("{base} is set for tests but unusable: {e}"));
        all.push(Backend {
            store: Store::open(&StoreConfig::Postgres(url.clone()))
                .await
                .unwrap(),
            url,
            _dir: None,
        });
    }
    all
}

fn entry(actor: &str, outcome: Outcome) -> Entry {
    Entry {
        seq: 0,
        at_ms: 1_700_000_000_000,
        actor: actor.into(),
        role: "operator".into(),
        tenant: None,
        action: "/finpool.v1.TenantService/CreateTenant".into(),
        target: format!("tenant/{actor}"),
        request_id: format!("req-{actor}"),
        outcome,
    }
}

/// The whole log as an export, and a checkpoint over it.
async fn export_and_checkpoint(
    store: &Store,
    signer: &Signer,
) -> (String, finpool_audit::SignedCheckpoint) {
    let rows = store.audit_since(0, 100_000).await.unwrap();
    let mut frontier = Frontier::new();
    let mut export = String::new();
    for r in &rows {
        frontier.push(finpool_audit::merkle::leaf_hash(&r.canonical));
        export.push_str(&r.export_line());
        export.push('\n');
    }
    let head = Checkpoint {
        tree_size: frontier.size(),
        root: frontier.root(),
        timestamp_ms: 1_700_000_001_000,
        key_id: String::new(),
    }
    .sign(signer);
    (export, head)
}

#[tokio::test]
async fn appends_are_numbered_signed_and_read_back() {
    let signer = Signer::from_seed([1; 32]);
    for b in backends().await {
        let s = &b.store;
        assert_eq!(s.audit_size().await.unwrap(), 0);
        assert_eq!(s.append_audit(&[], &signer).await.unwrap(), None);
        let first = [
            entry("a", Outcome::Ok),
            entry("b", Outcome::Denied("PERMISSION_DENIED".into())),
            entry("c", Outcome::Failed("INVALID_ARGUMENT".into())),
        ];
        assert_eq!(s.append_audit(&first, &signer).await.unwrap(), Some((1, 3)));
        assert_eq!(
            s.append_audit(&[entry("d", Outcome::Ok)], &signer)
                .await
                .unwrap(),
            Some((4, 4))
        );
        assert_eq!(s.audit_size().await.unwrap(), 4);
        let rows = s.audit_since(0, 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let second = rows[1].entry().unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(second.actor, "b");
        assert_eq!(second.outcome, Outcome::Denied("PERMISSION_DENIED".into()));
        let page = s.audit_since(2, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].seq, 3);

        // Checkpoints: the one over the most entries is the latest.
        assert!(s.latest_checkpoint().await.unwrap().is_none());
        let (export, head) = export_and_checkpoint(s, &signer).await;
        let verified = verify(&export, &head, &signer.public_key()).unwrap();
        assert_eq!(verified.tree_size, 4);
        s.save_checkpoint(&head).await.unwrap();
        let mut smaller = head.clone();
        smaller.checkpoint.tree_size = 2;
        let smaller = smaller.checkpoint.sign(&signer);
        s.save_checkpoint(&smaller).await.unwrap();
        assert_eq!(s.latest_checkpoint().await.unwrap(), Some(head));
    }
}

#[tokio::test]
async fn concurrent_appends_give_a_gapless_sequence() {
    let signer = std::sync::Arc::new(Signer::from_seed([2; 32]));
    for b in backends().await {
        // Two stores on one database: two processes' writers.
        let other = if b.is_sqlite() {
            Store::open(&StoreConfig::Sqlite(
                b.url.strip_prefix("sqlite://").unwrap().into(),
            ))
            .await
            .unwrap()
        } else {
            Store::open(&StoreConfig::Postgres(b.url.clone()))
                .await
                .unwrap()
        };
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = if t % 2 == 0 {
                b.store.clone()
            } else {
                other.clone()
            };
            let signer = signer.clone();
            tasks.push(tokio::spawn(async move {
                let mut given = Vec::new();
                for round in 0..8 {
                    let batch: Vec<Entry> = (0..(1 + (t + round) % 4))
                        .map(|i| entry(&format!("t{t}-r{round}-{i}"), Outcome::Ok))
                        .collect();
                    let (first, last) = store.append_audit(&batch, &signer).await.unwrap().unwrap();
                    assert_eq!(last - first + 1, batch.len() as u64);
                    given.extend(first..=last);
                }
                given
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a seq was given twice");
        let n = all.len() as u64;
        assert_eq!(unique, (1..=n).collect(), "the sequence has a gap");
        let rows = b.store.audit_since(0, 100_000).await.unwrap();
        assert_eq!(rows.len() as u64, n);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.entry().unwrap().seq, i as u64 + 1);
        }
        let (export, head) = export_and_checkpoint(&b.store, &signer).await;
        verify(&export, &head, &signer.public_key()).unwrap();
    }
}

#[tokio::test]
async fn the_audit_tables_refuse_update_delete_and_truncate() {
    let signer = Signer::from_seed([3; 32]);
    for b in backends().await {
        let s = &b.store;
        s.append_audit(&[entry("a", Outcome::Ok), entry("b", Outcome::Ok)], &signer)
            .await
            .unwrap();
        let (_, head) = export_and_checkpoint(s, &signer).await;
        s.save_checkpoint(&head).await.unwrap();
        let mut statements = vec![
            "UPDATE audit_log SET actor = 'forged'",
            "DELETE FROM audit_log WHERE seq = 2",
            "UPDATE audit_checkpoints SET tree_size = 1",
            "DELETE FROM audit_checkpoints",
        ];
        if !b.is_sqlite() {
            statements.extend(["TRUNCATE audit_log", "TRUNCATE audit_checkpoints"]);
        }
        for (statement, result) in statements.iter().zip(b.exec(&statements).await) {
            let error = result.expect_err(statement);
            assert!(error.contains("append-only"), "{statement}: {error}");
        }
        assert_eq!(s.audit_size().await.unwrap(), 2);
        assert_eq!(s.latest_checkpoint().await.unwrap(), Some(head));
    }
}

/// Five entries, a checkpoint over them; then `tamper` on the database
/// with the triggers dropped; the export must fail naming `bad`.
async fn tampered(b: &Backend, statements: &[&str]) -> VerifyError {
    let signer = Signer::from_seed([4; 32]);
    let entries: Vec<Entry> = (1..=5)
        .map(|i| entry(&format!("e{i}"), Outcome::Ok))
        .collect();
    b.store.append_audit(&entries, &signer).await.unwrap();
    let (export, head) = export_and_checkpoint(&b.store, &signer).await;
    verify(&export, &head, &signer.public_key()).unwrap();
    b.drop_triggers().await;
    for (statement, r) in statements.iter().zip(b.exec(statements).await) {
        r.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let rows = b.store.audit_since(0, 100).await.unwrap();
    let export: String = rows.iter().map(|r| r.export_line() + "\n").collect();
    verify(&export, &head, &signer.public_key()).expect_err("tampering went unseen")
}

#[tokio::test]
async fn rows_edited_deleted_reordered_or_inserted_behind_the_triggers_are_named() {
    // The entry's own bytes, re-encoded consistently by the attacker: the
    // canonical form of entry 3 with another actor.
    let forged = |seq: u64| {
        let mut e = entry("mallory", Outcome::Ok);
        e.seq = seq;
        String::from_utf8(e.canonical()).unwrap()
    };
    let blob = |b: &Backend, text: &str| {
        let hex: String = text.bytes().map(|c| format!("{c:02x}")).collect();
        if b.is_sqlite() {
            format!("X'{hex}'")
        } else {
            format!("'\\x{hex}'::bytea")
        }
    };
    for kind in ["edit", "delete", "reorder", "insert"] {
        for b in backends().await {
            let statements: Vec<String> = match kind {
                "edit" => vec![format!(
                    "UPDATE audit_log SET actor = 'mallory', canonical = {} WHERE seq = 3",
                    blob(&b, &forged(3))
                )],
                "delete" => vec!["DELETE FROM audit_log WHERE seq = 2".into()],
                "reorder" => vec![
                    "UPDATE audit_log SET seq = 100 WHERE seq = 3".into(),
                    "UPDATE audit_log SET seq = 3 WHERE seq = 4".into(),
                    "UPDATE audit_log SET seq = 4 WHERE seq = 100".into(),
                ],
                "insert" => vec![
                    "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 4".into(),
                    "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100".into(),
                    format!(
                        "INSERT INTO audit_log (seq, at, actor, role, tenant, action, target, \
                         request_id, outcome, canonical, leaf_hash, signature) \
                         SELECT 4, at, 'mallory', role, tenant, action, target, request_id, \
                         outcome, {}, leaf_hash, signature FROM audit_log WHERE seq = 3",
                        blob(&b, &forged(4))
                    ),
                ],
                _ => unreachable!(),
            };
            let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
            let error = tampered(&b, &statements).await;
            let expected = match kind {
                "edit" => Some(3),
                "delete" => Some(2),
                "reorder" => Some(3),
                "insert" => Some(4),
                _ => unreachable!(),
            };
            assert_eq!(
                error.first_bad_seq(),
                expected,
                "{kind} on {}: {error}",
                b.store.backend_kind()
            );
        }
    }
}

#[tokio::test]
async fn the_query_columns_are_not_the_record() {
    let signer = Signer::from_seed([5; 32]);
    for b in backends().await {
        b.store
            .append_audit(&[entry("a", Outcome::Ok), entry("b", Outcome::Ok)], &signer)
            .await
            .unwrap();
        let (export, head) = export_and_checkpoint(&b.store, &signer).await;
        b.drop_triggers().await;
        b.exec(&["UPDATE audit_log SET actor = 'mallory' WHERE seq = 2"])
            .await
            .remove(0)
            .unwrap();
        // Reads come from the canonical bytes, which still verify.
        let rows = b.store.audit_since(0, 10).await.unwrap();
        assert_eq!(rows[1].entry().unwrap().actor, "b");
        let again: String = rows.iter().map(|r| r.export_line() + "\n").collect();
        assert_eq!(again, export);
        verify(&again, &head, &signer.public_key()).unwrap();
    }
}
