//! An independent recount from a `--placements` file: replays each seed's
//! placements against the node list, checks capacity, and recomputes the
//! allocation. It shares no code with the simulator's accounting.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use serde::Serialize;

use crate::experiment::CYCLES_PER_PERCENT;
use crate::openb::OpenbNode;

/// The placements file's header.
pub const HEADER: &str = "seed,pod,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,node,gpus";

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SeedCheck {
    pub pods: usize,
    pub failed: usize,
    pub allocated_milli: u64,
    pub alloc_pct: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckReport {
    pub capacity_milli: u64,
    pub seeds: BTreeMap<String, SeedCheck>,
    /// Capacity or consistency problems found; empty when all is well.
    pub violations: Vec<String>,
}

/// One CSV line for a placement row.
pub fn line(seed: u64, row: &crate::experiment::PlacementRow) -> String {
    let p = &row.pod;
    let (node, gpus) = match &row.placed {
        Some((node, gpus)) => (
            node.clone(),
            gpus.iter()
                .map(|(i, m)| format!("{i}:{m}"))
                .collect::<Vec<_>>()
                .join(";"),
        ),
        None => ("failed".to_owned(), String::new()),
    };
    format!(
        "{seed},{},{},{},{},{},{},{node},{gpus}",
        p.name,
        p.cpu_milli,
        p.memory_mib,
        p.num_gpu,
        p.gpu_milli,
        p.gpu_spec.join("|")
    )
}

pub fn check(nodes: &[OpenbNode], placements: impl Read) -> Result<CheckReport, String> {
    check_at(nodes, placements, None)
}

/// As [`check`], but of the state when arrivals first reached `at`% of
/// the GPU capacity: the rows (in arrival order) up to the end of the
/// scheduling cycle in which they did, the way the simulator takes its
/// reading ([`CYCLES_PER_PERCENT`] cycles per percent arrived). Without
/// `at`, every row counts.
pub fn check_at(
    nodes: &[OpenbNode],
    placements: impl Read,
    at: Option<u64>,
) -> Result<CheckReport, String> {
    let by_name: HashMap<&str, &OpenbNode> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let capacity: u64 = nodes.iter().map(|n| n.gpus as u64 * 1000).sum();
    let mut r = csv::ReaderBuilder::new().from_reader(placements);
    let headers = r.headers().map_err(|e| e.to_string())?.clone();
    if headers.iter().collect::<Vec<_>>().join(",") != HEADER {
        return Err(format!("expected the header {HEADER:?}"));
    }
    // Per seed: node -> (cpu, memory, per-GPU milli).
    type Usage = (u64, u64, Vec<u64>);
    let mut use_by_seed: BTreeMap<String, HashMap<String, Usage>> = BTreeMap::new();
    let mut report = CheckReport {
        capacity_milli: capacity,
        ..Default::default()
    };
    // Per seed: (arrived milli, cycles run, the reading's cycle is past).
    let mut arrival: HashMap<String, (u64, u64, bool)> = HashMap::new();
    for record in r.records() {
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let num = |i: usize| {
            field(i)
                .parse::<u64>()
                .map_err(|_| format!("line {line}: column {i} is not a number"))
        };
        let seed = field(0).to_owned();
        let (cpu, mem, num_gpu, milli) = (num(2)?, num(3)?, num(4)?, num(5)?);
        if let Some(at) = at {
            let (arrived, cycles, past) = arrival.entry(seed.clone()).or_default();
            if *past {
                continue;
            }
            *arrived += num_gpu * milli;
            // A cycle each time arrivals reach the next step of capacity;
            // the reading is taken after the first cycle at `at`%.
            if *arrived * 100 * CYCLES_PER_PERCENT >= capacity * (*cycles + 1) {
                *cycles = *arrived * 100 * CYCLES_PER_PERCENT / capacity.max(1);
                *past = *arrived * 100 >= capacity * at;
            }
        }
        let spec: Vec<&str> = field(6).split('|').filter(|s| !s.is_empty()).collect();
        let node_name = field(7);
        let entry = report.seeds.entry(seed.clone()).or_default();
        entry.pods += 1;
        if node_name == "failed" {
            entry.failed += 1;
            continue;
        }
        let Some(node) = by_name.get(node_name) else {
            report
                .violations
                .push(format!("line {line}: unknown node {node_name}"));
            continue;
        };
        // The spec constrains the pod's GPUs; a CPU-only pod has none.
        if num_gpu > 0 && !spec.is_empty() && !spec.contains(&node.model.as_str()) {
            report.violations.push(format!(
                "line {line}: {} is not among the allowed models {spec:?}",
                node.model
            ));
        }
        let gpus: Vec<(u64, u64)> = field(8)
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|g| {
                let (i, m) = g.split_once(':').unwrap_or((g, "0"));
                Ok((
                    i.parse::<u64>()
                        .map_err(|_| format!("line {line}: bad GPU {g}"))?,
                    m.parse::<u64>()
                        .map_err(|_| format!("line {line}: bad GPU {g}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        if gpus.len() as u64 != num_gpu || gpus.iter().any(|(_, m)| *m != milli) {
            report.violations.push(format!(
                "line {line}: assignment {:?} does not match the request {num_gpu} x {milli}",
                field(8)
            ));
        }
        let usage = use_by_seed
            .entry(seed.clone())
            .or_default()
            .entry(node_name.to_owned())
            .or_insert_with(|| (0, 0, vec![0; node.gpus as usize]));
        usage.0 += cpu;
        usage.1 += mem;
        if usage.0 > node.cpu_milli || usage.1 > node.memory_mib {
            report.violations.push(format!(
                "line {line}: node {node_name} CPU or memory oversubscribed"
            ));
        }
        for (i, m) in gpus {
            match usage.2.get_mut(i as usize) {
                Some(u) => {
                    *u += m;
                    if *u > 1000 {
                        report.violations.push(format!(
                            "line {line}: GPU {i} of {node_name} oversubscribed ({u} milli)"
                        ));
                    }
                }
                None => report
                    .violations
                    .push(format!("line {line}: {node_name} has no GPU {i}")),
            }
            entry.allocated_milli += m;
        }
    }
    for seed in report.seeds.values_mut() {
        seed.alloc_pct = if capacity == 0 {
            0.0
        } else {
            seed.allocated_milli as f64 * 100.0 / capacity as f64
        };
    }
    Ok(report)
}
