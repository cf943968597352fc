//! Fixed VHD (Virtual PC, Hyper-V, Azure): the raw disk followed by a 512-byte footer, all fields big-endian
//! (Microsoft's "Virtual Hard Disk Image Format Specification", hard disk footer format).
//!
//! Azure takes only fixed VHDs whose virtual size is a whole number of MiB, so [`Vhd::virtual_size`] rounds up to
//! one. Readers disagree on where the size lives: Virtual PC (and QEMU for creator application `vpc ` or `qemu`)
//! take cylinders × heads × sectors of the footer's CHS geometry, which rounds most sizes down; Hyper-V, Azure
//! and QEMU for creator `win ` (also `qem2`, `d2v `, `CTXS`, `tap\0`) take the current-size field. The footer
//! here says creator `win `, version 10.0 (Hyper-V's), host `Wi2k`, as Hyper-V writes it, so every reader sees
//! the exact size; the CHS geometry still follows the specification's algorithm for BIOS-era readers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::copy::{RangeCopier, context, data_within, ensure_empty};
use super::{Container, Progress, RawImage};
use crate::disk::Guid;

/// Size of the footer in bytes.
pub const FOOTER_SIZE: usize = 512;

/// Fixed-VHD virtual sizes are rounded up to this (Azure's requirement).
pub const SIZE_ALIGNMENT: u64 = 1 << 20;

/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01T00:00:00Z.
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

/// The creator application written to the footer: Hyper-V's, so readers use the current-size field.
pub const CREATOR_APP: [u8; 4] = *b"win ";

/// The creator version written to the footer (major 10, minor 0: Hyper-V's).
pub const CREATOR_VERSION: u32 = 0x000A_0000;

/// The creator host OS written to the footer (Windows).
pub const CREATOR_HOST_OS: [u8; 4] = *b"Wi2k";

const SECTOR: u64 = 512;
const DISK_TYPE_FIXED: u32 = 2;
const CHECKSUM_AT: usize = 64;

/// A fixed VHD, with the footer fields that are not derived from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vhd {
    /// The footer's unique id. Derive it from a seed: the same inputs must give the same bytes. Stored as Windows
    /// stores GUIDs (first three fields little-endian), like every GUID in VHDX.
    pub unique_id: Guid,
    /// The footer's time stamp in seconds since 2000-01-01T00:00:00Z ([`Vhd::timestamp_from_unix`]); 0 unless
    /// the caller has a reproducible time such as `SOURCE_DATE_EPOCH`.
    pub timestamp: u32,
}

impl Vhd {
    /// A fixed VHD with this unique id and time stamp 0.
    #[must_use]
    pub const fn new(unique_id: Guid) -> Self {
        Self { unique_id, timestamp: 0 }
    }

    /// The footer time stamp for a Unix time (e.g. `SOURCE_DATE_EPOCH`): 0 before 2000, saturating after 2136.
    #[must_use]
    pub fn timestamp_from_unix(unix_seconds: u64) -> u32 {
        u32::try_from(unix_seconds.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
    }

    /// The footer for a disk of `size` bytes (a multiple of 512).
    #[must_use]
    pub fn footer(&self, size: u64) -> [u8; FOOTER_SIZE] {
        let mut f = [0u8; FOOTER_SIZE];
        f[0..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // file format version 1.0
        f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none for a fixed disk
        f[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        f[28..32].copy_from_slice(&CREATOR_APP);
        f[32..36].copy_from_slice(&CREATOR_VERSION.to_be_bytes());
        f[36..40].copy_from_slice(&CREATOR_HOST_OS);
        f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
        f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
        let chs = Chs::for_sectors(size / SECTOR);
        f[56..58].copy_from_slice(&chs.cylinders.to_be_bytes());
        f[58] = chs.heads;
        f[59] = chs.sectors_per_track;
        f[60..64].copy_from_slice(&DISK_TYPE_FIXED.to_be_bytes());
        f[68..84].copy_from_slice(&self.unique_id.to_gpt_bytes());
        // Byte 84, saved state, stays 0; so do the 427 reserved bytes.
        let sum = checksum(&f);
        f[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
        f
    }

    fn write_footer(&self, out: &File, size: u64) -> io::Result<()> {
        out.write_all_at(&self.footer(size), size)
            .map_err(|e| context(e, || format!("writing the VHD footer at {size}")))
    }
}

/// The footer checksum: the one's complement of the sum of all footer bytes, the checksum field (bytes 64..68)
/// counted as zeros.
#[must_use]
pub fn checksum(footer: &[u8; FOOTER_SIZE]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(CHECKSUM_AT..CHECKSUM_AT + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// A disk geometry in cylinders, heads and sectors per track, as the VHD footer records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    /// Cylinders (at most 65535).
    pub cylinders: u16,
    /// Heads (at most 16).
    pub heads: u8,
    /// Sectors per track (17, 31, 63 or 255).
    pub sectors_per_track: u8,
}

impl Chs {
    /// The geometry the VHD specification's algorithm gives for `total` 512-byte sectors; capped at
    /// 65535 × 16 × 255. It may cover slightly fewer sectors than the disk has.
    #[must_use]
    pub fn for_sectors(total: u64) -> Self {
        const MAX: u64 = 65535 * 16 * 255;
        let total = total.min(MAX);
        let (spt, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
            (255, 16, total / 255)
        } else {
            let mut spt = 17;
            let mut cth = total / spt;
            let mut heads = cth.div_ceil(1024).max(4);
            if cth >= heads * 1024 || heads > 16 {
                spt = 31;
                heads = 16;
                cth = total / spt;
            }
            if cth >= heads * 1024 {
                spt = 63;
                heads = 16;
                cth = total / spt;
            }
            (spt, heads, cth)
        };
        // The bounds above keep every value in range: cylinders ≤ 65535, heads ≤ 16, spt ≤ 255.
        Self {
            cylinders: u16::try_from(cyl_times_heads / heads).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(u8::MAX),
            sectors_per_track: u8::try_from(spt).unwrap_or(u8::MAX),
        }
    }

    /// The sectors this geometry covers.
    #[must_use]
    pub fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }
}

impl Container for Vhd {
    fn name(&self) -> &'static str {
        "vhd"
    }

    /// Rounded up to a whole MiB.
    fn virtual_size(&self, size: u64) -> u64 {
        size.next_multiple_of(SIZE_ALIGNMENT)
    }

    fn in_place(&self) -> bool {
        true
    }

    /// Extends the raw image to [`Vhd::virtual_size`] (a hole) and appends the footer.
    fn finish_in_place(&self, out: &File, size: u64) -> io::Result<()> {
        let vsize = self.virtual_size(size);
        let len = out.metadata()?.len();
        if len > vsize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the output holds {len} bytes, more than the {vsize}-byte raw image of a {size}-byte disk"),
            ));
        }
        out.set_len(vsize)?;
        self.write_footer(out, vsize)
    }

    /// Copies the image's data ranges to the same offsets (in the kernel where possible; everything else stays
    /// a hole) and appends the footer.
    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        ensure_empty(out, "VHD")?;
        let vsize = self.virtual_size(image.size());
        let file_len = image.file().metadata()?.len();
        let mut copier = RangeCopier::default();
        let mut pos = 0;
        // Bytes past the end of the file read as zeros: nothing to copy there.
        for r in data_within(image, 0..image.size(), file_len) {
            progress.advance(r.start - pos);
            copier
                .copy(image.file(), out, (r.start, r.start), r.end - r.start, progress)
                .map_err(|err| context(err, || format!("copying image bytes {}..{} into the VHD", r.start, r.end)))?;
            pos = r.end;
        }
        progress.advance(image.size() - pos);
        out.set_len(vsize)?;
        self.write_footer(out, vsize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_specification() {
        struct Case {
            sectors: u64,
            want: (u16, u8, u8),
        }
        // Worked through the specification's algorithm by hand; each exercises one branch.
        let cases = [
            // 20 MiB: 17 sectors per track, heads raised to the minimum of 4.
            Case { sectors: 40960, want: (602, 4, 17) },
            // 100 MiB: 17 sectors per track, 12 heads.
            Case { sectors: 204_800, want: (1003, 12, 17) },
            // 200 MiB: too many heads at 17, fits at 31 sectors per track.
            Case { sectors: 409_600, want: (825, 16, 31) },
            // 256 MiB: too many cylinders at 31, so 63 sectors per track.
            Case { sectors: 524_288, want: (520, 16, 63) },
            // 1 GiB: 63 sectors per track (the familiar 2080/16/63).
            Case { sectors: 2_097_152, want: (2080, 16, 63) },
            // 127 GiB: beyond 65535 × 16 × 63 sectors, so 255 sectors per track.
            Case { sectors: 127 << 21, want: (65278, 16, 255) },
            // The maximum, and anything beyond it.
            Case { sectors: 65535 * 16 * 255, want: (65535, 16, 255) },
            Case { sectors: 4 << 31, want: (65535, 16, 255) },
        ];
        for c in cases {
            let g = Chs::for_sectors(c.sectors);
            assert_eq!((g.cylinders, g.heads, g.sectors_per_track), c.want, "{} sectors", c.sectors);
            assert!(g.sectors() <= c.sectors);
        }
    }

    #[test]
    fn footer_fields_and_checksum() {
        let vhd = Vhd { unique_id: Guid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff), timestamp: 0x1234_5678 };
        let f = vhd.footer(1 << 30);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(f[8..16], [0, 0, 0, 2, 0, 1, 0, 0]);
        assert_eq!(f[16..24], [0xFF; 8]);
        assert_eq!(f[24..28], [0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&f[28..32], b"win ");
        assert_eq!(&f[36..40], b"Wi2k");
        assert_eq!(f[40..48], (1u64 << 30).to_be_bytes());
        assert_eq!(f[48..56], (1u64 << 30).to_be_bytes());
        assert_eq!(f[56..60], [0x08, 0x20, 16, 63]); // 2080 cylinders
        assert_eq!(f[60..64], [0, 0, 0, 2]);
        assert_eq!(f[68..72], [0x33, 0x22, 0x11, 0x00]);
        assert!(f[84..].iter().all(|&b| b == 0));
        // The specification's rule, spelled out: all bytes but the checksum's own, summed, complemented.
        let sum: u32 =
            f.iter().map(|&b| u32::from(b)).sum::<u32>() - f[64..68].iter().map(|&b| u32::from(b)).sum::<u32>();
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
        assert_eq!(checksum(&f), !sum);
        // A known footer: all zeros but the cookie, whose bytes sum to 861 (0x35D), so the checksum is !0x35D.
        let mut z = [0u8; FOOTER_SIZE];
        z[0..8].copy_from_slice(b"conectix");
        assert_eq!(checksum(&z), !0x35D);
    }

    #[test]
    fn sizes_and_timestamps() {
        let vhd = Vhd::new(Guid::NIL);
        assert_eq!(vhd.virtual_size(1), 1 << 20);
        assert_eq!(vhd.virtual_size(1 << 20), 1 << 20);
        assert_eq!(vhd.virtual_size((1 << 20) + 1), 2 << 20);
        assert_eq!(Vhd::timestamp_from_unix(0), 0);
        assert_eq!(Vhd::timestamp_from_unix(VHD_EPOCH_UNIX + 86400), 86400);
        assert_eq!(Vhd::timestamp_from_unix(u64::MAX), u32::MAX);
    }
}
