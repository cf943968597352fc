//! The report as text for people: one fact per line, keys in a column, details indented under what they belong
//! to.

use std::fmt::Write as _;

use super::{Filesystem, GrubBios, NixOs, Report, SystemdBoot, Table};
use crate::units::human_bytes;

/// Width of the key column, indentation included.
const KEY: usize = 16;

struct Out(String);

impl Out {
    /// `key value` at `depth` levels of indentation.
    fn line(&mut self, depth: usize, key: &str, value: impl std::fmt::Display) {
        let key = format!("{:indent$}{key}", "", indent = 2 * depth);
        let _ = writeln!(self.0, "{key:<KEY$} {value}");
    }
}

fn sized(n: u64) -> String {
    format!("{n} bytes ({})", human_bytes(n))
}

fn on(partition: Option<u32>) -> String {
    partition.map_or_else(|| "the whole image".to_owned(), |n| format!("partition {n}"))
}

impl Report {
    /// The report as aligned text.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut o = Out(String::new());
        o.line(0, "image", self.image.display());
        o.line(0, "size", sized(self.size.get()));
        match &self.table {
            Table::Gpt { disk_guid, first_usable_lba, last_usable_lba, backup_header_lba, entries, entry_size } => {
                o.line(0, "table", "gpt");
                self.sector_line(&mut o);
                o.line(0, "disk GUID", disk_guid);
                o.line(0, "usable", format!("LBA {first_usable_lba} to {last_usable_lba}"));
                o.line(0, "backup header", format!("LBA {backup_header_lba}"));
                o.line(0, "entries", format!("{entries} of {entry_size} bytes"));
            }
            Table::Dos { disk_signature } => {
                o.line(0, "table", "dos");
                self.sector_line(&mut o);
                o.line(0, "disk signature", format!("{disk_signature:#010x}"));
            }
            Table::None => o.line(0, "table", "none (the image is one filesystem)"),
        }
        if let Some(fs) = &self.filesystem {
            filesystem(&mut o, 0, fs);
        }
        for p in &self.partitions {
            o.line(
                0,
                &format!("partition {}", p.number),
                p.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(p.type_name),
            );
            o.line(1, "type", format!("{} ({})", p.kind, p.type_name));
            if let Some(guid) = &p.guid {
                o.line(1, "GUID", guid);
            }
            o.line(1, "start", format!("{} (LBA {})", p.start, p.first_lba));
            o.line(1, "end", format!("{} (last LBA {})", p.end, p.last_lba));
            o.line(1, "size", sized(p.size.get()));
            if let Some(a) = &p.attributes {
                let names = if a.names.is_empty() { "none".to_owned() } else { a.names.join(" ") };
                o.line(1, "attributes", format!("{names} ({:#018x})", a.raw.0));
            }
            if p.bootable {
                o.line(1, "bootable", "yes");
            }
            filesystem(&mut o, 1, &p.filesystem);
        }
        match (&self.bootloaders.systemd_boot, &self.bootloaders.grub_bios) {
            (None, None) => o.line(0, "bootloader", "none found"),
            (sd, grub) => {
                if let Some(sd) = sd {
                    systemd_boot(&mut o, sd);
                }
                if let Some(grub) = grub {
                    grub_bios(&mut o, grub);
                }
            }
        }
        match &self.nixos {
            Some(n) => nixos(&mut o, n),
            None => o.line(0, "NixOS", "none found (no ext4 filesystem with /nix)"),
        }
        for w in &self.warnings {
            o.line(0, "warning", w);
        }
        o.0
    }

    fn sector_line(&self, o: &mut Out) {
        if let Some(s) = self.sector_size {
            o.line(0, "sector size", s);
        }
    }
}

fn filesystem(o: &mut Out, depth: usize, fs: &Filesystem) {
    match fs {
        Filesystem::Ext4(e) => {
            o.line(depth, "filesystem", "ext4");
            o.line(depth + 1, "label", &e.label);
            o.line(depth + 1, "UUID", &e.uuid);
            o.line(depth + 1, "block size", e.block_size);
            o.line(depth + 1, "size", sized(e.size.get()));
            o.line(depth + 1, "free", sized(e.free.get()));
            o.line(depth + 1, "inodes", format!("{} ({} free)", e.inodes, e.free_inodes));
            o.line(depth + 1, "state", e.state);
            o.line(depth + 1, "features", e.features.join(" "));
        }
        Filesystem::Fat(f) => {
            o.line(depth, "filesystem", f.fat_type);
            o.line(depth + 1, "label", &f.label);
            o.line(depth + 1, "volume id", &f.volume_id);
            o.line(depth + 1, "cluster size", f.cluster_size);
            o.line(depth + 1, "size", sized(f.size.get()));
            if let Some(free) = f.free {
                o.line(depth + 1, "free", sized(free.get()));
            }
        }
        Filesystem::Erofs(e) => {
            o.line(depth, "filesystem", "erofs");
            o.line(depth + 1, "label", &e.label);
            o.line(depth + 1, "UUID", &e.uuid);
            o.line(depth + 1, "size", sized(e.size.get()));
            o.line(depth + 1, "inodes", e.inodes);
        }
        Filesystem::Verity(v) => {
            o.line(depth, "filesystem", "dm-verity hash tree");
            o.line(depth + 1, "hash", v.algorithm);
            o.line(depth + 1, "data blocks", format!("{} of 4096 bytes", v.data_blocks));
            o.line(depth + 1, "salt", &v.salt);
            o.line(depth + 1, "UUID", &v.uuid);
            o.line(depth + 1, "root hash", v.root_hash.as_deref().unwrap_or("(one data block: no tree)"));
        }
        Filesystem::Other { name } => o.line(depth, "filesystem", format!("{name} (not read further)")),
        Filesystem::Unknown => o.line(depth, "filesystem", "unknown"),
    }
}

fn systemd_boot(o: &mut Out, sd: &SystemdBoot) {
    o.line(0, "systemd-boot", format!("on {}", on(sd.partition)));
    for b in &sd.binaries {
        let what = b.loader.as_deref().unwrap_or("not systemd-boot");
        o.line(1, "binary", format!("{} ({} bytes, {what})", b.path, b.size));
    }
    o.line(1, "default", sd.default.as_deref().unwrap_or("(not set)"));
    o.line(1, "timeout", sd.timeout.as_deref().unwrap_or("(not set)"));
    for e in &sd.entries {
        o.line(1, "entry", if e.default { format!("{} (default)", e.file) } else { e.file.clone() });
        let fields = [("title", &e.title), ("version", &e.version), ("linux", &e.linux)];
        for (key, value) in fields {
            if let Some(v) = value {
                o.line(2, key, v);
            }
        }
        for i in &e.initrd {
            o.line(2, "initrd", i);
        }
        if let Some(options) = &e.options {
            o.line(2, "options", options);
        }
        for m in &e.missing {
            o.line(2, "missing", m);
        }
    }
}

fn grub_bios(o: &mut Out, g: &GrubBios) {
    o.line(0, "GRUB (BIOS)", "boot.img in sector 0");
    let place = match g.core_partition {
        Some(n) => format!("partition {n}"),
        None => "the gap after the MBR".to_owned(),
    };
    let length = g.core_sectors.map_or_else(|| "not GRUB's diskboot".to_owned(), |n| format!("{n} sectors"));
    o.line(1, "core.img", format!("LBA {} (byte {}) in {place}, {length}", g.core_lba, g.core_offset));
    let Some(cfg) = &g.config else {
        o.line(1, "config", "no grub.cfg found");
        return;
    };
    o.line(1, "config", format!("{} on {}", cfg.path, on(cfg.partition)));
    o.line(1, "default", cfg.default.as_deref().unwrap_or("(not set)"));
    o.line(1, "timeout", cfg.timeout.as_deref().unwrap_or("(not set)"));
    for e in &cfg.entries {
        o.line(1, "menuentry", &e.title);
        if let Some(linux) = &e.linux {
            o.line(2, "linux", linux);
        }
        if let Some(options) = &e.options {
            o.line(2, "options", options);
        }
        for i in &e.initrd {
            o.line(2, "initrd", i);
        }
    }
}

fn nixos(o: &mut Out, n: &NixOs) {
    o.line(0, "NixOS", format!("on {}", on(n.partition)));
    o.line(1, "profile", format!("system -> {}", n.profile.as_deref().unwrap_or("(missing)")));
    if let Some(g) = n.generation {
        o.line(1, "generation", g);
    }
    o.line(1, "toplevel", n.toplevel.as_deref().unwrap_or("(not found)"));
    if let Some(s) = &n.system {
        o.line(1, "platform", s);
    }
    let numbers: Vec<String> = n.generations.iter().map(|g| g.number.to_string()).collect();
    o.line(1, "generations", if numbers.is_empty() { "none".to_owned() } else { numbers.join(" ") });
    match n.valid_paths {
        Some(v) => o.line(1, "valid paths", v),
        None => o.line(1, "valid paths", "(no readable Nix database)"),
    }
}
