//! What the agent learns about the node's GPUs: the cards (discovered once,
//! and again now and then) and their use (sampled often). [`NvmlDevices`]
//! asks NVIDIA's management library; [`FakeDevices`] stands in for it in
//! tests and demos.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Mutex;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus};
use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

/// NVML_NVLINK_MAX_LINKS of nvml.h (nvml-wrapper does not re-export it):
/// 18 links per card on Hopper, 12 on Ampere; a link past a card's last
/// answers `InvalidArg`.
pub const NVLINK_MAX_LINKS: u32 = 18;

const MIB: u64 = 1024 * 1024;

/// One physical card, as discovery found it. This is also the element of
/// the `finpool.io/gpu-inventory` annotation (camelCase JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    /// The NVML index (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    /// `GPU-…`.
    pub uuid: String,
    /// The product name as NVML gives it, e.g. `NVIDIA H100 80GB HBM3`.
    pub product: String,
    /// Total framebuffer memory.
    pub memory_mib: u64,
    #[serde(default)]
    pub mig: Mig,
    /// The indices of the cards this one reaches over NVLink (directly or
    /// through NVSwitch), ascending.
    #[serde(default)]
    pub nvlink_peers: Vec<u32>,
}

/// The card's MIG state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mig {
    /// The card supports MIG (A100, H100, H200 …), enabled or not.
    #[serde(default)]
    pub capable: bool,
    /// MIG mode is on: only the instances below run work.
    pub enabled: bool,
    #[serde(default)]
    pub instances: Vec<MigInstance>,
}

/// A MIG device: a hardware-isolated slice of a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigInstance {
    /// The profile, e.g. `3g.40gb`; empty when NVML's name carries none.
    pub profile: String,
    /// `MIG-…`.
    pub uuid: String,
    pub memory_mib: u64,
}

/// One card's use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub index: u32,
    /// Percent of the last sample period a kernel ran. NVML does not
    /// report it for cards in MIG mode: `None` there.
    pub utilization_percent: Option<u32>,
    pub memory_used_mib: u64,
}

/// Why the GPUs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The normal case on a node without an NVIDIA driver, or when the
    /// driver's libnvidia-ml.so.1 is not mounted into the container.
    #[error(
        "NVML is unavailable ({reason}): no NVIDIA driver on this node, or libnvidia-ml.so.1 \
         is not visible to the agent"
    )]
    Unavailable { reason: NvmlError },
    /// NVML started but lists no cards.
    #[error("NVML found no GPUs on this node")]
    NoGpus,
    /// A call about the whole node failed (per-card failures leave the
    /// card out instead, with a warning).
    #[error("NVML could not read the {what}: {reason}")]
    Nvml {
        what: &'static str,
        reason: NvmlError,
    },
    /// The blocking thread that talks to NVML died.
    #[error("the NVML worker failed: {0}")]
    Worker(String),
}

/// The node's GPUs. Calls may block (NVML talks to the driver), so async
/// callers run them on a blocking thread.
pub trait Devices: Send + Sync {
    /// Every readable card, by ascending index.
    fn discover(&self) -> Result<Vec<Card>, DeviceError>;
    /// The use of every readable card, by ascending index.
    fn sample(&self) -> Result<Vec<Sample>, DeviceError>;
}

/// The node's GPUs through NVML.
pub struct NvmlDevices {
    nvml: Nvml,
}

impl NvmlDevices {
    /// Loads the driver's libnvidia-ml.so.1 from the library path.
    pub fn init() -> Result<Self, DeviceError> {
        Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|reason| DeviceError::Unavailable { reason })
    }

    /// Loads NVML from `library` (a path, or a name the loader searches).
    pub fn init_from(library: &OsStr) -> Result<Self, DeviceError> {
        Nvml::builder()
            .lib_path(library)
            .init()
            .map(|nvml| Self { nvml })
            .map_err(|reason| DeviceError::Unavailable { reason })
    }
}

/// A PCI address, compared as numbers: NVML's bus id strings come in two
/// widths of domain (`0000:` and `00000000:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
}

impl From<&nvml_wrapper::struct_wrappers::device::PciInfo> for PciAddress {
    fn from(info: &nvml_wrapper::struct_wrappers::device::PciInfo) -> Self {
        Self {
            domain: info.domain,
            bus: info.bus,
            device: info.device,
        }
    }
}

/// The cards at the far end of `remote` links: those whose own address is
/// among them. Links to NVSwitches (HGX boards) match no card.
pub fn direct_peers(cards: &[(u32, PciAddress)], remote: &[PciAddress]) -> Vec<u32> {
    let remote: BTreeSet<_> = remote.iter().collect();
    let mut peers: Vec<u32> = cards
        .iter()
        .filter(|(_, address)| remote.contains(address))
        .map(|(index, _)| *index)
        .collect();
    peers.sort_unstable();
    peers.dedup();
    peers
}

/// A MIG profile (`3g.40gb`, `1g.10gb+me`) from an NVML MIG device name
/// such as `NVIDIA H100 80GB HBM3 MIG 3g.40gb`.
pub fn mig_profile(device_name: &str) -> Option<&str> {
    device_name.split_whitespace().find(|word| {
        word.split_once("g.").is_some_and(|(g, rest)| {
            !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && rest.contains("gb")
        })
    })
}

impl Devices for NvmlDevices {
    fn discover(&self) -> Result<Vec<Card>, DeviceError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|reason| DeviceError::Nvml {
                what: "device count",
                reason,
            })?;
        let mut cards = Vec::new();
        // Handles, PCI addresses and active-link ends of the readable cards.
        let mut handles = Vec::new();
        let mut addresses = Vec::new();
        let mut remotes: BTreeMap<u32, Vec<PciAddress>> = BTreeMap::new();
        for index in 0..count {
            let Some((card, device, address, remote)) = read_card(&self.nvml, index) else {
                continue;
            };
            cards.push(card);
            handles.push((index, device));
            addresses.push((index, address));
            remotes.insert(index, remote);
        }
        // Direct GPU-to-GPU links match a card's PCI address; through
        // NVSwitch they do not, so NVML's NVLink P2P status is asked too,
        // for the pairs where both cards have an active link.
        let mut peers: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (index, remote) in &remotes {
            for peer in direct_peers(&addresses, remote) {
                if peer != *index {
                    peers.entry(*index).or_default().insert(peer);
                    peers.entry(peer).or_default().insert(*index);
                }
            }
        }
        let linked: Vec<_> = handles
            .iter()
            .filter(|(index, _)| remotes.get(index).is_some_and(|r| !r.is_empty()))
            .collect();
        for (i, (a, device_a)) in linked.iter().enumerate() {
            for (b, device_b) in &linked[i + 1..] {
                match device_a.p2p_status(device_b, P2pCapabilitiesIndex::NvLink) {
                    Ok(P2pStatus::Ok) => {
                        peers.entry(*a).or_default().insert(*b);
                        peers.entry(*b).or_default().insert(*a);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(gpu = a, peer = b, error = %e, "NVLink P2P status unreadable")
                    }
                }
            }
        }
        for card in &mut cards {
            card.nvlink_peers = peers
                .remove(&card.index)
                .map(|p| p.into_iter().collect())
                .unwrap_or_default();
        }
        Ok(cards)
    }

    fn sample(&self) -> Result<Vec<Sample>, DeviceError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|reason| DeviceError::Nvml {
                what: "device count",
                reason,
            })?;
        let mut samples = Vec::new();
        for index in 0..count {
            let device = match self.nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "GPU unreadable: no sample");
                    continue;
                }
            };
            let memory_used_mib = match device.memory_info() {
                Ok(m) => m.used / MIB,
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "GPU memory unreadable: no sample");
                    continue;
                }
            };
            let utilization_percent = match device.utilization_rates() {
                Ok(u) => Some(u.gpu),
                // MIG mode: NVML reports no whole-card utilization.
                Err(NvmlError::NotSupported) => None,
                Err(e) => {
                    tracing::debug!(gpu = index, error = %e, "GPU utilization unreadable");
                    None
                }
            };
            samples.push(Sample {
                index,
                utilization_percent,
                memory_used_mib,
            });
        }
        Ok(samples)
    }
}

type ReadCard<'n> = (Card, nvml_wrapper::Device<'n>, PciAddress, Vec<PciAddress>);

/// One card, or `None` (with a warning naming what failed) when NVML
/// cannot read what the inventory needs: a card that fell off the bus is
/// better left out than published half-known.
fn read_card(nvml: &Nvml, index: u32) -> Option<ReadCard<'_>> {
    let warn = |what: &str, e: NvmlError| {
        tracing::warn!(gpu = index, error = %e, "leaving the GPU out: NVML cannot read its {what}");
    };
    let device = nvml
        .device_by_index(index)
        .map_err(|e| warn("handle", e))
        .ok()?;
    let uuid = device.uuid().map_err(|e| warn("UUID", e)).ok()?;
    let product = device.name().map_err(|e| warn("name", e)).ok()?;
    let memory_mib = device
        .memory_info()
        .map_err(|e| warn("memory", e))
        .ok()?
        .total
        / MIB;
    let address = PciAddress::from(&device.pci_info().map_err(|e| warn("PCI address", e)).ok()?);
    let mig = read_mig(&device, index);
    let remote = active_link_ends(&device, index);
    let card = Card {
        index,
        uuid,
        product,
        memory_mib,
        mig,
        nvlink_peers: Vec::new(),
    };
    Some((card, device, address, remote))
}

fn read_mig(device: &nvml_wrapper::Device<'_>, index: u32) -> Mig {
    let mode = match device.mig_mode() {
        Ok(mode) => mode,
        Err(NvmlError::NotSupported) => return Mig::default(),
        Err(e) => {
            tracing::warn!(gpu = index, error = %e, "MIG mode unreadable: published as not capable");
            return Mig::default();
        }
    };
    // NVML_DEVICE_MIG_ENABLE is 1.
    let enabled = mode.current == 1;
    let mut instances = Vec::new();
    if enabled {
        // The count is the most the card can hold; unused slots answer
        // NotFound.
        let slots = device.mig_device_count().unwrap_or(0);
        for slot in 0..slots {
            let mig = match device.mig_device_by_index(slot) {
                Ok(m) => m,
                Err(NvmlError::NotFound) => continue,
                Err(e) => {
                    tracing::warn!(gpu = index, slot, error = %e, "MIG device unreadable");
                    continue;
                }
            };
            let (Ok(uuid), Ok(memory)) = (mig.uuid(), mig.memory_info()) else {
                tracing::warn!(gpu = index, slot, "MIG device's UUID or memory unreadable");
                continue;
            };
            let name = mig.name().unwrap_or_default();
            instances.push(MigInstance {
                profile: mig_profile(&name).unwrap_or_default().to_owned(),
                uuid,
                memory_mib: memory.total / MIB,
            });
        }
    }
    Mig {
        capable: true,
        enabled,
        instances,
    }
}

/// The PCI addresses at the far end of the card's active NVLink links.
fn active_link_ends(device: &nvml_wrapper::Device<'_>, index: u32) -> Vec<PciAddress> {
    let mut ends = Vec::new();
    for link in 0..NVLINK_MAX_LINKS {
        let link = device.link_wrapper_for(link);
        match link.is_active() {
            Ok(true) => match link.remote_pci_info() {
                Ok(info) => ends.push(PciAddress::from(&info)),
                Err(e) => {
                    tracing::debug!(gpu = index, link = link.link(), error = %e, "NVLink far end unreadable")
                }
            },
            Ok(false) => {}
            // No NVLink on this card, or no link this high: nothing more.
            Err(NvmlError::NotSupported | NvmlError::InvalidArg) => break,
            Err(e) => {
                tracing::debug!(gpu = index, link = link.link(), error = %e, "NVLink state unreadable")
            }
        }
    }
    ends
}

/// The product NVML reports for an H100 SXM5 card.
pub const FAKE_PRODUCT: &str = "NVIDIA H100 80GB HBM3";
/// Its memory in MiB, as NVML reports it.
pub const FAKE_MEMORY_MIB: u64 = 81_559;

/// A fake node for tests and demos: H100 SXM5 cards, all-to-all NVLink as
/// on an HGX board, deterministic UUIDs, MIG where asked, and samples the
/// test sets.
pub struct FakeDevices {
    cards: Vec<Card>,
    samples: Mutex<BTreeMap<u32, Sample>>,
}

impl FakeDevices {
    /// `count` cards, every one NVLinked to every other, MIG off, idle.
    pub fn nvlink_node(count: u32) -> Self {
        let cards = (0..count)
            .map(|index| Card {
                index,
                uuid: format!("GPU-f1a00000-0000-4000-8000-{index:012x}"),
                product: FAKE_PRODUCT.to_owned(),
                memory_mib: FAKE_MEMORY_MIB,
                mig: Mig {
                    capable: true,
                    enabled: false,
                    instances: Vec::new(),
                },
                nvlink_peers: (0..count).filter(|p| *p != index).collect(),
            })
            .collect();
        let samples = (0..count)
            .map(|index| {
                let idle = Sample {
                    index,
                    utilization_percent: Some(0),
                    memory_used_mib: 0,
                };
                (index, idle)
            })
            .collect();
        Self {
            cards,
            samples: Mutex::new(samples),
        }
    }

    /// Card `index` in MIG mode with instances of `profiles` (`3g.40gb`:
    /// 40 GiB each). An index that is not a card changes nothing.
    pub fn with_mig(mut self, index: u32, profiles: &[&str]) -> Self {
        let Some(card) = self.cards.iter_mut().find(|c| c.index == index) else {
            return self;
        };
        card.mig.enabled = true;
        card.mig.instances = profiles
            .iter()
            .enumerate()
            .map(|(slot, profile)| MigInstance {
                profile: (*profile).to_owned(),
                uuid: format!("MIG-f1a00000-{index:04x}-4000-8000-{slot:012x}"),
                memory_mib: profile_memory_mib(profile),
            })
            .collect();
        // As NVML: no whole-card utilization in MIG mode.
        if let Ok(mut samples) = self.samples.lock()
            && let Some(sample) = samples.get_mut(&index)
        {
            sample.utilization_percent = None;
        }
        self
    }

    /// Sets what the next samples report for card `index`.
    pub fn set_sample(&self, index: u32, utilization_percent: Option<u32>, memory_used_mib: u64) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.insert(
                index,
                Sample {
                    index,
                    utilization_percent,
                    memory_used_mib,
                },
            );
        }
    }

    pub fn cards(&self) -> &[Card] {
        &self.cards
    }
}

/// `3g.40gb` → 40 GiB; 0 when the profile names no size.
fn profile_memory_mib(profile: &str) -> u64 {
    profile
        .split_once("g.")
        .and_then(|(_, rest)| rest.split_once("gb"))
        .and_then(|(gb, _)| gb.parse::<u64>().ok())
        .map_or(0, |gb| gb * 1024)
}

impl Devices for FakeDevices {
    fn discover(&self) -> Result<Vec<Card>, DeviceError> {
        Ok(self.cards.clone())
    }

    fn sample(&self) -> Result<Vec<Sample>, DeviceError> {
        let samples = self
            .samples
            .lock()
            .map_err(|_| DeviceError::Worker("the fake's samples lock is poisoned".into()))?;
        Ok(samples.values().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bus: u32) -> PciAddress {
        PciAddress {
            domain: 0,
            bus,
            device: 0,
        }
    }

    #[test]
    fn direct_links_match_cards_by_pci_address_and_switches_match_none() {
        let cards = [(0, at(0x18)), (1, at(0x2a)), (2, at(0x3a))];
        // Two links to card 1, one to an NVSwitch at 0x80.
        assert_eq!(direct_peers(&cards, &[at(0x2a), at(0x2a), at(0x80)]), [1]);
        assert!(direct_peers(&cards, &[at(0x80)]).is_empty());
        let other_domain = PciAddress {
            domain: 1,
            ..at(0x2a)
        };
        assert!(direct_peers(&cards, &[other_domain]).is_empty());
    }

    #[test]
    fn mig_profiles_come_from_device_names() {
        assert_eq!(
            mig_profile("NVIDIA H100 80GB HBM3 MIG 3g.40gb"),
            Some("3g.40gb")
        );
        assert_eq!(
            mig_profile("NVIDIA A100-SXM4-40GB MIG 1g.5gb+me"),
            Some("1g.5gb+me")
        );
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3"), None);
        assert_eq!(mig_profile(""), None);
        assert_eq!(profile_memory_mib("3g.40gb"), 40 * 1024);
        assert_eq!(profile_memory_mib("odd"), 0);
    }
}
