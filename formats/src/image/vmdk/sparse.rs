//! The on-disk pieces of a stream-optimized sparse extent (VMware's "Virtual Disk Format 5.0" technical note,
//! all fields little-endian): the sparse extent header (also the footer), the embedded descriptor, grain and
//! metadata markers.

use std::io;

/// Bytes per sector: every offset and size in the extent counts these.
pub(super) const SECTOR: u64 = 512;
/// Sectors per grain (64 KiB grains).
pub(super) const GRAIN_SECTORS: u64 = 128;
/// Bytes per grain.
pub(super) const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table (one table maps 32 MiB).
pub(super) const GTES_PER_GT: u64 = 512;
/// Sectors one grain table takes.
pub(super) const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// The descriptor follows the header at this sector …
pub(super) const DESCRIPTOR_OFFSET: u64 = 1;
/// … and has this many sectors reserved.
pub(super) const DESCRIPTOR_SECTORS: u64 = 20;
/// The first grain starts here: header and descriptor, rounded up to a grain.
pub(super) const OVERHEAD: u64 = GRAIN_SECTORS;
/// `gdOffset` in the header of a stream: the grain directory is found through the footer.
pub(super) const GD_AT_END: u64 = u64::MAX;
/// Bytes of a grain marker before the compressed data: the grain's first sector (u64) and the data size (u32).
pub(super) const GRAIN_MARKER_LEN: usize = 12;

const MAGIC: &[u8; 4] = b"KDMV";
const VERSION: u32 = 3;
/// Valid new-line detection bytes (bit 0), compressed grains (bit 16), markers (bit 17).
const FLAGS: u32 = 1 | 1 << 16 | 1 << 17;
const COMPRESS_DEFLATE: u16 = 1;

/// Kinds of metadata marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    /// End of stream: the last sector of the file.
    EndOfStream = 0,
    /// A grain table follows.
    GrainTable = 1,
    /// The grain directory follows.
    GrainDirectory = 2,
    /// The footer (a copy of the header with the real `gdOffset`) follows.
    Footer = 3,
}

/// The sector of a metadata marker announcing `sectors` sectors of metadata of kind `marker`.
pub(super) fn marker(marker: Marker, sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    if marker != Marker::EndOfStream {
        m[0..8].copy_from_slice(&sectors.to_le_bytes());
        // 8..12: size, zero for metadata markers.
        m[12..16].copy_from_slice(&(marker as u32).to_le_bytes());
    }
    m
}

/// The sparse extent header (`gd_offset` = [`GD_AT_END`]) or footer (the grain directory's sector).
pub(super) fn header(capacity_sectors: u64, gd_offset: u64) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&DESCRIPTOR_OFFSET.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    // 48..56: rgdOffset, none (no redundant grain directory in a stream).
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD.to_le_bytes());
    // 72: uncleanShutdown 0; then the new-line detection characters.
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&COMPRESS_DEFLATE.to_le_bytes());
    h
}

/// The storage adapter the descriptor names; it also decides the legacy CHS geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AdapterType {
    /// IDE: 16 heads, at most 16383 cylinders.
    Ide,
    /// BusLogic SCSI: 255 heads.
    BusLogic,
    /// LSI Logic SCSI: 255 heads; what VMware's own tools and cloud importers expect by default.
    #[default]
    LsiLogic,
}

impl AdapterType {
    /// The name in the descriptor's `ddb.adapterType`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ide => "ide",
            Self::BusLogic => "buslogic",
            Self::LsiLogic => "lsilogic",
        }
    }

    /// Cylinders, heads and sectors per track for a disk of `capacity` sectors: 63 sectors per track, heads by
    /// adapter, cylinders rounded up and capped.
    #[must_use]
    pub fn geometry(self, capacity: u64) -> (u64, u64, u64) {
        let (heads, max_cylinders) = match self {
            Self::Ide => (16, 16383),
            Self::BusLogic | Self::LsiLogic => (255, 65535),
        };
        (capacity.div_ceil(heads * 63).min(max_cylinders), heads, 63)
    }
}

/// The embedded descriptor, padded with zeros to its reserved sectors.
pub(super) fn descriptor(
    cid: u32,
    capacity: u64,
    extent_name: &str,
    adapter: AdapterType,
    hw_version: u32,
) -> io::Result<Vec<u8>> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if extent_name.is_empty() || extent_name.chars().any(|c| c == '"' || c.is_control()) {
        return Err(invalid(format!("VMDK extent name {extent_name:?} is empty or has quotes or control characters")));
    }
    // These two mean "no parent" and "content unknown" to some readers.
    if cid == u32::MAX || cid == u32::MAX - 1 {
        return Err(invalid(format!("VMDK content id {cid:08x} is reserved")));
    }
    let (cylinders, heads, sectors) = adapter.geometry(capacity);
    let text = format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity} SPARSE \"{extent_name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.adapterType = \"{adapter}\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{sectors}\"\n\
         ddb.virtualHWVersion = \"{hw_version}\"\n",
        adapter = adapter.name(),
    );
    let room = (DESCRIPTOR_SECTORS * SECTOR) as usize;
    if text.len() >= room {
        return Err(invalid(format!("VMDK descriptor of {} bytes does not fit its {room} bytes", text.len())));
    }
    let mut out = text.into_bytes();
    out.resize(room, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let h = header(2_000_000, GD_AT_END);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(h[0..4].try_into().unwrap()), 0x564D_444B);
        assert_eq!(h[4..12], [3, 0, 0, 0, 1, 0, 3, 0]);
        assert_eq!(h[12..20], 2_000_000u64.to_le_bytes());
        assert_eq!(h[20..28], 128u64.to_le_bytes());
        assert_eq!(h[44..48], 512u32.to_le_bytes());
        assert_eq!(h[56..64], [0xFF; 8]);
        assert_eq!(&h[73..77], b"\n \r\n");
        assert_eq!(h[77..79], [1, 0]);
        assert!(h[79..].iter().all(|&b| b == 0));
    }

    #[test]
    fn markers() {
        let m = marker(Marker::GrainTable, 4);
        assert_eq!(m[0..16], [4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert!(marker(Marker::EndOfStream, 99).iter().all(|&b| b == 0));
        assert_eq!(marker(Marker::Footer, 1)[12], 3);
        assert_eq!(marker(Marker::GrainDirectory, 2)[12], 2);
    }

    #[test]
    fn descriptor_text() {
        let d = descriptor(0x0123_abcd, 4_194_304, "disk.vmdk", AdapterType::LsiLogic, 4).unwrap();
        assert_eq!(d.len(), 20 * 512);
        let text = String::from_utf8(d.into_iter().take_while(|&b| b != 0).collect()).unwrap();
        assert!(text.contains("CID=0123abcd\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n"));
        assert!(text.contains("RW 4194304 SPARSE \"disk.vmdk\"\n"));
        assert!(text.contains("ddb.geometry.cylinders = \"262\"\nddb.geometry.heads = \"255\"\n"));
        assert!(text.contains("ddb.virtualHWVersion = \"4\"\n"));
        assert!(descriptor(u32::MAX, 1, "d", AdapterType::Ide, 4).is_err());
        assert!(descriptor(1, 1, "a\"b", AdapterType::Ide, 4).is_err());
        assert!(descriptor(1, 1, &"x".repeat(20 * 512), AdapterType::Ide, 4).is_err());
    }

    #[test]
    fn geometry_by_adapter() {
        assert_eq!(AdapterType::Ide.geometry(16 * 63 * 10), (10, 16, 63));
        assert_eq!(AdapterType::Ide.geometry(1 << 40), (16383, 16, 63));
        assert_eq!(AdapterType::LsiLogic.geometry(255 * 63 * 10 + 1), (11, 255, 63));
        assert_eq!(AdapterType::BusLogic.geometry(1 << 40), (65535, 255, 63));
    }
}
