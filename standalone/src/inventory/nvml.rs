//! The GPUs on this machine, from NVIDIA's management library.

use std::collections::BTreeMap;

use finpool_domain::{Gpu, GpuClass, Inventory, MigSlice, Node};
use nvml_wrapper::Nvml;

/// This machine as a one-node inventory. Fails cleanly (with the reason)
/// when libnvidia-ml cannot be loaded or initialised, which is the normal
/// case on a machine without an NVIDIA driver.
pub fn detect() -> Result<Inventory, String> {
    let nvml = Nvml::init().map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut gpus = Vec::new();
    for i in 0..count {
        let device = nvml
            .device_by_index(i)
            .map_err(|e| format!("GPU {i}: {e}"))?;
        let name = device.name().map_err(|e| format!("GPU {i} name: {e}"))?;
        let memory_mib = device
            .memory_info()
            .map_err(|e| format!("GPU {i} memory: {e}"))?
            .total
            / (1024 * 1024);
        let uuid = device.uuid().map_err(|e| format!("GPU {i} uuid: {e}"))?;
        let class = class_name(&name);
        classes.entry(class.clone()).or_insert(memory_mib);
        gpus.push(Gpu {
            index: i,
            uuid,
            class,
            memory_mib,
            mig: mig_slices(&device, memory_mib),
        });
    }
    let node = Node {
        name: hostname(),
        labels: [("location".to_owned(), "local".to_owned())].into(),
        cpu_milli: std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000,
        memory_mib: total_memory_mib().unwrap_or(0),
        gpus,
        models: Vec::new(),
    };
    Ok(Inventory {
        classes: classes
            .into_iter()
            .map(|(name, memory_mib)| GpuClass { name, memory_mib })
            .collect(),
        nodes: vec![node],
    })
}

/// The card's MIG devices when it is in MIG mode; none otherwise. A slice's
/// compute comes from its profile in the device name (`… MIG 3g.40gb`),
/// else from its share of the card's memory.
fn mig_slices(device: &nvml_wrapper::Device<'_>, card_memory_mib: u64) -> Vec<MigSlice> {
    match device.mig_mode() {
        Ok(mode) if mode.current == 1 => {}
        _ => return Vec::new(),
    }
    let count = device.mig_device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| {
            let mig = device.mig_device_by_index(i).ok()?;
            let uuid = mig.uuid().ok()?;
            let name = mig.name().unwrap_or_default();
            let memory_mib = mig.memory_info().ok()?.total / (1024 * 1024);
            let by_profile = name
                .split_whitespace()
                .find_map(|w| MigSlice::from_profile(w, uuid.clone()));
            Some(by_profile.unwrap_or_else(|| MigSlice {
                profile: String::new(),
                uuid,
                milli: (memory_mib * 1000 / card_memory_mib.max(1)) as u32,
                memory_mib,
            }))
        })
        .collect()
}

/// "NVIDIA H200" becomes "H200"; spaces become dashes.
fn class_name(device_name: &str) -> String {
    device_name
        .trim()
        .trim_start_matches("NVIDIA ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
}

fn hostname() -> String {
    let raw = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "localhost".into());
    let cleaned: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        "localhost".into()
    } else {
        cleaned.chars().take(63).collect()
    }
}

fn total_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_become_class_names() {
        assert_eq!(class_name("NVIDIA H200"), "H200");
        assert_eq!(class_name("NVIDIA A100-SXM4-80GB"), "A100-SXM4-80GB");
        assert_eq!(class_name("Tesla V100 PCIe"), "Tesla-V100-PCIe");
    }

    /// On a machine without a driver, NVML fails with a reason instead of
    /// panicking; with one, it finds at least one GPU.
    #[test]
    fn detection_fails_cleanly_or_finds_gpus() {
        match detect() {
            Ok(inv) => assert!(inv.gpu_count() > 0),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
