//! `finpool simulate` and `finpool bench` as a user runs them, on a small
//! trace generated here (the public trace is not needed).

use std::process::Command;

fn finpool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_finpool"))
        .args(args)
        .output()
        .expect("running finpool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 12 nodes, 48 GPUs; pods asking for about 90% of them.
fn write_trace(dir: &std::path::Path) -> (String, String) {
    let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..12 {
        let (gpus, model, cpu) = if i % 3 == 0 {
            (8, "G2", 96000)
        } else {
            (2, "T4", 104000)
        };
        nodes.push_str(&format!("node-{i:02},{cpu},393216,{gpus},{model}\n"));
    }
    let mut pods = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    let shapes = [
        (1, 1000, ""),
        (1, 470, ""),
        (1, 810, ""),
        (0, 0, ""),
        (2, 1000, "G2"),
        (1, 320, "T4"),
    ];
    for i in 0..60 {
        let (n, m, spec) = shapes[i % shapes.len()];
        pods.push_str(&format!("pod-{i:03},4000,8192,{n},{m},{spec}\n"));
    }
    let (n, p) = (dir.join("nodes.csv"), dir.join("openb_pod_list_small.csv"));
    std::fs::write(&n, nodes).unwrap();
    std::fs::write(&p, pods).unwrap();
    (n.display().to_string(), p.display().to_string())
}

#[test]
fn simulate_openb_reports_plots_and_its_placements_recount() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, pods) = write_trace(dir.path());
    let svg = dir.path().join("curve.svg");
    let placements = dir.path().join("placements.csv");
    let (ok, stdout, stderr) = finpool(&[
        "simulate",
        "openb",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--seeds",
        "1..3",
        "-o",
        "json",
        "--plot",
        svg.to_str().unwrap(),
        "--placements",
        placements.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let reports = reports.as_array().expect("one report per policy");
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["finpool", "fgd", "bestfit", "random"]);
    for r in reports {
        assert_eq!(r["workload"], "small");
        assert_eq!(r["seeds"], serde_json::json!([1, 2, 3]));
        let curve = r["alloc_pct"].as_object().unwrap();
        assert_eq!(curve.len(), 130);
        assert!(curve.contains_key("1") && curve.contains_key("130"));
        assert_eq!(r["per_seed"].as_object().unwrap().len(), 3);
        for key in ["failed_pods", "wall_seconds", "decisions_per_second"] {
            assert!(r[key].is_number(), "{key}");
        }
    }
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.starts_with("<svg") && drawn.contains("finpool"),
        "an SVG with a line per policy"
    );

    // The independent recount agrees with every policy and seed.
    let (ok, stdout, stderr) = finpool(&[
        "simulate",
        "check",
        "--nodes",
        &nodes,
        "--placements",
        placements.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let checked: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for r in reports {
        let policy = r["policy"].as_str().unwrap();
        assert!(checked[policy]["violations"].as_array().unwrap().is_empty());
        for (seed, pct) in r["per_seed"].as_object().unwrap() {
            let recount = checked[policy]["seeds"][seed]["alloc_pct"]
                .as_f64()
                .unwrap();
            assert!(
                (recount - pct.as_f64().unwrap()).abs() < 1e-9,
                "{policy} seed {seed}"
            );
        }
    }
}

#[test]
fn bad_simulation_input_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _) = write_trace(dir.path());
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,one,1000\n",
    )
    .unwrap();
    let (ok, _, stderr) = finpool(&[
        "simulate",
        "openb",
        "--nodes",
        &nodes,
        "--pods",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("line 2: num_gpu"), "{stderr}");
    let (ok, _, stderr) = finpool(&[
        "simulate", "openb", "--nodes", &nodes, "--pods", &nodes, "--policy", "fastest",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--policy"), "{stderr}");
}

#[test]
fn the_plot_file_type_follows_its_extension() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, pods) = write_trace(dir.path());
    let png = dir.path().join("curve.png");
    let (ok, stdout, stderr) = finpool(&[
        "simulate",
        "openb",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--seeds",
        "1",
        "--policy",
        "finpool,random",
        "-o",
        "json",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    serde_json::from_str::<serde_json::Value>(&stdout).expect("stdout is JSON alone");
    // stderr is not a terminal here: no progress bar.
    assert!(
        !stderr.contains("simulating") && !stderr.contains('%'),
        "{stderr}"
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    // Any other extension is refused before the run, and nothing is written.
    let gif = dir.path().join("curve.gif");
    let (ok, _, stderr) = finpool(&[
        "simulate",
        "openb",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--plot",
        gif.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--plot") && stderr.contains(".svg or .png"),
        "{stderr}"
    );
    assert!(!gif.exists());
}

#[test]
fn bench_scheduler_prints_both_policies() {
    let (ok, stdout, stderr) = finpool(&[
        "bench",
        "scheduler",
        "--nodes",
        "200",
        "--gpus-per-node",
        "8",
        "--pending",
        "2000",
        "--runs",
        "3",
        "--warmup",
        "0",
        "-o",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["warmup_runs"], 0);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["decisions"], 2000);
        for key in ["decisions_per_second", "p50_us", "p99_us"] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key}");
        }
        // Three timed runs; the one reported is their median.
        let mut rates: Vec<f64> = r["runs_decisions_per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(rates.len(), 3);
        rates.sort_by(f64::total_cmp);
        assert_eq!(r["decisions_per_second"].as_f64().unwrap(), rates[1]);
    }
    assert!(report["finpool_to_bestfit_speed"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_scheduler_refuses_zero_runs() {
    let (ok, _, stderr) = finpool(&["bench", "scheduler", "--runs", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--runs"), "{stderr}");
}

/// On a terminal, long work draws a progress bar on stderr (and clears it);
/// stdout still carries only the JSON. `script` gives the command a
/// terminal; in a pipe (the test above) no bar is drawn.
#[test]
fn a_progress_bar_is_drawn_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let command = format!(
        "{} bench scheduler --nodes 200 --gpus-per-node 8 --pending 2000 -o json > {}",
        env!("CARGO_BIN_EXE_finpool"),
        json.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("running script (util-linux)");
    let terminal = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{terminal}");
    assert!(
        terminal.contains('%') && terminal.contains('['),
        "no progress bar on the terminal: {terminal:?}"
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
        .expect("stdout is JSON alone");
    assert_eq!(report["results"].as_array().unwrap().len(), 2);
}
