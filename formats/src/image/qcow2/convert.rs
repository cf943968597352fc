//! The conversion: batches of guest clusters are read and compressed in parallel while the previous batch is
//! written; results are placed in guest order, so the file does not depend on the number of threads.

use std::fs::File;
use std::ops::Range;

use rayon::prelude::*;

use super::compress::Workers;
use super::layout::{Cluster, GuestCluster, Layout, Run};
use super::{ClusterSize, Compression, Error, Qcow2};
use crate::image::{Container, Progress, RawImage};
use crate::sink::WriteAt;

/// Guest bytes read and compressed per batch (16 MiB, or 16 clusters if more): enough work to share among
/// threads, little enough memory (the batch being compressed plus the one being written).
const BATCH_BYTES: u64 = 16 << 20;

pub(super) fn convert(q: &Qcow2, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> Result<(), Error> {
    let size = q.virtual_size(image.size());
    let workers = Workers::new(q.compression, q.cluster_size);
    let mut placing = Placing {
        layout: Layout::new(q.cluster_size),
        cluster_size: q.cluster_size,
        image_size: image.size(),
        done: 0,
    };
    let batch_clusters = (BATCH_BYTES >> q.cluster_size.bits()).max(16);
    let mut compressed: Option<(Vec<GuestCluster>, Vec<Cluster>)> = None;
    for batch in Batches::new(image.extents(), q.cluster_size, batch_clusters) {
        // The previous batch is placed and written while this one is compressed.
        let (placed, clusters) = rayon::join(
            || placing.place(compressed.take(), out, progress),
            || {
                batch
                    .par_iter()
                    .map_init(|| workers.lease(), |lease, &guest| lease.cluster(image, guest))
                    .collect::<Result<Vec<_>, _>>()
            },
        );
        placed?;
        compressed = Some((batch, clusters?));
    }
    placing.place(compressed, out, progress)?;
    placing.layout.finish(size, compression_type(q.compression), out)?;
    progress.advance(image.size() - placing.done);
    Ok(())
}

/// Places compressed batches in order and writes them.
struct Placing {
    layout: Layout,
    cluster_size: ClusterSize,
    image_size: u64,
    /// Bytes of the image done (reported to the progress).
    done: u64,
}

impl Placing {
    fn place(
        &mut self,
        batch: Option<(Vec<GuestCluster>, Vec<Cluster>)>,
        out: &dyn WriteAt,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let Some((guests, clusters)) = batch else { return Ok(()) };
        for (&guest, cluster) in guests.iter().zip(clusters) {
            self.layout.push(guest, cluster)?;
        }
        write_runs(out, &self.layout.take_writes())?;
        let last = guests.last().map_or(0, |g| g.0 + 1);
        let reached = (last << self.cluster_size.bits()).min(self.image_size);
        progress.advance(reached - self.done);
        self.done = reached;
        Ok(())
    }
}

/// The header's `compression_type`.
fn compression_type(c: Compression) -> u8 {
    match c {
        Compression::None | Compression::Zlib { .. } => 0,
        Compression::Zstd { .. } => 1,
    }
}

fn write_runs(out: &dyn WriteAt, runs: &[Run]) -> Result<(), Error> {
    for run in runs {
        out.write_all_at(&run.data, run.offset).map_err(|source| Error::Write {
            what: "data",
            offset: run.offset,
            len: run.data.len() as u64,
            source,
        })?;
    }
    Ok(())
}

/// The guest clusters that overlap the data extents, in order, at most `max` per batch.
#[derive(Debug)]
struct Batches<'a> {
    extents: &'a [Range<u64>],
    cluster_size: ClusterSize,
    max: u64,
    /// The first guest cluster not yet in a batch.
    next: u64,
}

impl<'a> Batches<'a> {
    fn new(extents: &'a [Range<u64>], cluster_size: ClusterSize, max: u64) -> Self {
        Self { extents, cluster_size, max, next: 0 }
    }
}

impl Iterator for Batches<'_> {
    type Item = Vec<GuestCluster>;

    fn next(&mut self) -> Option<Vec<GuestCluster>> {
        let mut batch = Vec::new();
        while let Some((e, rest)) = self.extents.split_first() {
            let first = (e.start >> self.cluster_size.bits()).max(self.next);
            let end = e.end.div_ceil(self.cluster_size.bytes());
            let room = self.max - batch.len() as u64;
            if first >= end || e.is_empty() {
                self.extents = rest;
                continue;
            }
            if room == 0 {
                break;
            }
            let take = room.min(end - first);
            batch.extend((first..first + take).map(GuestCluster));
            self.next = first + take;
        }
        (!batch.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_extents_once() {
        struct Case {
            name: &'static str,
            extents: Vec<Range<u64>>,
            max: u64,
            want: Vec<Vec<u64>>,
        }
        let k = 1024;
        let cases = [
            Case { name: "none", extents: vec![], max: 4, want: vec![] },
            Case { name: "empty extent", extents: vec![Range { start: 5, end: 5 }], max: 4, want: vec![] },
            Case { name: "one byte", extents: vec![Range { start: 0, end: 1 }], max: 4, want: vec![vec![0]] },
            Case {
                name: "shared cluster counted once",
                extents: vec![0..100, 200..k + 1, k + 10..k + 20, 3 * k..3 * k + 1],
                max: 4,
                want: vec![vec![0, 1, 3]],
            },
            Case {
                name: "split by max",
                extents: vec![k..6 * k, 9 * k - 1..9 * k + 1],
                max: 2,
                want: vec![vec![1, 2], vec![3, 4], vec![5, 8], vec![9]],
            },
        ];
        let cs = ClusterSize::new(k).unwrap();
        for c in cases {
            let got: Vec<Vec<u64>> =
                Batches::new(&c.extents, cs, c.max).map(|b| b.into_iter().map(|g| g.0).collect()).collect();
            assert_eq!(got, c.want, "{}", c.name);
        }
    }
}
