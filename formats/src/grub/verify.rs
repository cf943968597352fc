//! Reading an installation back the way the BIOS code will: sector 0's pointer to core.img, then diskboot's
//! blocklist, proving core.img comes back exactly.

use std::io;

use super::Error;
use super::embed::{BLOCKLIST_ENTRY, Embedding, FIRST_BLOCKLIST, FIRST_SEGMENT, KERNEL_SECTOR, SECTOR, blocklist_len};
use crate::disk::{Bytes, Lba, SectorSize};

impl Embedding {
    /// Reads sector 0 and core.img back through `read` (fill the buffer from this byte offset of the disk) and
    /// checks that sector 0 is the planned one (boot code, partition table and all), that it points at the planned
    /// core.img sector, and that following the blocklist from there, as diskboot does, loads exactly the planned
    /// core.img at consecutive segments from 0x820, from sectors inside the embedding area.
    ///
    /// # Errors
    ///
    /// [`Error::Read`] if reading fails, [`Error::Mismatch`] saying what differs where.
    pub fn verify<F>(&self, mut read: F) -> Result<(), Error>
    where
        F: FnMut(Bytes, &mut [u8]) -> io::Result<()>,
    {
        let mut sector = |lba: Lba, what: &'static str, buf: &mut [u8]| {
            let offset = lba.offset(SectorSize::S512);
            read(offset, buf).map_err(|source| Error::Read { what, offset, source })
        };
        let mut s0 = [0u8; SECTOR];
        sector(Lba(0), "boot sector", &mut s0)?;
        if let Some(i) = first_difference(&s0, &self.sector0) {
            return Err(mismatch(
                "boot sector",
                Bytes(i as u64),
                format!("{:#04x}, planned {:#04x}", s0[i], self.sector0[i]),
            ));
        }
        let mut lba_bytes = [0u8; 8];
        lba_bytes.copy_from_slice(&s0[KERNEL_SECTOR..KERNEL_SECTOR + 8]);
        let first = Lba(u64::from_le_bytes(lba_bytes));
        if first != self.core_lba || !self.area.contains(first) {
            return Err(mismatch(
                "boot sector",
                Bytes(KERNEL_SECTOR as u64),
                format!("points at LBA {first}, core.img was planned at {} in {}", self.core_lba, self.area),
            ));
        }

        let mut loaded = vec![0u8; SECTOR];
        sector(first, "core.img first sector", &mut loaded)?;
        let diskboot = loaded.clone();
        // The disk sector each loaded sector came from, to say where a difference lies on the disk.
        let mut sources = vec![first];
        let mut segment = FIRST_SEGMENT;
        let mut at = FIRST_BLOCKLIST;
        loop {
            let len = blocklist_len(&diskboot, at);
            if len == 0 {
                break;
            }
            let mut start = [0u8; 8];
            start.copy_from_slice(&diskboot[at..at + 8]);
            let start = Lba(u64::from_le_bytes(start));
            let seg = u16::from_le_bytes([diskboot[at + 10], diskboot[at + 11]]);
            let entry = Bytes((first.offset(SectorSize::S512).get()) + at as u64);
            if seg != segment {
                return Err(mismatch(
                    "blocklist",
                    entry,
                    format!("segment {seg:#x}, the data before it ends at {segment:#x}"),
                ));
            }
            let end = Lba(start.get() + u64::from(len));
            if !self.area.contains(start) || end > self.area.end {
                return Err(mismatch("blocklist", entry, format!("LBA {start}..{end} lies outside {}", self.area)));
            }
            let mut buf = vec![0u8; usize::from(len) * SECTOR];
            sector(start, "core.img", &mut buf)?;
            loaded.extend_from_slice(&buf);
            sources.extend((start.get()..end.get()).map(Lba));
            segment = segment.wrapping_add(len << 5);
            at = match at.checked_sub(BLOCKLIST_ENTRY) {
                Some(a) if a > 0 => a,
                _ => return Err(mismatch("blocklist", entry, "no terminating entry".to_owned())),
            };
        }
        if loaded.len() != self.core.len() {
            return Err(mismatch(
                "core.img",
                first.offset(SectorSize::S512),
                format!("the blocklist loads {} bytes, core.img has {}", loaded.len(), self.core.len()),
            ));
        }
        if let Some(i) = first_difference(&loaded, &self.core) {
            let offset = Bytes(sources[i / SECTOR].offset(SectorSize::S512).get() + (i % SECTOR) as u64);
            return Err(mismatch(
                "core.img",
                offset,
                format!("byte {i} of core.img as loaded is {:#04x}, planned {:#04x}", loaded[i], self.core[i]),
            ));
        }
        Ok(())
    }

    /// [`Embedding::verify`] on a disk image in memory.
    ///
    /// # Errors
    ///
    /// As [`Embedding::verify`]; reading past the end of `image` is an [`Error::Read`].
    pub fn verify_image(&self, image: &[u8]) -> Result<(), Error> {
        self.verify(|offset, buf| {
            let start = usize::try_from(offset.get()).map_err(io::Error::other)?;
            let src = start.checked_add(buf.len()).and_then(|end| image.get(start..end)).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("image has {} bytes", image.len()))
            })?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn mismatch(what: &'static str, offset: Bytes, detail: String) -> Error {
    Error::Mismatch { what, offset, detail }
}
