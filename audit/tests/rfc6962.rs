//! The RFC 6962 test vectors used by certificate-transparency-go and the
//! Go `merkle` package (transparency-dev/merkle, proof/verify_test.go):
//! eight leaves, the tree hash at every size from 1 to 8, and their
//! inclusion and consistency proofs. The numbers are retyped here; our
//! proofs must equal theirs, verify, and stop verifying when changed.

use finpool_audit::hex;
use finpool_audit::merkle::{
    self, Hash, ProofError, consistency_proof, inclusion_proof, leaf_hash, verify_consistency,
    verify_inclusion,
};

fn h(text: &str) -> Hash {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// The leaves' data.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// The tree hash over the first 1, 2, … 8 leaves.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (leaf index, tree size, audit path).
const INCLUSION: &[(u64, u64, &[&str])] = &[
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (older size, newer size, consistency proof).
const CONSISTENCY: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

const EMPTY_TREE: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

fn leaves() -> Vec<Hash> {
    LEAVES
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
}

fn root_of(size: u64) -> Hash {
    h(ROOTS[size as usize - 1])
}

fn path(p: &[&str]) -> Vec<Hash> {
    p.iter().map(|x| h(x)).collect()
}

#[test]
fn tree_hashes_at_every_size_match_the_vectors() {
    let leaves = leaves();
    assert_eq!(merkle::root(&[]), h(EMPTY_TREE));
    assert_eq!(merkle::empty_root(), h(EMPTY_TREE));
    let mut frontier = merkle::Frontier::new();
    for size in 1..=8 {
        assert_eq!(
            merkle::root(&leaves[..size]),
            root_of(size as u64),
            "size {size}"
        );
        frontier.push(leaves[size - 1]);
        assert_eq!(frontier.root(), root_of(size as u64), "frontier at {size}");
    }
}

#[test]
fn inclusion_proofs_match_the_vectors_and_verify() {
    let leaves = leaves();
    for (index, size, expected) in INCLUSION {
        let expected = path(expected);
        let tree = &leaves[..*size as usize];
        assert_eq!(
            inclusion_proof(*index as usize, tree).unwrap(),
            expected,
            "PATH({index}, D[{size}])"
        );
        let root = root_of(*size);
        let leaf = leaves[*index as usize];
        verify_inclusion(*index, *size, &leaf, &expected, &root).unwrap();

        // The probes of the Go tests: each must fail.
        let mut probes: Vec<(u64, u64, Hash, Hash, Vec<Hash>)> = vec![
            (index.wrapping_sub(1), *size, leaf, root, expected.clone()),
            (index + 1, *size, leaf, root, expected.clone()),
            (index ^ 2, *size, leaf, root, expected.clone()),
            (*index, size * 2, leaf, root, expected.clone()),
            (*index, size / 2, leaf, root, expected.clone()),
            (
                *index,
                *size,
                leaf_hash(b"WrongLeaf"),
                root,
                expected.clone(),
            ),
            (*index, *size, leaf, h(EMPTY_TREE), expected.clone()),
            (*index, *size, leaf, h(SOME_HASH), expected.clone()),
            (
                *index,
                *size,
                leaf,
                root,
                [expected.clone(), vec![root]].concat(),
            ),
            (
                *index,
                *size,
                leaf,
                root,
                [vec![root], expected.clone()].concat(),
            ),
        ];
        for i in 0..expected.len() {
            let mut wrong = expected.clone();
            wrong[i][0] ^= 8;
            probes.push((*index, *size, leaf, root, wrong));
        }
        if !expected.is_empty() {
            probes.push((
                *index,
                *size,
                leaf,
                root,
                expected[..expected.len() - 1].to_vec(),
            ));
        }
        if expected.len() > 1 {
            let mut wrong = vec![expected[0], h(SOME_HASH)];
            wrong.extend_from_slice(&expected[1..]);
            probes.push((*index, *size, leaf, root, wrong));
        }
        for (n, (i, s, l, r, p)) in probes.iter().enumerate() {
            // The Go suite skips the index probes that land on the same
            // valid position (leaf 0 of a one-leaf tree has no neighbour).
            if (*i, *s, l, r, p) == (*index, *size, &leaf, &root, &expected) {
                continue;
            }
            assert!(
                verify_inclusion(*i, *s, l, p, r).is_err(),
                "probe {n} of PATH({index}, D[{size}]) verified"
            );
        }
    }
}

#[test]
fn consistency_proofs_match_the_vectors_and_verify() {
    let leaves = leaves();
    for (old, new, expected) in CONSISTENCY {
        let expected = path(expected);
        let tree = &leaves[..*new as usize];
        assert_eq!(
            consistency_proof(*old as usize, tree).unwrap(),
            expected,
            "PROOF({old}, D[{new}])"
        );
        let (r1, r2) = (root_of(*old), root_of(*new));
        verify_consistency(*old, *new, &r1, &r2, &expected).unwrap();
        if expected.is_empty() {
            continue;
        }
        let mut probes: Vec<(u64, u64, Hash, Hash, Vec<Hash>)> = vec![
            (old - 1, *new, r1, r2, expected.clone()),
            (old + 1, *new, r1, r2, expected.clone()),
            (old ^ 2, *new, r1, r2, expected.clone()),
            (*old, new * 2, r1, r2, expected.clone()),
            (*old, new / 2, r1, r2, expected.clone()),
            (*old, *new, leaf_hash(b"WrongRoot"), r2, expected.clone()),
            (*old, *new, r1, leaf_hash(b"WrongRoot"), expected.clone()),
            (*old, *new, r2, r1, expected.clone()),
            (*old, *new, r1, r2, vec![]),
            (*old, *new, r1, r2, [expected.clone(), vec![r1]].concat()),
            (*old, *new, r1, r2, [expected.clone(), vec![r2]].concat()),
            (*old, *new, r1, r2, [vec![r1], expected.clone()].concat()),
            (*old, *new, r1, r2, [vec![r2], expected.clone()].concat()),
            (
                *old,
                *new,
                r1,
                r2,
                [vec![expected[0]], expected.clone()].concat(),
            ),
            (*old, *new, r1, r2, expected[..expected.len() - 1].to_vec()),
        ];
        for i in 0..expected.len() {
            let mut wrong = expected.clone();
            wrong[i][0] ^= 16;
            probes.push((*old, *new, r1, r2, wrong));
        }
        for (n, (o, s, a, b, p)) in probes.iter().enumerate() {
            assert!(
                verify_consistency(*o, *s, a, b, p).is_err(),
                "probe {n} of PROOF({old}, D[{new}]) verified"
            );
        }
    }
}

#[test]
fn consistency_edge_cases_follow_rfc_9162() {
    let (a, b) = (leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2"));
    let empty = h(EMPTY_TREE);
    // Always consistent.
    verify_consistency(0, 0, &a, &a, &[]).unwrap();
    verify_consistency(0, 1, &a, &b, &[]).unwrap();
    verify_consistency(1, 1, &b, &b, &[]).unwrap();
    // Different roots at one size.
    assert_eq!(
        verify_consistency(0, 0, &a, &b, &[]),
        Err(ProofError::RootMismatch)
    );
    assert!(verify_consistency(1, 1, &a, &b, &[]).is_err());
    assert!(verify_consistency(1, 1, &empty, &b, &[]).is_err());
    // Back in time.
    assert!(verify_consistency(1, 0, &a, &b, &[]).is_err());
    assert!(verify_consistency(2, 1, &a, &b, &[]).is_err());
    // A proof is needed, and only then.
    assert!(verify_consistency(1, 2, &a, &b, &[]).is_err());
    assert!(verify_consistency(0, 0, &empty, &empty, &[empty]).is_err());
    assert!(verify_consistency(0, 1, &empty, &empty, &[empty]).is_err());
    assert!(verify_consistency(1, 1, &empty, &empty, &[empty]).is_err());
}
