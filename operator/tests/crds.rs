//! The CRDs offline: the chart holds exactly what `finpool crd` prints, and
//! the sample objects in `charts/finpool/examples/` pass the generated
//! schemas' types and CEL rules, while the bad ones are refused with the
//! message each names (`# expect: …`).

use std::path::{Path, PathBuf};

use finpool_operator::crd::{self, BaseModel, InferenceJob, Tenant};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/finpool")
}

#[test]
fn the_chart_holds_the_generated_crds() {
    let path = chart().join("crds/finpool.io.yaml");
    let stored = std::fs::read_to_string(&path).unwrap();
    assert!(
        stored == crd::yaml(),
        "{} is stale: run `finpool crd > {}`",
        path.display(),
        path.display()
    );
}

#[test]
fn every_crd_has_columns_a_short_name_and_cel_rules() {
    for c in crd::all() {
        let names = &c.spec.names;
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{}",
            names.kind
        );
        let version = &c.spec.versions[0];
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{}",
            names.kind
        );
        let schema = serde_json::to_string(&version.schema).unwrap();
        assert!(
            schema.contains("x-kubernetes-validations"),
            "{}",
            names.kind
        );
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }
}

/// Checks one document: its kind's type and CEL rules.
fn check(text: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    macro_rules! typed {
        ($t:ty) => {{
            let object: $t = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
            object.validate_cel().map_err(|e| e.to_string())
        }};
    }
    match kind.as_str() {
        "Tenant" => typed!(Tenant),
        "BaseModel" => typed!(BaseModel),
        "InferenceJob" => typed!(InferenceJob),
        other => Err(format!("unknown kind {other:?}")),
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_sample_objects_are_valid() {
    let files = yaml_files(&chart().join("examples"));
    assert!(files.len() >= 3);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if let Err(e) = check(&text) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn the_bad_samples_are_refused_with_their_message() {
    let files = yaml_files(&chart().join("examples/bad"));
    assert!(files.len() >= 3);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect:"))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()))
            .trim()
            .to_owned();
        match check(&text) {
            Ok(()) => panic!("{}: accepted", file.display()),
            Err(e) => assert!(e.contains(&expect), "{}: {e}", file.display()),
        }
    }
}
