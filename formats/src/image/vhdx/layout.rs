//! The VHDX structures, laid out and serialised (Microsoft's MS-VHDX, all fields little-endian, GUIDs in the
//! Windows byte order): the file type identifier, the two headers, the two region table copies, the metadata
//! region and the block allocation table (BAT).
//!
//! File layout, every region 1 MiB aligned as the specification requires:
//!
//! ```text
//! 0       file type identifier      64 KiB   header 1     128 KiB  header 2
//! 192 KiB region table              256 KiB  region table (copy)
//! 1 MiB   log (1 MiB, empty: the headers' log GUID is zero)
//! 2 MiB   metadata region (1 MiB: table, then the items from 64 KiB)
//! 3 MiB   BAT (whole MiBs)          then the payload blocks present, in virtual order
//! ```

use std::io;

use crate::disk::Guid;

pub(super) const MIB: u64 = 1 << 20;
pub(super) const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
pub(super) const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
pub(super) const LOG_OFFSET: u64 = MIB;
pub(super) const LOG_LENGTH: u64 = MIB;
pub(super) const METADATA_OFFSET: u64 = 2 * MIB;
pub(super) const METADATA_LENGTH: u64 = MIB;
pub(super) const BAT_OFFSET: u64 = 3 * MIB;

/// Size of a header structure (the checksum covers all of it).
pub(super) const HEADER_SIZE: usize = 4096;
/// Size of a region table (the checksum covers all of it).
pub(super) const REGION_TABLE_SIZE: usize = 64 << 10;
/// Where the metadata items start within the metadata region (the table takes the first 64 KiB).
const METADATA_ITEMS_AT: usize = 64 << 10;

/// The virtual disk's logical sector size: what the guest sees, and the unit of the virtual size.
pub(super) const LOGICAL_SECTOR: u32 = 512;
/// The physical sector size reported to the guest (4 KiB, as today's disks and Hyper-V's default).
pub(super) const PHYSICAL_SECTOR: u32 = 4096;

/// Region GUIDs (§2.2.3.2).
const BAT_REGION: Guid = guid(0x2DC2_7766_F623_4200_9D64_115E_9BFD_4A08);
const METADATA_REGION: Guid = guid(0x8B7C_A206_4790_4B9A_B8FE_575F_050F_886E);

/// Metadata item GUIDs (§2.6.2).
const FILE_PARAMETERS: Guid = guid(0xCAA1_6737_FA36_4D43_B3B6_33F0_AA44_E76B);
const VIRTUAL_DISK_SIZE: Guid = guid(0x2FA5_4224_CD1B_4876_B211_5DBE_D83B_F4B8);
const PAGE_83_DATA: Guid = guid(0xBECA_12AB_B2E6_4523_93EF_C309_E000_C746);
const LOGICAL_SECTOR_SIZE: Guid = guid(0x8141_BF1D_A96F_4709_BA47_F233_A8FA_AB5F);
const PHYSICAL_SECTOR_SIZE: Guid = guid(0xCDA3_48C7_445D_4471_9CC9_E988_5251_C556);

/// Payload block states in a BAT entry's low 3 bits (§2.5.1.1).
pub(super) const PAYLOAD_BLOCK_ZERO: u64 = 2;
pub(super) const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;

const fn guid(value: u128) -> Guid {
    Guid::from_u128(value)
}

/// Where everything goes for one virtual disk size and block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// Virtual disk size in bytes, a multiple of the logical sector size.
    pub virtual_size: u64,
    /// Payload block size in bytes.
    pub block_size: u64,
    /// Payload blocks per sector-bitmap block: 2^23 logical sectors over the block size.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual disk.
    pub payload_blocks: u64,
    /// BAT entries: the payload entries with a sector-bitmap entry after every `chunk_ratio` of them, up to
    /// the last payload block's entry (dynamic disks, §2.5).
    pub bat_entries: u64,
    /// The BAT region's length: whole MiBs.
    pub bat_length: u64,
    /// Where the first payload block goes.
    pub data_offset: u64,
}

impl Layout {
    /// The largest virtual disk VHDX allows: 64 TiB.
    pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

    /// The layout for a disk of `virtual_size` bytes in blocks of `block_size` bytes.
    pub fn new(virtual_size: u64, block_size: u32) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
            return Err(invalid(format!("VHDX block size {block_size} is not a power of two from 1 MiB to 256 MiB")));
        }
        if virtual_size == 0
            || virtual_size > Self::MAX_VIRTUAL_SIZE
            || !virtual_size.is_multiple_of(u64::from(LOGICAL_SECTOR))
        {
            return Err(invalid(format!(
                "VHDX virtual size {virtual_size} is not a whole number of {LOGICAL_SECTOR}-byte sectors up to 64 TiB"
            )));
        }
        let block_size = u64::from(block_size);
        let chunk_ratio = (1u64 << 23) * u64::from(LOGICAL_SECTOR) / block_size;
        let payload_blocks = virtual_size.div_ceil(block_size);
        let bat_entries = payload_blocks + (payload_blocks - 1) / chunk_ratio;
        let bat_length = (bat_entries * 8).next_multiple_of(MIB);
        Ok(Self {
            virtual_size,
            block_size,
            chunk_ratio,
            payload_blocks,
            bat_entries,
            bat_length,
            data_offset: BAT_OFFSET + bat_length,
        })
    }

    /// The BAT index of payload block `block`: past the sector-bitmap entries of the chunks before it.
    pub fn bat_index(&self, block: u64) -> usize {
        usize::try_from(block + block / self.chunk_ratio).unwrap_or(usize::MAX)
    }
}

/// A BAT entry: `state` in bits 0..3, the block's file offset in MiB in bits 20..64.
pub(super) fn bat_entry(state: u64, file_offset: u64) -> u64 {
    debug_assert!(file_offset.is_multiple_of(MIB));
    state | (file_offset / MIB) << 20
}

/// The BAT region's bytes for `entries`.
pub(super) fn bat_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The file type identifier: signature `vhdxfile` and the creator as UTF-16LE (at most 256 units).
pub(super) fn file_identifier(creator: &str) -> Vec<u8> {
    let mut out = b"vhdxfile".to_vec();
    out.extend(creator.encode_utf16().take(255).flat_map(u16::to_le_bytes));
    out.resize(8 + 512, 0);
    out
}

/// The GUIDs a header carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeaderIds {
    pub file_write: Guid,
    pub data_write: Guid,
}

/// A header with this sequence number; the log GUID is zero (the log is empty).
pub(super) fn header(sequence: u64, ids: HeaderIds) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(b"head");
    h[8..16].copy_from_slice(&sequence.to_le_bytes());
    h[16..32].copy_from_slice(&ids.file_write.to_gpt_bytes());
    h[32..48].copy_from_slice(&ids.data_write.to_gpt_bytes());
    // 48..64: LogGuid, zero. 64..66: LogVersion 0.
    h[66..68].copy_from_slice(&1u16.to_le_bytes()); // Version
    h[68..72].copy_from_slice(&(LOG_LENGTH as u32).to_le_bytes());
    h[72..80].copy_from_slice(&LOG_OFFSET.to_le_bytes());
    seal(&mut h);
    h
}

/// The region table: the BAT and the metadata region, both required.
pub(super) fn region_table(layout: &Layout) -> Vec<u8> {
    let mut t = vec![0u8; REGION_TABLE_SIZE];
    t[0..4].copy_from_slice(b"regi");
    t[8..12].copy_from_slice(&2u32.to_le_bytes());
    let regions = [(BAT_REGION, BAT_OFFSET, layout.bat_length), (METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH)];
    for (i, (id, offset, length)) in regions.into_iter().enumerate() {
        let e = &mut t[16 + 32 * i..16 + 32 * (i + 1)];
        e[0..16].copy_from_slice(&id.to_gpt_bytes());
        e[16..24].copy_from_slice(&offset.to_le_bytes());
        e[24..28].copy_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_le_bytes());
        e[28..32].copy_from_slice(&1u32.to_le_bytes()); // Required
    }
    seal(&mut t);
    t
}

/// The metadata region's bytes up to the end of its last item: the table, then the items from 64 KiB.
pub(super) fn metadata(layout: &Layout, disk_id: Guid) -> Vec<u8> {
    const IS_VIRTUAL_DISK: u32 = 1 << 1;
    const IS_REQUIRED: u32 = 1 << 2;
    let file_parameters = {
        // BlockSize, then flags: LeaveBlocksAllocated 0 (dynamic), HasParent 0.
        let mut v = u32::try_from(layout.block_size).unwrap_or(u32::MAX).to_le_bytes().to_vec();
        v.extend(0u32.to_le_bytes());
        v
    };
    let items: [(Guid, Vec<u8>, u32); 5] = [
        (FILE_PARAMETERS, file_parameters, IS_REQUIRED),
        (VIRTUAL_DISK_SIZE, layout.virtual_size.to_le_bytes().to_vec(), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PAGE_83_DATA, disk_id.to_gpt_bytes().to_vec(), IS_VIRTUAL_DISK | IS_REQUIRED),
        (LOGICAL_SECTOR_SIZE, LOGICAL_SECTOR.to_le_bytes().to_vec(), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PHYSICAL_SECTOR_SIZE, PHYSICAL_SECTOR.to_le_bytes().to_vec(), IS_VIRTUAL_DISK | IS_REQUIRED),
    ];
    let mut out = vec![0u8; METADATA_ITEMS_AT];
    out[0..8].copy_from_slice(b"metadata");
    out[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    for (i, (id, value, flags)) in items.into_iter().enumerate() {
        let offset = out.len();
        let e = &mut out[32 * (i + 1)..32 * (i + 2)];
        e[0..16].copy_from_slice(&id.to_gpt_bytes());
        e[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(value.len() as u32).to_le_bytes());
        e[24..28].copy_from_slice(&flags.to_le_bytes());
        out.extend(&value);
    }
    out
}

/// Fills the checksum field (bytes 4..8) with the CRC-32C of the structure, computed with that field zero.
pub(super) fn seal(structure: &mut [u8]) {
    structure[4..8].fill(0);
    let sum = crc32c::crc32c(structure);
    structure[4..8].copy_from_slice(&sum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C (iSCSI), RFC 3720 B.4: the variant MS-VHDX names.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(&[0; 32]), 0x8A91_36AA);
    }

    #[test]
    fn header_checksum_covers_the_header_with_its_field_zero() {
        let ids = HeaderIds { file_write: Guid::from_u128(1), data_write: Guid::from_u128(2) };
        let h = header(7, ids);
        assert_eq!(&h[0..4], b"head");
        let stored = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let mut zeroed = h;
        zeroed[4..8].fill(0);
        assert_eq!(stored, crc32c::crc32c(&zeroed));
        // Any change to the header breaks the checksum.
        let mut changed = h;
        changed[8] ^= 1;
        assert_ne!(
            crc32c::crc32c(&{
                changed[4..8].fill(0);
                changed
            }),
            stored
        );
        assert_eq!(h[8..16], 7u64.to_le_bytes());
        assert_eq!(h[16..32], Guid::from_u128(1).to_gpt_bytes());
        assert_eq!(h[48..64], [0; 16], "the log GUID is zero: no log to replay");
        assert_eq!(h[66..68], [1, 0]);
        assert_eq!(h[68..80], [0, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn region_table_checksum_and_entries() {
        let layout = Layout::new(10 << 30, 32 << 20).unwrap();
        let t = region_table(&layout);
        let stored = u32::from_le_bytes(t[4..8].try_into().unwrap());
        let mut zeroed = t.clone();
        zeroed[4..8].fill(0);
        assert_eq!(stored, crc32c::crc32c(&zeroed));
        // The BAT GUID as it appears on disk (first three fields little-endian).
        assert_eq!(t[16..24], [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42]);
        assert_eq!(t[32..40], BAT_OFFSET.to_le_bytes());
    }

    #[test]
    fn bat_interleaves_sector_bitmap_entries() {
        struct Case {
            size: u64,
            block: u32,
            chunk_ratio: u64,
            payload: u64,
            entries: u64,
        }
        let cases = [
            Case { size: 512, block: 32 << 20, chunk_ratio: 128, payload: 1, entries: 1 },
            Case { size: 4 << 30, block: 32 << 20, chunk_ratio: 128, payload: 128, entries: 128 },
            Case { size: (4 << 30) + 512, block: 32 << 20, chunk_ratio: 128, payload: 129, entries: 130 },
            Case { size: 9 << 30, block: 1 << 20, chunk_ratio: 4096, payload: 9216, entries: 9218 },
            Case { size: 64 << 40, block: 256 << 20, chunk_ratio: 16, payload: 262_144, entries: 278_527 },
        ];
        for c in cases {
            let l = Layout::new(c.size, c.block).unwrap();
            assert_eq!((l.chunk_ratio, l.payload_blocks, l.bat_entries), (c.chunk_ratio, c.payload, c.entries));
            assert_eq!(l.bat_index(l.payload_blocks - 1) as u64, l.bat_entries - 1, "last entry is the last block");
            assert_eq!(l.bat_length % MIB, 0);
            assert!(l.bat_length >= l.bat_entries * 8);
        }
        let l = Layout::new(9 << 30, 32 << 20).unwrap();
        assert_eq!(l.bat_index(127), 127);
        assert_eq!(l.bat_index(128), 129);
        assert_eq!(l.bat_index(256), 258);
        assert!(Layout::new(1 << 20, 3 << 20).is_err());
        assert!(Layout::new(1000, 1 << 20).is_err());
        assert!(Layout::new(0, 1 << 20).is_err());
    }

    #[test]
    fn metadata_items_lie_after_the_table() {
        let layout = Layout::new(1 << 30, 32 << 20).unwrap();
        let m = metadata(&layout, Guid::from_u128(3));
        assert_eq!(&m[0..8], b"metadata");
        assert_eq!(m[10..12], [5, 0]);
        for i in 0..5 {
            let e = &m[32 * (i + 1)..32 * (i + 2)];
            let offset = u32::from_le_bytes(e[16..20].try_into().unwrap()) as usize;
            let length = u32::from_le_bytes(e[20..24].try_into().unwrap()) as usize;
            assert!(offset >= 64 << 10 && offset + length <= m.len());
        }
        assert_eq!(m[64 << 10..(64 << 10) + 8], [0, 0, 0, 2, 0, 0, 0, 0]);
    }
}
