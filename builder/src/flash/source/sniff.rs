//! What the source is, from its first bytes: a container kiln streams, one it names and refuses, or a raw disk.

use std::sync::Arc;

use anyhow::{Result, bail};
use kiln_formats::disk::Bytes;

use super::SourceFormat;
use crate::readback::{Container, Disk, Magic, identify};

/// Bytes read to sniff the format (a btrfs superblock's magic lies at 64 KiB + 64).
pub(super) const HEAD: usize = 68 << 10;

/// The format `head`, the source's first bytes, says. A raw image must look like a disk: a boot signature at
/// byte 510 or a filesystem kiln recognises. Fixed VHDs read as raw here (their footer is at the end).
///
/// # Errors
/// A container kiln does not stream (named, with how to convert it), a file shorter than a sector, or one that
/// is no disk image.
pub(super) fn sniff(head: &[u8], name: &str) -> Result<SourceFormat> {
    const MAGIC: &[(&[u8], SourceFormat)] = &[
        (b"QFI\xfb", SourceFormat::Qcow2),
        (b"KDMV", SourceFormat::Vmdk),
        (&[0x28, 0xB5, 0x2F, 0xFD], SourceFormat::RawZst),
        (&[0x1F, 0x8B], SourceFormat::Gce),
    ];
    if let Some((_, f)) = MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return Ok(*f);
    }
    let disk = Disk::new(Arc::new(head.to_vec()), Bytes(head.len() as u64), name.to_owned());
    if let Some(c) = Container::sniff(&disk)? {
        bail!("{name}: {}", c.advice(name, "flash"));
    }
    if head.len() < 512 {
        bail!("{name}: not a disk image: {} bytes, less than one 512-byte sector", head.len());
    }
    if head[510..512] == [0x55, 0xAA] || !matches!(identify(&disk.whole())?, Magic::Unknown) {
        return Ok(SourceFormat::Raw);
    }
    bail!(
        "{name}: not a disk image kiln can flash: no boot signature (55 AA) at byte 510, no filesystem kiln \
         recognises, and none of raw.zst, qcow2, VHD, VMDK or a GCE tar.gz"
    )
}
