//! ext4's checksums: CRC32C (Castagnoli) as the kernel's `ext4_chksum` computes it, i.e. the raw register
//! value with no final inversion, continued from a seed.

/// Continues a raw CRC32C register `seed` over `data`.
#[must_use]
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    // The crc32c crate works on finished (inverted) values; ext4 keeps the raw register.
    !crc32c::crc32c_append(!seed, data)
}

/// The per-filesystem checksum seed: CRC32C of the UUID, from `!0`.
#[must_use]
pub fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc32c(!0, uuid)
}

/// The per-inode checksum seed: the fs seed continued over the inode number and generation (little endian).
#[must_use]
pub fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let s = crc32c(fs_seed, &ino.to_le_bytes());
    crc32c(s, &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_register_matches_the_standard_check_value() {
        // The standard CRC32C check value for "123456789" is 0xE3069283 (init !0, final inversion).
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        // Continuation: splitting the input changes nothing.
        assert_eq!(crc32c(crc32c(!0, b"1234"), b"56789"), crc32c(!0, b"123456789"));
    }
}
