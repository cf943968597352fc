//! What a file that is no disk image is, when it is a container or a compressed stream kiln writes (or one
//! often mistaken for an image), with what to do about it.

use anyhow::Result;
use kiln_formats::disk::Bytes;

use crate::inspect::disk::Disk;

/// What a file that is no disk image is, when it is a container or a compressed stream kiln writes (or one
/// that is often mistaken for an image), with what to do about it.
pub(super) fn container(disk: &Disk) -> Result<Option<String>> {
    let name = disk.name();
    let convert = |format: &str, flag: &str| {
        format!(
            "a {format} image, not a raw disk: convert it first (qemu-img convert -f {flag} -O raw {name} disk.raw) \
             and verify disk.raw"
        )
    };
    let mut head = [0u8; 512];
    let n = head.len().min(usize::try_from(disk.len().get()).unwrap_or(usize::MAX));
    disk.read("the image's first bytes", Bytes(0), &mut head[..n])?;
    let head = &head[..n];
    let what = if head.starts_with(b"QFI\xfb") {
        convert("qcow2", "qcow2")
    } else if head.starts_with(b"vhdxfile") {
        convert("VHDX", "vhdx")
    } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        convert("VMDK", "vmdk")
    } else if head.starts_with(b"conectix") {
        convert("dynamic VHD", "vpc")
    } else if head.starts_with(b"<<< ") {
        convert("VDI", "vdi")
    } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        format!("zstd-compressed, not a raw disk: decompress it first (zstd -d {name} -o disk.raw) and verify disk.raw")
    } else if head.starts_with(&[0x1F, 0x8B]) {
        format!(
            "gzip-compressed, not a raw disk: decompress it first; a GCE image (*.raw.tar.gz) is a tar archive \
             holding disk.raw (tar -xSzf {name} disk.raw), anything else: gzip -dc {name} > disk.raw"
        )
    } else if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        format!("xz-compressed, not a raw disk: decompress it first (xz -dc {name} > disk.raw)")
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        format!("a tar archive, not a raw disk: extract the image from it first (tar -xSf {name})")
    } else {
        return Ok(None);
    };
    Ok(Some(what))
}
