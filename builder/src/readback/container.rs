//! What a file that is no raw disk is, when it is a container or a compressed stream kiln writes (or one often
//! mistaken for an image), named by the magic number at byte 0, with what turns it into a raw disk.

use std::fmt;

use anyhow::{Error, Result, anyhow};
use kiln_formats::disk::Bytes;

use super::Disk;

/// A container or stream that holds a disk image rather than being one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Container {
    /// QEMU's copy-on-write format.
    Qcow2,
    /// Hyper-V's VHDX.
    Vhdx,
    /// VMware's VMDK (sparse extent or text descriptor).
    Vmdk,
    /// A dynamic VHD (a fixed VHD is a raw disk with a footer, and reads as one).
    DynamicVhd,
    /// VirtualBox's VDI.
    Vdi,
    /// A zstd stream.
    Zstd,
    /// A gzip stream (a GCE image is a gzipped tar archive).
    Gzip,
    /// An xz stream.
    Xz,
    /// A tar archive.
    Tar,
}

impl Container {
    /// What the first bytes of `disk` say it is, if it is one of these.
    ///
    /// # Errors
    ///
    /// When the first bytes cannot be read.
    pub fn sniff(disk: &Disk) -> Result<Option<Self>> {
        let mut head = [0u8; 512];
        let n = head.len().min(usize::try_from(disk.len().get()).unwrap_or(usize::MAX));
        disk.read("the image's first bytes", Bytes(0), &mut head[..n])?;
        Ok(Self::of(&head[..n]))
    }

    /// What `head`, an image's first bytes, says it is.
    fn of(head: &[u8]) -> Option<Self> {
        const MAGIC: &[(&[u8], Container)] = &[
            (b"QFI\xfb", Container::Qcow2),
            (b"vhdxfile", Container::Vhdx),
            (b"KDMV", Container::Vmdk),
            (b"# Disk DescriptorFile", Container::Vmdk),
            (b"conectix", Container::DynamicVhd),
            (b"<<< ", Container::Vdi),
            (&[0x28, 0xB5, 0x2F, 0xFD], Container::Zstd),
            (&[0x1F, 0x8B], Container::Gzip),
            (&[0xFD, b'7', b'z', b'X', b'Z', 0], Container::Xz),
        ];
        if let Some((_, c)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
            return Some(*c);
        }
        (head.len() >= 262 && &head[257..262] == b"ustar").then_some(Self::Tar)
    }

    /// What it is and how to make a raw disk of it: `name` is the file, `command` what to run on the raw disk
    /// then (`verify`, `inspect`).
    #[must_use]
    pub fn advice(self, name: &str, command: &str) -> String {
        let convert = |format: &str, flag: &str| {
            format!(
                "a {format} image, not a raw disk: convert it first (qemu-img convert -f {flag} -O raw {name} \
                 disk.raw) and {command} disk.raw"
            )
        };
        match self {
            Self::Qcow2 => convert("qcow2", "qcow2"),
            Self::Vhdx => convert("VHDX", "vhdx"),
            Self::Vmdk => convert("VMDK", "vmdk"),
            Self::DynamicVhd => convert("dynamic VHD", "vpc"),
            Self::Vdi => convert("VDI", "vdi"),
            Self::Zstd => format!(
                "zstd-compressed, not a raw disk: decompress it first (zstd -d {name} -o disk.raw) and {command} \
                 disk.raw"
            ),
            Self::Gzip => format!(
                "gzip-compressed, not a raw disk: decompress it first; a GCE image (*.raw.tar.gz) is a tar archive \
                 holding disk.raw (tar -xSzf {name} disk.raw), anything else: gzip -dc {name} > disk.raw"
            ),
            Self::Xz => format!("xz-compressed, not a raw disk: decompress it first (xz -dc {name} > disk.raw)"),
            Self::Tar => format!("a tar archive, not a raw disk: extract the image from it first (tar -xSf {name})"),
        }
    }
}

/// The error for an image [`Layout::read`](super::Layout::read) found nothing in: what it is when it is a
/// container or stream (with what to convert it with, and to run `command` on then), else that it is shorter than
/// a sector, else that it is not a disk image because `looked_for` (what the caller looked for) is not there.
#[must_use]
pub fn not_a_disk_image(disk: &Disk, command: &str, looked_for: &str) -> Error {
    let name = disk.name();
    match Container::sniff(disk) {
        Err(e) => e,
        Ok(Some(container)) => anyhow!("{name}: {}", container.advice(name, command)),
        Ok(None) if disk.len().get() < 512 => {
            anyhow!("{name}: not a disk image: {} bytes, less than one 512-byte sector", disk.len())
        }
        Ok(None) => anyhow!("{name}: not a disk image: {looked_for}"),
    }
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qcow2 => "qcow2",
            Self::Vhdx => "VHDX",
            Self::Vmdk => "VMDK",
            Self::DynamicVhd => "dynamic VHD",
            Self::Vdi => "VDI",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Tar => "tar",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn mem(bytes: &[u8]) -> Disk {
        Disk::new(Arc::new(bytes.to_vec()), Bytes(bytes.len() as u64), "mem.img".into())
    }

    /// A stream shorter than a sector is still named; a short file that is none is "less than one sector".
    #[test]
    fn short_files_are_named_too() {
        let err = not_a_disk_image(&mem(&[0x28, 0xB5, 0x2F, 0xFD, 0, 0]), "verify", "nothing").to_string();
        assert!(err.starts_with("mem.img: zstd-compressed, not a raw disk: decompress it first"), "{err}");
        let err = not_a_disk_image(&mem(b"x"), "inspect", "nothing").to_string();
        assert_eq!(err, "mem.img: not a disk image: 1 bytes, less than one 512-byte sector");
        let err = not_a_disk_image(&mem(&[0; 4096]), "inspect", "no table").to_string();
        assert_eq!(err, "mem.img: not a disk image: no table");
    }

    #[test]
    fn names_containers_and_streams_by_their_magic() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        let cases: [(&[u8], Option<Container>); 8] = [
            (b"QFI\xfb\0\0\0\x03", Some(Container::Qcow2)),
            (b"# Disk DescriptorFile\n", Some(Container::Vmdk)),
            (b"conectix", Some(Container::DynamicVhd)),
            (&[0x28, 0xB5, 0x2F, 0xFD, 0], Some(Container::Zstd)),
            (&[0xFD, b'7', b'z', b'X', b'Z', 0], Some(Container::Xz)),
            (&tar, Some(Container::Tar)),
            (b"QFI", None),
            (&[0u8; 512], None),
        ];
        for (head, want) in cases {
            assert_eq!(Container::of(head), want, "{head:?}");
        }
        assert_eq!(
            Container::Qcow2.advice("a.img", "verify"),
            "a qcow2 image, not a raw disk: convert it first (qemu-img convert -f qcow2 -O raw a.img disk.raw) and \
             verify disk.raw"
        );
    }
}
