//! GRUB's LZMA encoder, reimplemented: the raw LZMA stream `grub-mkimage` writes into an i386-pc core.img,
//! byte for byte.
//!
//! grub-mkimage (GRUB 2.06, `util/mkimage.c`: `compress_kernel_lzma`) compresses with the LZMA SDK 4.58 beta
//! encoder GRUB carries (`grub-core/lib/LzmaEnc.c`, `LzFind.c`), with `LzmaEncProps_Init`'s defaults and
//! dictionary 64 KiB, `lc` 3, `lp` 0, `pb` 2: level 5, the normal algorithm (optimal parsing), 32 fast bytes,
//! the BT4 match finder with 4 hash bytes and 16 + 32/2 = 32 search cycles, no end marker. It keeps the raw
//! stream (the 5 properties bytes are not written: GRUB's decompressor has the settings built in).
//!
//! The LZMA format fixes how a stream decodes, not which matches an encoder picks: another encoder (liblzma,
//! lzma-rust2, a later LZMA SDK) makes different, equally valid choices. This one makes 4.58's, so that kiln's
//! core.img equals grub-mkimage's. It is written for those parameters only, from the algorithm (read in GRUB's
//! sources for the facts that decide the output); no code is taken from GRUB or the LZMA SDK:
//! - [`rc`]: the range coder, adaptive bit probabilities (11 bits, moving by 1/32) and the price table
//!   (1/16-bit units, one entry per 16 probability values);
//! - [`bt4`]: the match finder, with the order and lengths of the matches it reports;
//! - [`encoder`]: the models, price tables (length prices refreshed per position state after as many codings
//!   as they have entries; distance prices after 128 matches and align prices after 16 aligned distances, both
//!   only when the coder catches up with the match finder), the optimal parser over up to 4096 positions
//!   with its shortcuts (literal + rep0, rep + literal + rep0, match + literal + rep0; a rep or match of 32
//!   bytes or more taken at once), and the flush (5 bytes, no end marker).
//!
//! [`decode`] reads such streams back (any encoder's, with these `lc`, `lp`, `pb`), for checking.

mod bt4;
mod decoder;
mod encoder;
mod rc;

pub use decoder::decode;

/// Dictionary size grub-mkimage uses.
pub const DICT_SIZE: u32 = 1 << 16;
/// Literal context bits.
pub const LC: u32 = 3;
/// Literal position bits (the literal coder here assumes 0).
pub const LP: u32 = 0;
/// Position bits.
pub const PB: u32 = 2;
/// The encoder's fast bytes (nice length).
pub const NICE_LEN: u32 = 32;

/// `data` as grub-mkimage's raw LZMA stream.
///
/// # Panics
///
/// If `data` is 4 GiB or more.
#[must_use]
pub fn encode(data: &[u8]) -> Vec<u8> {
    assert!(u32::try_from(data.len()).is_ok(), "LZMA input under 4 GiB");
    encoder::Encoder::new(data).run()
}

#[cfg(test)]
mod tests;
