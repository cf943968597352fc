//! What a file that is no raw disk is, when it is a container or a compressed stream kiln writes (or one often
//! mistaken for an image), named by the magic number at byte 0, with what turns it into a raw disk.

use std::fmt;

use anyhow::Result;
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
    use super::*;

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
