//! `raw.zst`: the raw image as zstd frames, decompressed as it streams.

use std::io::Read;

use anyhow::Context;

use super::pipe::{Decode, MAX_CHUNK};
use super::tally::{drain, read_full};

/// The image size the first frame's header gives, when it does.
pub(super) fn content_size(head: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(head).ok().flatten()
}

/// Decompresses `seq` into the image, then reads whatever follows to its end.
pub(super) fn decode(seq: Box<dyn Read + Send>, name: String) -> Decode {
    Box::new(move |emit| {
        let mut dec = zstd::stream::read::Decoder::new(seq).with_context(|| format!("{name}: starting zstd"))?;
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut off = 0u64;
        loop {
            let n = read_full(&mut dec, &mut buf)
                .with_context(|| format!("{name}: decompressing zstd at image byte {off}"))?;
            emit.put(off, &buf[..n])?;
            off += n as u64;
            if n < buf.len() {
                break;
            }
        }
        let mut rest = dec.finish();
        drain(&mut rest).with_context(|| format!("{name}: reading the end of the file"))?;
        Ok(())
    })
}
