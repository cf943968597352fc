//! Units of disk geometry: bytes, logical sectors and the 1 MiB partition alignment. Every conversion between
//! them names the sector size, so a sector number never passes for a byte count.
//!
//! One [`SectorSize`] serves every writer and reader in the crate (partition tables, FAT, GRUB's embedding);
//! [`disk`](crate::disk) re-exports these types beside the layouts that use them.

use std::fmt;
use std::str::FromStr;

/// One mebibyte: what every partition start and end is aligned to.
pub const MIB: Bytes = Bytes(1 << 20);

/// A count or an offset in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    /// `n` mebibytes.
    #[must_use]
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// The number of bytes.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether this is a whole multiple of `unit` (false for a zero unit).
    #[must_use]
    pub const fn is_multiple_of(self, unit: Bytes) -> bool {
        unit.0 != 0 && self.0.is_multiple_of(unit.0)
    }

    /// Rounded up to a multiple of `unit`; `None` on overflow or a zero unit.
    #[must_use]
    pub const fn align_up(self, unit: Bytes) -> Option<Bytes> {
        if unit.0 == 0 {
            return None;
        }
        match self.0.checked_next_multiple_of(unit.0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }

    /// Rounded down to a multiple of `unit`; `None` for a zero unit.
    #[must_use]
    pub const fn align_down(self, unit: Bytes) -> Option<Bytes> {
        if unit.0 == 0 {
            return None;
        }
        Some(Bytes(self.0 - self.0 % unit.0))
    }

    /// The sector at this byte offset, if the offset is a whole number of sectors.
    #[must_use]
    pub const fn to_lba(self, sector: SectorSize) -> Option<Lba> {
        let s = sector.bytes().0;
        if self.0.is_multiple_of(s) { Some(Lba(self.0 / s)) } else { None }
    }

    /// The sector holding this byte offset (rounding down).
    #[must_use]
    pub const fn to_lba_floor(self, sector: SectorSize) -> Lba {
        Lba(self.0 / sector.bytes().0)
    }

    /// `self + other`, `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, other: Bytes) -> Option<Bytes> {
        match self.0.checked_add(other.0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A logical sector size: the unit of every LBA on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectorSize {
    /// 512 bytes (512n and 512e disks, and what BIOS boot code assumes).
    S512,
    /// 4096 bytes (4Kn disks).
    S4096,
}

impl SectorSize {
    /// The size of one sector.
    #[must_use]
    pub const fn bytes(self) -> Bytes {
        match self {
            Self::S512 => Bytes(512),
            Self::S4096 => Bytes(4096),
        }
    }

    /// Sectors per mebibyte: 2048 or 256.
    #[must_use]
    pub const fn per_mib(self) -> u64 {
        MIB.0 / self.bytes().0
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes().0)
    }
}

/// The size in bytes, as on-disk fields (a FAT boot sector's bytes per sector) store it.
impl From<SectorSize> for u32 {
    fn from(sector: SectorSize) -> Self {
        match sector {
            SectorSize::S512 => 512,
            SectorSize::S4096 => 4096,
        }
    }
}

/// 512 or 4096; any other number is refused.
impl TryFrom<u32> for SectorSize {
    type Error = SectorSizeError;

    fn try_from(bytes: u32) -> Result<Self, Self::Error> {
        match bytes {
            512 => Ok(Self::S512),
            4096 => Ok(Self::S4096),
            _ => Err(SectorSizeError::Unsupported { bytes }),
        }
    }
}

/// `512`, or `4096` (also written `4K` or `4KiB`): what `--sector-size` and a profile's `sector-size` accept.
impl FromStr for SectorSize {
    type Err = SectorSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "512" => Ok(Self::S512),
            "4096" | "4K" | "4KiB" => Ok(Self::S4096),
            _ => Err(SectorSizeError::Unrecognised { text: text.to_owned() }),
        }
    }
}

/// A sector size that is not one a disk here can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SectorSizeError {
    /// A number of bytes other than 512 and 4096.
    #[error("{bytes}: the sector size is 512 or 4096")]
    Unsupported {
        /// The number given.
        bytes: u32,
    },
    /// Text that names no sector size.
    #[error("{text:?}: the sector size is 512 or 4096")]
    Unrecognised {
        /// The text given.
        text: String,
    },
}

/// A logical block address: the index of a sector of the disk's [`SectorSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Lba(pub u64);

impl Lba {
    /// The sector number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The byte offset of this sector, `None` past `u64::MAX` bytes.
    #[must_use]
    pub const fn checked_offset(self, sector: SectorSize) -> Option<Bytes> {
        match self.0.checked_mul(sector.bytes().0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }

    /// The byte offset of this sector.
    ///
    /// # Panics
    ///
    /// If the offset does not fit in 64 bits (no disk is that large; a [`DiskLayout`](crate::disk::DiskLayout) never
    /// holds such a sector).
    #[must_use]
    pub const fn offset(self, sector: SectorSize) -> Bytes {
        match self.checked_offset(sector) {
            Some(b) => b,
            None => panic!("sector offset beyond 2^64 bytes"),
        }
    }

    /// The sector `n` sectors further on, `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, n: u64) -> Option<Lba> {
        match self.0.checked_add(n) {
            Some(v) => Some(Lba(v)),
            None => None,
        }
    }

    /// Whether this sector starts on a 1 MiB boundary.
    #[must_use]
    pub const fn is_mib_aligned(self, sector: SectorSize) -> bool {
        self.0.is_multiple_of(sector.per_mib())
    }
}

impl fmt::Display for Lba {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A run of sectors `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LbaRange {
    /// The first sector.
    pub start: Lba,
    /// The sector after the last.
    pub end: Lba,
}

impl LbaRange {
    /// `start..end`.
    #[must_use]
    pub const fn new(start: Lba, end: Lba) -> Self {
        Self { start, end }
    }

    /// How many sectors the run holds (0 if `end <= start`).
    #[must_use]
    pub const fn sectors(self) -> u64 {
        self.end.0.saturating_sub(self.start.0)
    }

    /// Whether the run holds no sector.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.end.0 <= self.start.0
    }

    /// The last sector (inclusive), as GPT entries store it; `None` for an empty run.
    #[must_use]
    pub const fn last(self) -> Option<Lba> {
        if self.is_empty() { None } else { Some(Lba(self.end.0 - 1)) }
    }

    /// Whether `lba` lies in the run.
    #[must_use]
    pub const fn contains(self, lba: Lba) -> bool {
        self.start.0 <= lba.0 && lba.0 < self.end.0
    }

    /// Whether the two runs share a sector.
    #[must_use]
    pub const fn overlaps(self, other: LbaRange) -> bool {
        !self.is_empty() && !other.is_empty() && self.start.0 < other.end.0 && other.start.0 < self.end.0
    }

    /// The same run in bytes.
    ///
    /// # Panics
    ///
    /// As [`Lba::offset`].
    #[must_use]
    pub const fn bytes(self, sector: SectorSize) -> ByteRange {
        ByteRange { start: self.start.offset(sector), end: self.end.offset(sector) }
    }
}

impl fmt::Display for LbaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LBA {}..{}", self.start, self.end)
    }
}

/// A run of bytes `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// Offset of the first byte.
    pub start: Bytes,
    /// Offset of the byte after the last.
    pub end: Bytes,
}

impl ByteRange {
    /// How many bytes the run holds.
    #[must_use]
    pub const fn len(self) -> Bytes {
        Bytes(self.end.0.saturating_sub(self.start.0))
    }

    /// Whether the run holds no byte.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.end.0 <= self.start.0
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}..{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        struct Case {
            value: u64,
            up: Option<u64>,
            down: Option<u64>,
        }
        let cases = [
            Case { value: 0, up: Some(0), down: Some(0) },
            Case { value: 1, up: Some(1 << 20), down: Some(0) },
            Case { value: 1 << 20, up: Some(1 << 20), down: Some(1 << 20) },
            Case { value: (1 << 20) + 1, up: Some(2 << 20), down: Some(1 << 20) },
            Case { value: u64::MAX, up: None, down: Some(u64::MAX - ((1 << 20) - 1)) },
        ];
        for c in cases {
            assert_eq!(Bytes(c.value).align_up(MIB).map(Bytes::get), c.up, "align_up({})", c.value);
            assert_eq!(Bytes(c.value).align_down(MIB).map(Bytes::get), c.down, "align_down({})", c.value);
        }
        assert_eq!(Bytes(5).align_up(Bytes(0)), None);
    }

    #[test]
    fn sectors_and_bytes() {
        assert_eq!(SectorSize::S512.per_mib(), 2048);
        assert_eq!(SectorSize::S4096.per_mib(), 256);
        assert_eq!(Lba(2048).offset(SectorSize::S512), MIB);
        assert_eq!(Lba(256).offset(SectorSize::S4096), MIB);
        assert_eq!(MIB.to_lba(SectorSize::S4096), Some(Lba(256)));
        assert_eq!(Bytes(4097).to_lba(SectorSize::S4096), None);
        assert_eq!(Bytes(4097).to_lba_floor(SectorSize::S4096), Lba(1));
        assert!(Lba(4096).is_mib_aligned(SectorSize::S512));
        assert!(!Lba(4096 + 8).is_mib_aligned(SectorSize::S512));
        assert_eq!(Lba(u64::MAX).checked_offset(SectorSize::S512), None);
        let r = LbaRange::new(Lba(2048), Lba(4096));
        assert_eq!(r.sectors(), 2048);
        assert_eq!(r.last(), Some(Lba(4095)));
        assert_eq!(r.bytes(SectorSize::S512), ByteRange { start: MIB, end: Bytes::mib(2) });
        assert!(r.overlaps(LbaRange::new(Lba(4095), Lba(5000))));
        assert!(!r.overlaps(LbaRange::new(Lba(4096), Lba(5000))));
        assert!(LbaRange::new(Lba(3), Lba(3)).is_empty());
    }

    #[test]
    fn sector_sizes_parse() {
        struct Case {
            text: &'static str,
            want: Result<SectorSize, &'static str>,
        }
        let cases = [
            Case { text: "512", want: Ok(SectorSize::S512) },
            Case { text: "4096", want: Ok(SectorSize::S4096) },
            Case { text: "4K", want: Ok(SectorSize::S4096) },
            Case { text: "4KiB", want: Ok(SectorSize::S4096) },
            Case { text: "1024", want: Err("\"1024\": the sector size is 512 or 4096") },
            Case { text: " 512", want: Err("\" 512\": the sector size is 512 or 4096") },
            Case { text: "", want: Err("\"\": the sector size is 512 or 4096") },
        ];
        for c in cases {
            let got = c.text.parse::<SectorSize>().map_err(|e| e.to_string());
            assert_eq!(got, c.want.map_err(str::to_owned), "{:?}", c.text);
        }
        for s in [SectorSize::S512, SectorSize::S4096] {
            assert_eq!(SectorSize::try_from(u32::from(s)), Ok(s));
            assert_eq!(s.to_string().parse::<SectorSize>(), Ok(s));
            assert_eq!(u64::from(u32::from(s)), s.bytes().get());
        }
        let err = SectorSize::try_from(1024).unwrap_err();
        assert_eq!(err, SectorSizeError::Unsupported { bytes: 1024 });
        assert_eq!(err.to_string(), "1024: the sector size is 512 or 4096");
    }
}
