//! An export checked against checkpoints: every kind of tampering is
//! caught, and named by the first bad sequence number where one entry is
//! to blame.

use finpool_audit::{
    Checkpoint, Entry, Frontier, Outcome, SignedCheckpoint, SignedEntry, Signer, VerifyError,
    verify, verify_consistency,
};

fn entry(seq: u64, actor: &str) -> Entry {
    Entry {
        seq,
        at_ms: 1_700_000_000_000 + seq as i64,
        actor: actor.into(),
        role: "operator".into(),
        tenant: None,
        action: "/finpool.v1.TenantService/CreateTenant".into(),
        target: format!("tenant/t{seq}"),
        request_id: format!("req-{seq}"),
        outcome: if seq.is_multiple_of(3) {
            Outcome::Denied("PERMISSION_DENIED".into())
        } else {
            Outcome::Ok
        },
    }
}

fn log(signer: &Signer, n: u64) -> Vec<SignedEntry> {
    (1..=n).map(|s| entry(s, "op").sign(signer)).collect()
}

fn export(entries: &[SignedEntry]) -> String {
    entries.iter().map(|e| e.to_line() + "\n").collect()
}

fn checkpoint(signer: &Signer, entries: &[SignedEntry]) -> SignedCheckpoint {
    let mut f = Frontier::new();
    for e in entries {
        f.push(e.entry.leaf_hash());
    }
    Checkpoint {
        tree_size: f.size(),
        root: f.root(),
        timestamp_ms: 1_700_000_001_000,
        key_id: String::new(),
    }
    .sign(signer)
}

fn first_bad(result: Result<finpool_audit::Verified, VerifyError>) -> Option<u64> {
    result.expect_err("tampering went unseen").first_bad_seq()
}

#[test]
fn an_untouched_export_verifies_with_entries_after_the_checkpoint() {
    let signer = Signer::from_seed([9; 32]);
    let key = signer.public_key();
    let entries = log(&signer, 10);
    let head = checkpoint(&signer, &entries[..7]);
    let ok = verify(&export(&entries), &head, &key).unwrap();
    assert_eq!((ok.tree_size, ok.entries), (7, 10));
    assert_eq!(ok.root, head.checkpoint.root);
    // Through text, as files carry them.
    let head = SignedCheckpoint::parse(&head.to_text()).unwrap();
    verify(&export(&entries), &head, &key).unwrap();
    // An empty log and its checkpoint.
    verify("", &checkpoint(&signer, &[]), &key).unwrap();
}

#[test]
fn edits_deletions_moves_and_insertions_are_named_by_their_seq() {
    let signer = Signer::from_seed([9; 32]);
    let key = signer.public_key();
    let entries = log(&signer, 8);
    let head = checkpoint(&signer, &entries);

    // (a) An edited entry keeps its old signature.
    let mut edited = entries.clone();
    edited[4].entry.outcome = Outcome::Ok;
    edited[4].entry.actor = "someone-else".into();
    let result = verify(&export(&edited), &head, &key);
    assert!(
        matches!(result, Err(VerifyError::BadSignature { seq: 5 })),
        "{result:?}"
    );

    // (b) A deleted entry leaves a gap.
    let mut deleted = entries.clone();
    deleted.remove(2);
    assert_eq!(first_bad(verify(&export(&deleted), &head, &key)), Some(3));

    // (c) Two entries swapped.
    let mut swapped = entries.clone();
    swapped.swap(5, 6);
    assert_eq!(first_bad(verify(&export(&swapped), &head, &key)), Some(6));
    // … or swapped with their seq numbers rewritten to fit.
    let mut renumbered = entries.clone();
    renumbered.swap(5, 6);
    renumbered[5].entry.seq = 6;
    renumbered[6].entry.seq = 7;
    assert_eq!(
        first_bad(verify(&export(&renumbered), &head, &key)),
        Some(6)
    );

    // (d) An entry slipped in, the rest renumbered; signed with another key.
    let forger = Signer::from_seed([10; 32]);
    let mut inserted: Vec<SignedEntry> = entries[..3].to_vec();
    inserted.push(entry(4, "ghost").sign(&forger));
    for e in &entries[3..] {
        let mut moved = e.entry.clone();
        moved.seq += 1;
        inserted.push(moved.sign(&forger));
    }
    assert_eq!(first_bad(verify(&export(&inserted), &head, &key)), Some(4));
    // … or appended without renumbering.
    let mut doubled = entries.clone();
    doubled.insert(3, entries[3].clone());
    assert_eq!(first_bad(verify(&export(&doubled), &head, &key)), Some(5));

    // The tail cut off below the checkpoint.
    assert_eq!(
        first_bad(verify(&export(&entries[..6]), &head, &key)),
        Some(7)
    );

    // A line changed in form only, or replaced by junk.
    let mut text: Vec<String> = entries.iter().map(SignedEntry::to_line).collect();
    text[1] = text[1].replace(",\"at\":", ", \"at\":");
    let spaced = text.join("\n") + "\n";
    assert_eq!(first_bad(verify(&spaced, &head, &key)), Some(2));
    let mut text: Vec<String> = entries.iter().map(SignedEntry::to_line).collect();
    text[0] = SignedEntry::line_from_stored(1, b"garbage", &[0; 64]);
    assert_eq!(
        first_bad(verify(&(text.join("\n") + "\n"), &head, &key)),
        Some(1)
    );
}

#[test]
fn a_log_rewritten_by_the_key_holder_fails_the_root_and_the_older_checkpoint() {
    let signer = Signer::from_seed([9; 32]);
    let key = signer.public_key();
    let entries = log(&signer, 8);
    let older = checkpoint(&signer, &entries[..5]);
    let newer = checkpoint(&signer, &entries);
    verify_consistency(&older, &newer, &export(&entries), &key).unwrap();
    verify_consistency(&older, &older, &export(&entries), &key).unwrap();
    assert!(matches!(
        verify_consistency(&newer, &older, &export(&entries), &key),
        Err(VerifyError::OlderIsLarger { .. })
    ));

    // Entry 2 rewritten and re-signed with the real key, after `older`.
    let mut rewritten = entries.clone();
    rewritten[1] = entry(2, "rewritten").sign(&signer);
    // Every entry checks out on its own, but not against the old root.
    let result = verify(&export(&rewritten), &newer, &key);
    assert!(
        matches!(result, Err(VerifyError::RootMismatch { tree_size: 8, .. })),
        "{result:?}"
    );
    // A new checkpoint signed over the rewritten log verifies alone …
    let resigned = checkpoint(&signer, &rewritten);
    verify(&export(&rewritten), &resigned, &key).unwrap();
    // … but does not extend the checkpoint the regulator already holds.
    let result = verify_consistency(&older, &resigned, &export(&rewritten), &key);
    assert!(
        matches!(result, Err(VerifyError::Rewritten { tree_size: 5, .. })),
        "{result:?}"
    );
    // A rewrite after the older checkpoint's entries passes against it,
    // but not against a checkpoint that covered them.
    let mut late = entries.clone();
    late[6] = entry(7, "late").sign(&signer);
    let resigned = checkpoint(&signer, &late);
    verify_consistency(&older, &resigned, &export(&late), &key).unwrap();
    let result = verify_consistency(&newer, &resigned, &export(&late), &key);
    assert!(
        matches!(result, Err(VerifyError::Rewritten { tree_size: 8, .. })),
        "{result:?}"
    );
}

#[test]
fn checkpoints_from_another_key_or_edited_are_refused() {
    let signer = Signer::from_seed([9; 32]);
    let key = signer.public_key();
    let entries = log(&signer, 4);
    let other = Signer::from_seed([11; 32]);
    let foreign = checkpoint(&other, &entries);
    assert!(matches!(
        verify(&export(&entries), &foreign, &key),
        Err(VerifyError::Checkpoint(_))
    ));
    let mut edited = checkpoint(&signer, &entries[..3]);
    edited.checkpoint.tree_size = 4;
    assert!(matches!(
        verify(&export(&entries), &edited, &key),
        Err(VerifyError::Checkpoint(_))
    ));
}
