//! Writing a plan: file data copied by rayon workers with positioned writes at planned offsets, metadata
//! serialised per block group in parallel. Nothing is locked and nothing is decided here.

use std::ops::Range;

use rayon::prelude::*;

use super::Error;
use super::csum::{crc32c, fs_seed, inode_seed};
use super::layout::{BLOCK, BLOCKS_PER_GROUP, has_super};
use super::plan::{DataJob, Plan, render_dir};
use super::superblock::{descriptors, superblock};
use super::tree::{Node, Source, Tree};
use crate::copy;
use crate::sink::WriteAt;

fn write(sink: &dyn WriteAt, buf: &[u8], offset: u64, what: &'static str) -> Result<(), Error> {
    sink.write_all_at(buf, offset).map_err(|source| Error::Write { offset, what, source })
}

impl Plan {
    /// Writes the filesystem into `sink` at byte offset `base`. The sink must read as zeros where nothing is
    /// written (a new sparse file, a zeroed partition): unused inode tables, the journal and all-zero file
    /// blocks are left as they are.
    pub fn write(&self, tree: &Tree, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        let (data, meta) = rayon::join(
            || self.data.par_iter().try_for_each(|job| copy_file(tree, job, sink, base)),
            || self.write_metadata(tree, sink, base),
        );
        data?;
        meta
    }

    /// Copies the data of every file whose job index (in [`Plan::data`]) `skip` does not claim, in parallel:
    /// with [`Plan::write_metadata`] and [`Plan::file_writer`], for the files a caller does not copy itself.
    pub fn write_files(
        &self,
        tree: &Tree,
        sink: &dyn WriteAt,
        base: u64,
        skip: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<(), Error> {
        self.data
            .par_iter()
            .enumerate()
            .filter(|(i, _)| !skip(*i))
            .try_for_each(|(_, job)| copy_file(tree, job, sink, base))
    }

    /// Writes everything but file data (superblocks, descriptors, bitmaps, inode tables, directories, extent
    /// trees, the journal superblock). With [`Plan::file_writer`], this lets a caller copy file data itself,
    /// e.g. to hash it in the same pass.
    pub fn write_metadata(&self, tree: &Tree, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        // Known blocks, and directories rendered now from the plan (pure: the same bytes as at planning).
        self.blocks.par_iter().try_for_each(|(at, bytes)| write(sink, bytes, base + at * BLOCK, "metadata block"))?;
        let (fs_seed, hash_seed) = (fs_seed(&self.opts.uuid), self.opts.hash_seed_words());
        self.dirs.par_iter().try_for_each(|job| -> Result<(), Error> {
            let add_lf = job.node == Some(0) && self.synthetic_lost_found;
            let r = render_dir(tree, &self.ino, job.node, job.parent, add_lf, &hash_seed, fs_seed);
            let mut blocks = r.blocks.iter();
            for run in &job.runs {
                let mut bytes = Vec::with_capacity(((run.end - run.start) * BLOCK) as usize);
                for b in blocks.by_ref().take((run.end - run.start) as usize) {
                    bytes.extend_from_slice(b);
                }
                write(sink, &bytes, base + run.start * BLOCK, "directory")?;
            }
            Ok(())
        })?;
        let csums: Vec<(u32, u32)> = (0..self.geometry.groups)
            .into_par_iter()
            .map(|g| self.write_group(sink, base, g))
            .collect::<Result<_, _>>()?;
        let gdt = descriptors(self, &csums);
        (0..self.geometry.groups).into_par_iter().filter(|&g| has_super(g)).try_for_each(|g| {
            let at = base + self.geometry.group_start(g) * BLOCK;
            let sb = superblock(self, g);
            // The primary superblock sits 1024 bytes into block 0; backups start their group's first block.
            let sb_at = if g == 0 { at + 1024 } else { at };
            write(sink, &sb, sb_at, "superblock")?;
            write(sink, &gdt, at + BLOCK, "group descriptors")
        })
    }

    /// Writes group `g`'s bitmaps and inode table; returns the bitmaps' checksums.
    fn write_group(&self, sink: &dyn WriteAt, base: u64, g: u64) -> Result<(u32, u32), Error> {
        let geo = &self.geometry;
        let gp = &self.groups[g as usize];
        let seed = fs_seed(&self.opts.uuid);
        // Block bitmap: used ranges within the group; bits past the end of a short last group are set.
        let start = geo.group_start(g);
        let end = start + geo.group_len(g);
        let mut bb = vec![0u8; BLOCK as usize];
        let first = self.used.partition_point(|r| r.end <= start);
        for r in &self.used[first..] {
            if r.start >= end {
                break;
            }
            set_bits(&mut bb, r.start.max(start) - start..r.end.min(end) - start);
        }
        set_bits(&mut bb, end - start..BLOCKS_PER_GROUP);
        write(sink, &bb, base + gp.block_bitmap * BLOCK, "block bitmap")?;
        // Inode bitmap: the used inodes (always the lowest numbers of the group), padding bits set.
        let ipg = geo.inodes_per_group;
        let used = ipg - gp.free_inodes;
        let mut ib = vec![0u8; BLOCK as usize];
        set_bits(&mut ib, 0..used);
        set_bits(&mut ib, ipg..BLOCK * 8);
        write(sink, &ib, base + gp.inode_bitmap * BLOCK, "inode bitmap")?;
        // Inode table: only the blocks holding used inodes, a piece at a time (a whole group's table would be
        // megabytes held while the data pass runs beside it).
        const PIECE: u64 = 512; // inodes: 128 KiB
        let first_ino = g * ipg + 1;
        let mut table = Vec::new();
        for piece in (0..used).step_by(PIECE as usize) {
            let n = PIECE.min(used - piece);
            table.clear();
            table.resize((n * 256).next_multiple_of(BLOCK) as usize, 0);
            for i in 0..n {
                let ino = first_ino + piece + i;
                if let Some(Some(rec)) = self.inodes.get(ino as usize - 1) {
                    let raw = rec.to_bytes(inode_seed(seed, ino as u32, 0));
                    table[(i * 256) as usize..(i * 256 + 256) as usize].copy_from_slice(&raw);
                }
            }
            write(sink, &table, base + gp.inode_table * BLOCK + piece * 256, "inode table")?;
        }
        let bcsum = crc32c(seed, &bb);
        let icsum = crc32c(seed, &ib[..(ipg / 8) as usize]);
        Ok((bcsum, icsum))
    }
}

/// Writes one file's bytes at its planned blocks, given in any order of logical offsets.
pub struct FileWriter<'a> {
    job: &'a DataJob,
    sink: &'a dyn WriteAt,
    base: u64,
}

impl Plan {
    /// A writer for the data of file `node`, or `None` for a node without data blocks (directories,
    /// symlinks, empty files).
    #[must_use]
    pub fn file_writer<'a>(&'a self, node: super::NodeId, sink: &'a dyn WriteAt, base: u64) -> Option<FileWriter<'a>> {
        self.job_of(node).map(|i| FileWriter { job: &self.data[i], sink, base })
    }

    /// The index in [`Plan::data`] of file `node`'s job, if it has data blocks.
    #[must_use]
    pub fn job_of(&self, node: super::NodeId) -> Option<usize> {
        self.job_of.get(node as usize).filter(|&&i| i != u32::MAX).map(|&i| i as usize)
    }
}

impl std::fmt::Debug for FileWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter").field("job", self.job).field("base", &self.base).finish_non_exhaustive()
    }
}

impl FileWriter<'_> {
    /// The file's planned size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.job.size
    }

    /// Where byte `offset` of the file lies in the sink (including the `base` given to
    /// [`Plan::file_writer`]), and how many bytes from there on are contiguous in the sink: to the end of its
    /// run of blocks, so the last run's count includes the slack after the file's end in its last block.
    /// `None` at or beyond the end of the planned blocks. Lets a caller gather the data of files that lie
    /// next to each other into one large write.
    #[must_use]
    pub fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let mut logical = 0u64;
        for run in &self.job.runs {
            let len = (run.end - run.start) * BLOCK;
            if offset < logical + len {
                let within = offset - logical;
                return Some((self.base + run.start * BLOCK + within, len - within));
            }
            logical += len;
        }
        None
    }

    /// Writes `bytes` at byte `offset` of the file (within its planned size).
    pub fn write_at(&self, mut offset: u64, mut bytes: &[u8]) -> Result<(), Error> {
        assert!(offset + bytes.len() as u64 <= self.job.size, "write beyond the planned size of the file");
        let mut logical = 0u64;
        for run in &self.job.runs {
            let len = (run.end - run.start) * BLOCK;
            if bytes.is_empty() {
                break;
            }
            if offset < logical + len {
                let within = offset - logical;
                let n = (len - within).min(bytes.len() as u64) as usize;
                write(self.sink, &bytes[..n], self.base + run.start * BLOCK + within, "file data")?;
                bytes = &bytes[n..];
                offset += n as u64;
            }
            logical += len;
        }
        Ok(())
    }
}

fn set_bits(bitmap: &mut [u8], range: Range<u64>) {
    for bit in range {
        bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
    }
}

/// Copies one file's bytes to its planned blocks, skipping holes in the source and all-zero chunks.
fn copy_file(tree: &Tree, job: &DataJob, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
    let Node::File { source, .. } = &tree.nodes[job.node as usize] else {
        unreachable!("data jobs are files");
    };
    let data = match source {
        Source::Bytes(bytes) => copy::Data::Bytes(bytes),
        Source::Host(path) => copy::Data::Host(path),
        Source::Caller => return Err(Error::NotWritten { node: job.node }),
    };
    let mut left = job.size;
    let pieces = job.runs.iter().map(|run| {
        let len = ((run.end - run.start) * BLOCK).min(left);
        left -= len;
        copy::Piece { at: base + run.start * BLOCK, len }
    });
    Ok(copy::copy_file(data, job.size, pieces, sink)?)
}

#[cfg(test)]
mod tests {
    use super::super::{Meta, Options, Size, Source, Tree, plan};
    use super::*;

    #[test]
    fn caller_files_are_located_and_left_to_the_caller() {
        let meta = Meta { perm: 0o444, uid: 0, gid: 0, mtime: 1 };
        let mut tree = Tree::new(meta);
        let big = tree.file(0, b"big", meta, 3 * BLOCK + 5, Source::Caller).unwrap();
        let mut opts = Options::new(b"t", [1; 16], [2; 16], 1);
        opts.size = Size::Fixed { bytes: 64 << 20 };
        let p = plan(&tree, &opts).unwrap();
        let sink = tempfile::tempfile().unwrap();
        sink.set_len(64 << 20).unwrap();
        assert!(matches!(p.write(&tree, &sink, 0), Err(Error::NotWritten { node }) if node == big));
        let w = p.file_writer(big, &sink, 7 * BLOCK).unwrap();
        let (at, contiguous) = w.locate(BLOCK + 3).unwrap();
        let run = &p.data[p.job_of(big).unwrap()].runs[0];
        assert_eq!((at, contiguous), ((7 + run.start + 1) * BLOCK + 3, 4 * BLOCK - BLOCK - 3));
        assert_eq!(w.locate(4 * BLOCK), None);
        // Skipped by write_files when claimed: the rest is written.
        p.write_files(&tree, &sink, 0, &|_| true).unwrap();
    }

    #[test]
    fn a_file_with_more_names_than_ext4_holds_is_refused() {
        let meta = Meta { perm: 0o444, uid: 0, gid: 0, mtime: 1 };
        let mut tree = Tree::new(meta);
        let dir = tree.mkdir(0, b"d", meta).unwrap();
        let file = tree.file(0, b"f", meta, 0, Source::Bytes(std::sync::Arc::from(&[][..]))).unwrap();
        for i in 1..super::super::MAX_LINKS {
            tree.link(dir, format!("{i}").as_bytes(), file).unwrap();
        }
        let mut opts = Options::new(b"t", [1; 16], [2; 16], 1);
        opts.size = Size::Fixed { bytes: 64 << 20 };
        assert!(plan(&tree, &opts).is_ok(), "exactly MAX_LINKS names fit");
        tree.link(dir, b"one-too-many", file).unwrap();
        let Err(err) = plan(&tree, &opts) else { panic!("one name more is refused") };
        assert!(matches!(err, Error::TooManyLinks { node, links: 65_001 } if node == file), "{err}");
    }
}
