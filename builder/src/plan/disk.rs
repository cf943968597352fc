//! Whole disks: the partition layouts users know from nixpkgs' make-disk-image, with systemd-boot on a FAT32
//! ESP for UEFI and GRUB embedded for BIOS. Everything is planned before the first byte is written.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{
    Bytes, DiskLayout, DiskSize, GptAttributes, Guid, PartitionRequest, PartitionSize, PartitionTable, SectorSize,
    partition_type,
};
use kiln_formats::fat;

use crate::boot::{self, Boots, Entry, grub_bios, systemd_boot};
use crate::cli::Layout;
use crate::profile::{PartSize, PartitionSpec, Role};
use crate::resolve::Resolved;
use crate::resolve::options::Options;
use crate::seed::Seed;

/// Default ESP size: room for several generations of kernels and initrds.
pub const DEFAULT_ESP: u64 = 512 << 20;
/// Default ESP size beside an XBOOTLDR partition, which holds the kernels: systemd-boot alone needs little, but
/// FAT32 needs 65,525 clusters (about 33 MiB with 512-byte sectors, 260 MiB with 4096-byte ones).
const DEFAULT_SMALL_ESP: u64 = 128 << 20;
/// The BIOS boot partition, which holds GRUB's core.img.
const BIOS_BOOT: u64 = 1 << 20;

/// What a disk needs besides the root filesystem, planned.
#[derive(Debug)]
pub struct DiskParts {
    /// The ESP's tree, when the layout has one.
    pub esp: Option<fat::Tree>,
    /// The ESP's size in bytes.
    pub esp_size: u64,
    /// The XBOOTLDR partition's tree (entries, kernels, initrds), for `efixbootldr`.
    pub xbootldr: Option<fat::Tree>,
    /// The XBOOTLDR partition's size in bytes.
    pub xbootldr_size: u64,
    /// GRUB's package directory, when the layout boots by BIOS.
    pub grub: Option<PathBuf>,
    /// The disk's logical sector size.
    pub sector: SectorSize,
}

/// Resolves the bootloader inputs (and refuses what is missing) before anything is planned: the ESP's and
/// XBOOTLDR partition's files and sizes, and the GRUB package.
pub fn parts(r: &Resolved, opts: &Options, boots: Boots, entries: &[Entry]) -> Result<DiskParts> {
    let (store, closure, system, sector) = (&r.store, &r.closure, &r.system, opts.sector_size);
    let (esp_size, xbootldr_size) = custom_sizes(opts.custom_partitions(), opts.esp_size);
    let (default_specialisation, build_time) = (opts.default_specialisation.as_deref(), i64::from(opts.timestamp));
    if !boots.fit_sector_size(sector) {
        bail!(
            "--sector-size {}: GRUB's BIOS boot code reads 512-byte sectors; 4Kn disks boot by UEFI (--layout efi)",
            sector.bytes().get()
        );
    }
    let esp = if boots.uefi {
        let opts = systemd_boot::Options {
            timeout: boot::MENU_TIMEOUT,
            default_specialisation: default_specialisation.map(str::to_owned),
            build_time,
            uki: opts.uki.clone(),
        };
        let files = systemd_boot::esp_files(store, system, entries, &opts)?;
        let (mut esp, mut xbootldr) = (fat::Tree::new(), fat::Tree::new());
        for (path, source) in files {
            let on_xbootldr = boots.xbootldr && systemd_boot::on_xbootldr(&path);
            let (tree, what) = if on_xbootldr { (&mut xbootldr, "XBOOTLDR") } else { (&mut esp, "ESP") };
            tree.add_file(&path, source).with_context(|| format!("{what} file {path}"))?;
        }
        Some((esp, boots.xbootldr.then_some(xbootldr)))
    } else {
        None
    };
    let (esp, xbootldr) = esp.map_or((None, None), |(e, x)| (Some(e), x));
    let fat_min = fat::min_size(&fat::Tree::new(), sector).context("sizing FAT32")?;
    let (esp_size, xbootldr_size) = if boots.xbootldr {
        (esp_size.unwrap_or(DEFAULT_SMALL_ESP.max(fat_min)), xbootldr_size.unwrap_or(DEFAULT_ESP))
    } else {
        (esp_size.unwrap_or(DEFAULT_ESP), 0)
    };
    for (tree, size, what) in [(&esp, esp_size, "ESP"), (&xbootldr, xbootldr_size, "XBOOTLDR partition")] {
        let Some(tree) = tree else { continue };
        let need = fat::min_size(tree, sector).with_context(|| format!("sizing the {what}"))?;
        if need > size {
            let holds = if what == "ESP" && !boots.xbootldr { "the kernels and initrds" } else { "its files" };
            bail!(
                "the {what} is too small for {holds}: they need {need} bytes ({} MiB), the {what} has {size} ({} MiB)",
                need.div_ceil(1 << 20),
                size >> 20
            );
        }
    }
    let grub = if boots.bios { Some(grub_bios::find_grub(store, closure, opts.grub.as_deref())?) } else { None };
    Ok(DiskParts { esp, esp_size, xbootldr, xbootldr_size, grub, sector })
}

/// The ESP and XBOOTLDR sizes: a profile's partition list gives them, else `--esp-size` (or the defaults).
fn custom_sizes(custom: Option<&[PartitionSpec]>, esp_size: Option<u64>) -> (Option<u64>, Option<u64>) {
    let size_of = |role| {
        custom?.iter().find(|p| p.role == role).and_then(|p| match p.size {
            PartSize::Bytes(b) => Some(b.0),
            PartSize::Fill => None,
        })
    };
    (size_of(Role::Esp).or(esp_size), size_of(Role::Xbootldr))
}

/// Partition numbers (1-based) of the layout's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbers {
    /// The ESP.
    pub esp: Option<usize>,
    /// The XBOOTLDR partition.
    pub xbootldr: Option<usize>,
    /// Swap partitions, with their labels.
    pub swaps: Vec<(usize, String)>,
    /// The store partition (`efi-verity`).
    pub store: Option<usize>,
    /// The store's dm-verity hash partition (`efi-verity`).
    pub store_verity: Option<usize>,
    /// The root filesystem.
    pub root: usize,
}

/// The sizes of the store's partitions (`efi-verity`): its filesystem's and its hash tree's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSizes {
    /// The store filesystem.
    pub fs: u64,
    /// The dm-verity hash device (superblock and tree).
    pub hash: u64,
}

/// GPT partition names (Linux: `PARTLABEL`) of the store partitions, as nixpkgs' verity store module labels them.
pub const STORE_LABEL: &str = "store";
/// The store's hash partition's name.
pub const STORE_VERITY_LABEL: &str = "store-verity";

/// The root partition's type for the system's architecture (the architecture table's, from the Discoverable
/// Partitions Specification); generic Linux data for a system type the table has no row for.
fn root_type(system_type: &str) -> Guid {
    crate::arch::Arch::of(system_type).map_or(partition_type::LINUX_DATA, |a| a.root_type)
}

/// The partition table: BIOS boot (GPT with GRUB), ESP, root; or an MBR with the root alone. With `store`
/// (`efi-verity`), the store's hash partition and the store partition come between the ESP and the root (their
/// GUIDs are placeholders here: the root hash gives them when the store is written).
#[allow(clippy::too_many_arguments)]
pub fn layout(
    kind: Layout,
    parts: &DiskParts,
    system_type: &str,
    seed: &Seed,
    store: Option<StoreSizes>,
    root: PartitionSize,
    disk: DiskSize,
) -> Result<(DiskLayout, Numbers)> {
    let guid = |what: &str| Guid::v4_from_bytes(seed.bytes16(what));
    let root_type = root_type(system_type);
    let request = |name: &str, type_guid, guid, attributes, size| PartitionRequest {
        name: name.to_owned(),
        type_guid,
        guid,
        attributes,
        size,
    };
    let (table, requests) = if kind == Layout::Legacy {
        let signature = u32::from_le_bytes(seed.bytes16("mbr-signature")[..4].try_into().expect("4 bytes"));
        let root = request("", partition_type::LINUX_DATA, Guid::NIL, GptAttributes::LEGACY_BIOS_BOOTABLE, root);
        (PartitionTable::Mbr { disk_signature: signature }, vec![root])
    } else {
        let mut requests = Vec::new();
        if parts.grub.is_some() {
            let size = PartitionSize::AtLeast(Bytes(BIOS_BOOT));
            requests.push(request(
                "BIOS boot",
                partition_type::BIOS_BOOT,
                guid("gpt-bios-boot"),
                GptAttributes::NONE,
                size,
            ));
        }
        if parts.esp.is_some() {
            let size = PartitionSize::AtLeast(Bytes(parts.esp_size));
            requests.push(request("ESP", partition_type::ESP, guid("gpt-esp"), GptAttributes::NONE, size));
        }
        if parts.xbootldr.is_some() {
            let size = PartitionSize::AtLeast(Bytes(parts.xbootldr_size));
            let guid = guid("gpt-xbootldr");
            requests.push(request("XBOOTLDR", partition_type::XBOOTLDR, guid, GptAttributes::NONE, size));
        }
        if let Some(sizes) = store {
            let arch = crate::arch::Arch::of(system_type)?;
            let (hash, fs) = (PartitionSize::AtLeast(Bytes(sizes.hash)), PartitionSize::AtLeast(Bytes(sizes.fs)));
            let none = GptAttributes::NONE;
            requests.push(request(STORE_VERITY_LABEL, arch.usr_verity_type, guid("gpt-store-verity"), none, hash));
            requests.push(request(STORE_LABEL, arch.usr_type, guid("gpt-store"), none, fs));
        }
        requests.push(request("nixos", root_type, guid("gpt-root"), GptAttributes::NONE, root));
        (PartitionTable::Gpt { disk_guid: guid("gpt-disk") }, requests)
    };
    let number = |name: &str| requests.iter().position(|r| r.name == name).map(|i| i + 1);
    let numbers = Numbers {
        esp: number("ESP"),
        xbootldr: number("XBOOTLDR"),
        swaps: Vec::new(),
        store: store.and(number(STORE_LABEL)),
        store_verity: store.and(number(STORE_VERITY_LABEL)),
        root: requests.len(),
    };
    let layout = DiskLayout::sequential(parts.sector, table, disk, requests).context("laying out partitions")?;
    Ok((layout, numbers))
}

/// The size partition `n` of a profile's list asks for: the root's what the root filesystem needs (or more), a
/// boot partition at least its planned size, `fill` only with a disk size, swap at least what swap needs.
fn spec_size(
    n: usize,
    spec: &PartitionSpec,
    fixed: Option<u64>,
    root: PartitionSize,
    disk: DiskSize,
) -> Result<PartitionSize> {
    let size = match (spec.role, spec.size) {
        (Role::Root, PartSize::Fill) => root,
        (Role::Root, PartSize::Bytes(b)) => match root {
            PartitionSize::AtLeast(Bytes(need)) if b.0 < need => bail!(
                "partition {n} (root) is {} bytes, and the root filesystem needs {need} ({} MiB)",
                b.0,
                need.div_ceil(1 << 20)
            ),
            _ => PartitionSize::AtLeast(Bytes(b.0)),
        },
        (_, PartSize::Fill) => {
            if matches!(disk, DiskSize::Fit) {
                bail!(
                    "partition {n} ({}) has size = \"fill\": that needs a disk size (--size), or give it a size",
                    spec.role.name()
                );
            }
            PartitionSize::Fill
        }
        (_, PartSize::Bytes(b)) => PartitionSize::AtLeast(Bytes(fixed.unwrap_or(b.0).max(b.0))),
    };
    if spec.role == Role::Swap
        && let PartitionSize::AtLeast(Bytes(b)) = size
        && b < kiln_formats::swap::MIN_BYTES
    {
        bail!("partition {n} (swap) is {b} bytes; swap needs at least {}", kiln_formats::swap::MIN_BYTES);
    }
    Ok(size)
}

/// The partition table a profile lists (`[[partitions]]`), GPT, in its order. `root` is how big the root
/// partition must be when the profile says `fill` (or at least, for a given size); `disk` as for [`layout`].
/// Roles take their Discoverable Partitions Spec types and default names unless the profile gives its own;
/// an `empty` entry is space left without a partition entry.
pub fn custom_layout(
    specs: &[PartitionSpec],
    parts: &DiskParts,
    system_type: &str,
    seed: &Seed,
    root: PartitionSize,
    disk: DiskSize,
) -> Result<(DiskLayout, Numbers)> {
    let root_type = root_type(system_type);
    let mut requests = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let n = i + 1;
        let (default_name, default_type, fixed) = match spec.role {
            Role::Esp => ("ESP", partition_type::ESP, Some(parts.esp_size)),
            Role::Xbootldr => ("XBOOTLDR", partition_type::XBOOTLDR, Some(parts.xbootldr_size)),
            Role::BiosBoot => ("BIOS boot", partition_type::BIOS_BOOT, None),
            Role::Root => ("nixos", root_type, None),
            Role::Swap => ("swap", partition_type::LINUX_SWAP, None),
            Role::Linux => ("data", partition_type::LINUX_DATA, None),
            Role::Empty => ("", partition_type::LINUX_DATA, None),
        };
        let count = seen.entry(spec.role).or_insert(0);
        *count += 1;
        if *count > 1 && !matches!(spec.role, Role::Swap | Role::Linux | Role::Empty) {
            bail!("partition {n}: a second {} partition (the profile may list one)", spec.role.name());
        }
        let size = spec_size(n, spec, fixed, root, disk)?;
        let guid = Guid::v4_from_bytes(seed.bytes16(&format!("gpt-partition-{n}")));
        let attributes = GptAttributes::NONE;
        let name = spec.name.clone().unwrap_or_else(|| default_name.to_owned());
        requests.push(PartitionRequest {
            name,
            type_guid: spec.type_guid.unwrap_or(default_type),
            guid,
            attributes,
            size,
        });
    }
    let table = PartitionTable::Gpt { disk_guid: Guid::v4_from_bytes(seed.bytes16("gpt-disk")) };
    let laid = DiskLayout::sequential(parts.sector, table, disk, requests).context("laying out partitions")?;
    // `empty` entries held their place while laying out; the table does not list them.
    let kept: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].role != Role::Empty).collect();
    let partitions = kept.iter().map(|&i| laid.partitions()[i].clone()).collect();
    let layout = DiskLayout::new(parts.sector, laid.size(), table, partitions).context("laying out partitions")?;
    let number = |role: Role| kept.iter().position(|&i| specs[i].role == role).map(|k| k + 1);
    let swaps = kept
        .iter()
        .enumerate()
        .filter(|&(_, &i)| specs[i].role == Role::Swap)
        .map(|(k, &i)| (k + 1, specs[i].label.clone().unwrap_or_default()))
        .collect();
    let numbers = Numbers {
        esp: number(Role::Esp),
        xbootldr: number(Role::Xbootldr),
        swaps,
        store: None,
        store_verity: None,
        root: number(Role::Root).context("the partitions have no root partition")?,
    };
    Ok((layout, numbers))
}

/// The index of the entry booted by default: the specialisation asked for, else the generation itself.
pub fn default_entry(entries: &[Entry], specialisation: Option<&str>) -> Result<usize> {
    entries.iter().position(|e| e.specialisation.as_deref() == specialisation).ok_or_else(|| {
        let known: Vec<_> = entries.iter().filter_map(|e| e.specialisation.as_deref()).collect();
        anyhow::anyhow!(
            "--default-specialisation {:?}: the system has no such specialisation (it has {known:?})",
            specialisation.unwrap_or_default()
        )
    })
}
