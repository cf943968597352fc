//! The plan as data: what `--dry-run` prints (JSON and text) and golden-plan tests compare. Every decision
//! that places a byte is here (partitions with offsets and GUIDs, each filesystem's geometry and identities,
//! where GRUB goes, the boot entries); the per-file trees are not (they are the closure's, listed by the report).

use kiln_formats::ext4;
use serde::Serialize;

use super::{BootFsKind, Plan};
use crate::cli::{Format, Layout};
use crate::seed::format_uuid;

/// What the image will be.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Partition layout.
    pub layout: Layout,
    /// Output format.
    pub format: Format,
    /// Virtual disk size in bytes.
    pub size_bytes: u64,
    /// Logical sector size of the disk in bytes.
    pub sector_size: u64,
    /// The seed identities were derived from.
    pub seed: String,
    /// Partitions (empty for `--layout none`).
    pub partitions: Vec<PartitionSummary>,
    /// Bootloaders installed.
    pub bootloaders: Vec<&'static str>,
    /// The root filesystem.
    pub root_fs: FsSummary,
    /// The store's own read-only filesystem and its dm-verity hash tree (`efi-verity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSummary>,
    /// The FAT32 filesystems of the boot partitions.
    pub boot_filesystems: Vec<BootFsSummary>,
    /// Swap signatures: partition, label, UUID.
    pub swaps: Vec<SwapSummary>,
    /// GRUB's core.img and where it goes, for BIOS boots.
    pub grub: Option<GrubSummary>,
    /// Each boot entry: its id, title and full kernel command line (the default one is `default_entry`).
    pub entries: Vec<EntryLine>,
    /// The index in `entries` of the one booted by default.
    pub default_entry: usize,
}

/// One partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSummary {
    /// Number (1-based).
    pub number: usize,
    /// GPT name.
    pub name: String,
    /// Type GUID.
    pub type_guid: String,
    /// Partition GUID.
    pub guid: String,
    /// Start in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The planned root filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct FsSummary {
    /// Filesystem type.
    pub kind: &'static str,
    /// Label.
    pub label: String,
    /// UUID.
    pub uuid: String,
    /// Byte offset in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes in all.
    pub inodes: u64,
    /// Inodes free.
    pub free_inodes: u64,
    /// Bytes free.
    pub free_bytes: u64,
    /// Journal size in bytes.
    pub journal_bytes: u64,
    /// Descriptor blocks reserved for online growth.
    pub reserved_gdt_blocks: u64,
}

/// The store's filesystem and hash tree.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSummary {
    /// Filesystem type.
    pub kind: &'static str,
    /// Label.
    pub label: String,
    /// UUID.
    pub uuid: String,
    /// Its partition.
    pub partition: usize,
    /// Byte offset in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Inodes.
    pub inodes: u64,
    /// The hash tree's partition.
    pub verity_partition: usize,
    /// The hash partition's byte offset in the image.
    pub verity_offset: u64,
    /// Bytes of the hash device (superblock and tree).
    pub verity_bytes: u64,
    /// Its salt, hex.
    pub verity_salt: String,
    /// The root hash, hex: known once the store is written (`None` in a dry run).
    pub root_hash: Option<String>,
}

/// A boot partition's FAT32 filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct BootFsSummary {
    /// Which one.
    pub kind: BootFsKind,
    /// Its partition.
    pub partition: usize,
    /// Bytes per sector.
    pub sector_size: u64,
    /// Sectors in the filesystem.
    pub sectors: u32,
    /// Sectors per cluster.
    pub sectors_per_cluster: u32,
    /// Clusters, and how many the files use.
    pub clusters: u32,
    /// Clusters the files and directories use.
    pub used_clusters: u32,
    /// Files.
    pub files: usize,
}

/// A swap partition's signature.
#[derive(Debug, Clone, Serialize)]
pub struct SwapSummary {
    /// Its partition.
    pub partition: usize,
    /// Its label.
    pub label: String,
    /// Its UUID.
    pub uuid: String,
}

/// GRUB for BIOS.
#[derive(Debug, Clone, Serialize)]
pub struct GrubSummary {
    /// The sector core.img starts at.
    pub core_lba: u64,
    /// Its length in sectors.
    pub core_sectors: u64,
}

/// One boot entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryLine {
    /// Its file stem (`nixos-generation-1`, …).
    pub id: String,
    /// Its menu title.
    pub title: String,
    /// The kernel command line.
    pub command_line: String,
}

impl Plan {
    /// The plan as data, for an output of `format`.
    #[must_use]
    pub fn summary(&self, format: Format) -> ImageSummary {
        let partitions = self.disk.as_ref().map(|d| partitions(&d.layout)).unwrap_or_default();
        let boot_filesystems = self.disk.as_ref().map_or_else(Vec::new, |d| {
            d.boot_fs
                .iter()
                .map(|b| {
                    let g = &b.plan.geometry;
                    BootFsSummary {
                        kind: b.kind,
                        partition: b.number,
                        sector_size: g.sector_size.bytes().get(),
                        sectors: g.total_sectors,
                        sectors_per_cluster: g.sectors_per_cluster,
                        clusters: g.clusters,
                        used_clusters: b.plan.used_clusters,
                        files: b.plan.files.len(),
                    }
                })
                .collect()
        });
        let grub = self
            .disk
            .as_ref()
            .and_then(|d| d.grub.as_ref())
            .map(|g| GrubSummary { core_lba: g.core_lba().0, core_sectors: g.core_extent().sectors() });
        ImageSummary {
            layout: self.layout,
            format,
            size_bytes: self.virtual_size,
            sector_size: self.disk.as_ref().map_or(512, |d| d.layout.sector_size().bytes().get()),
            seed: self.seed.as_str().to_owned(),
            partitions,
            bootloaders: [(self.boots.uefi, "systemd-boot"), (self.boots.bios, "grub")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| *name)
                .collect(),
            root_fs: self.root_summary(),
            store: self.store_summary(),
            boot_filesystems,
            swaps: self.disk.as_ref().map_or_else(Vec::new, |d| {
                d.swaps
                    .iter()
                    .map(|w| SwapSummary { partition: w.number, label: w.label.clone(), uuid: format_uuid(&w.uuid) })
                    .collect()
            }),
            grub,
            entries: self
                .entries
                .iter()
                .map(|e| EntryLine { id: e.id.clone(), title: e.title.clone(), command_line: e.cmdline.clone() })
                .collect(),
            default_entry: self.default_entry,
        }
    }

    fn store_summary(&self) -> Option<StoreSummary> {
        let (s, d) = (self.store.as_ref()?, self.disk.as_ref()?);
        let o = s.plan.options();
        Some(StoreSummary {
            kind: "erofs",
            label: String::from_utf8_lossy(&o.label).into_owned(),
            uuid: format_uuid(&o.uuid),
            partition: d.numbers.store?,
            offset: s.offset,
            size_bytes: s.plan.size_bytes(),
            inodes: s.tree.len() as u64,
            verity_partition: d.numbers.store_verity?,
            verity_offset: s.verity_offset,
            verity_bytes: s.verity.hash_bytes(),
            verity_salt: kiln_formats::verity::hex(&s.verity.salt),
            root_hash: None,
        })
    }

    fn root_summary(&self) -> FsSummary {
        let (plan, opts) = (&self.root.plan, &self.root.options);
        let g = &plan.geometry;
        FsSummary {
            kind: "ext4",
            label: String::from_utf8_lossy(&opts.label).into_owned(),
            uuid: format_uuid(&opts.uuid),
            offset: self.root.offset,
            size_bytes: plan.size_bytes(),
            groups: g.groups,
            inodes: g.inodes(),
            free_inodes: plan.free_inodes,
            free_bytes: plan.free_blocks * ext4::BLOCK,
            journal_bytes: (plan.journal.end - plan.journal.start) * ext4::BLOCK,
            reserved_gdt_blocks: g.reserved_gdt,
        }
    }
}

impl ImageSummary {
    /// Fills in what the store's root hash decides, once it is written: the hash, the store partitions' GUIDs
    /// (its halves) and `usrhash=` in the command lines.
    pub fn set_root_hash(&mut self, hash: &[u8; 32]) {
        let Some(store) = self.store.as_mut() else { return };
        let hex = kiln_formats::verity::hex(hash);
        store.root_hash = Some(hex.clone());
        for (n, half) in [(store.partition, &hash[..16]), (store.verity_partition, &hash[16..])] {
            if let Some(p) = self.partitions.iter_mut().find(|p| p.number == n) {
                p.guid = kiln_formats::disk::Guid::from_bytes(half.try_into().expect("16 bytes")).to_string();
            }
        }
        let placeholder = format!("usrhash={}", super::ROOT_HASH_PLACEHOLDER);
        for e in &mut self.entries {
            e.command_line = e.command_line.replace(&placeholder, &format!("usrhash={hex}"));
        }
    }
}

fn partitions(layout: &kiln_formats::disk::DiskLayout) -> Vec<PartitionSummary> {
    (1..=layout.partitions().len())
        .map(|n| {
            let p = &layout.partitions()[n - 1];
            let range = layout.byte_range(n).expect("partition");
            PartitionSummary {
                number: n,
                name: p.name.clone(),
                type_guid: p.type_guid.to_string(),
                guid: p.guid.to_string(),
                start: range.start.get(),
                size: range.end.get() - range.start.get(),
            }
        })
        .collect()
}
