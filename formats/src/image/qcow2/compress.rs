//! One guest cluster into what is stored for it: nothing (all zeros), one compressed stream, or its bytes.
//!
//! Each rayon job leases a [`Worker`] (buffers and a compressor context) from [`Workers`] and gives it back when
//! done, so at most one worker per thread is ever built, whatever the number of jobs.

use std::sync::{Mutex, PoisonError};

use flate2::{FlushCompress, Status};

use super::layout::{Cluster, GuestCluster};
use super::{ClusterSize, Compression, Error};
use crate::image::RawImage;

/// deflate's window for qcow2: 2^12 bytes (QEMU inflates with `windowBits` -12, so no longer distances).
const DEFLATE_WINDOW_BITS: u8 = 12;

/// Idle workers for one conversion.
#[derive(Debug)]
pub(super) struct Workers {
    compression: Compression,
    cluster_size: ClusterSize,
    idle: Mutex<Vec<Worker>>,
}

impl Workers {
    pub(super) fn new(compression: Compression, cluster_size: ClusterSize) -> Self {
        Self { compression, cluster_size, idle: Mutex::new(Vec::new()) }
    }

    /// A worker for one job: an idle one, or a new one when first used.
    pub(super) fn lease(&self) -> Lease<'_> {
        let worker = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Lease { workers: self, worker }
    }
}

/// A worker lent to a job, returned to [`Workers`] when dropped.
#[derive(Debug)]
pub(super) struct Lease<'a> {
    workers: &'a Workers,
    worker: Option<Worker>,
}

impl Lease<'_> {
    /// What guest cluster `guest` of `image` is stored as.
    pub(super) fn cluster(&mut self, image: &RawImage<'_>, guest: GuestCluster) -> Result<Cluster, Error> {
        let worker = match &mut self.worker {
            Some(w) => w,
            None => self.worker.insert(Worker::new(self.workers.compression, self.workers.cluster_size)?),
        };
        worker.cluster(image, guest)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            self.workers.idle.lock().unwrap_or_else(PoisonError::into_inner).push(w);
        }
    }
}

enum Codec {
    None,
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Zlib(Box<flate2::Compress>),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Zstd(_) => "Zstd",
            Self::Zlib(_) => "Zlib",
        })
    }
}

/// A cluster's buffers and a compressor context.
#[derive(Debug)]
pub(super) struct Worker {
    cluster_size: ClusterSize,
    /// The deflate level, for a fresh compressor.
    level: u32,
    input: Vec<u8>,
    output: Vec<u8>,
    codec: Codec,
}

impl Worker {
    pub(super) fn new(compression: Compression, cluster_size: ClusterSize) -> Result<Self, Error> {
        let codec = match compression {
            Compression::None => Codec::None,
            Compression::Zstd { level } => Codec::Zstd(Box::new(
                zstd::bulk::Compressor::new(level).map_err(|source| Error::Compressor { codec: "zstd", source })?,
            )),
            Compression::Zlib { level } => Codec::Zlib(Box::new(new_deflate(level))),
        };
        let n = cluster_size.len();
        let level = if let Compression::Zlib { level } = compression { level } else { 0 };
        // Twice a cluster holds any deflate stream of one (at worst 9 bits per byte, plus block headers).
        Ok(Self { cluster_size, level, input: vec![0; n], output: vec![0; 2 * n + 1024], codec })
    }

    /// What guest cluster `guest` of `image` is stored as. Only the image's data extents are read; the part of
    /// a last, partial cluster beyond the image reads as zeros.
    pub(super) fn cluster(&mut self, image: &RawImage<'_>, guest: GuestCluster) -> Result<Cluster, Error> {
        let offset = guest.0 << self.cluster_size.bits();
        let len = (image.size() - offset).min(self.cluster_size.bytes()) as usize;
        let (data, tail) = self.input.split_at_mut(len);
        image.read_at(data, offset).map_err(|source| Error::Read { offset, len: len as u64, source })?;
        tail.fill(0);
        if is_zero(&self.input) {
            return Ok(Cluster::Zero);
        }
        // Compressed data must be shorter than a cluster; else the cluster is stored as it is.
        let limit = self.cluster_size.len() - 1;
        let compressed = match &mut self.codec {
            Codec::None => None,
            Codec::Zstd(z) => z.compress_to_buffer(&self.input, &mut self.output[..limit]).ok(),
            Codec::Zlib(z) => {
                // The stream is always finished (the output has room for any deflate stream of a cluster):
                // resetting a zlib-rs 0.6 stream cut short by a full output buffer makes its next use panic.
                z.reset();
                let before = z.total_out();
                let status = z.compress(&self.input, &mut self.output, FlushCompress::Finish);
                let n = (z.total_out() - before) as usize;
                if !matches!(status, Ok(Status::StreamEnd)) {
                    // Not expected; a fresh compressor then, never a reset one.
                    **z = new_deflate(self.level);
                    None
                } else {
                    (n <= limit).then_some(n)
                }
            }
        };
        Ok(match compressed {
            Some(n) => Cluster::Compressed(self.output[..n].to_vec()),
            None => Cluster::Raw(self.input.clone()),
        })
    }
}

/// A raw deflate compressor with qcow2's window.
fn new_deflate(level: u32) -> flate2::Compress {
    flate2::Compress::new_with_window_bits(flate2::Compression::new(level), false, DEFLATE_WINDOW_BITS)
}

/// Whether `bytes` are all zero (checked 64 bytes at a time, which compiles to vector instructions).
fn is_zero(bytes: &[u8]) -> bool {
    bytes.chunks(64).all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;
    use std::os::unix::fs::FileExt;

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 4096];
        assert!(is_zero(&b));
        assert!(is_zero(&[]));
        b[4095] = 1;
        assert!(!is_zero(&b));
        b[4095] = 0;
        b[63] = 0x80;
        assert!(!is_zero(&b));
    }

    fn decompress(compression: Compression, data: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        match compression {
            Compression::Zstd { .. } => {
                assert_eq!(zstd::bulk::decompress_to_buffer(data, &mut out[..]).unwrap(), len);
            }
            Compression::Zlib { .. } => {
                let mut d = flate2::Decompress::new_with_window_bits(false, DEFLATE_WINDOW_BITS);
                let status = d.decompress(data, &mut out, flate2::FlushDecompress::Finish).unwrap();
                assert_eq!((status, d.total_out()), (Status::StreamEnd, len as u64));
            }
            Compression::None => panic!("nothing compressed without compression"),
        }
        out
    }

    /// Every codec, level and cluster size: zeros are skipped, noise is stored as it is, anything else
    /// decompresses (zstd, or deflate with a 4 KiB window as QEMU inflates it) to exactly the cluster, also when
    /// the worker is reused after a cluster that did not compress.
    #[test]
    fn clusters_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("r"))
            .unwrap();
        for bits in [9, 12, 16, 20] {
            let cs = 1usize << bits;
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut noise = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            };
            let mut data: Vec<u8> = (0..cs).map(|_| noise()).collect(); // 0: incompressible
            data.extend((0..cs).map(|i| if i % 64 < 40 { b"nix store kiln "[i % 15] } else { noise() })); // 1
            data.extend(std::iter::repeat_n(0, cs)); // 2: zeros
            data.extend((0..cs - 100).map(|i| (i / 300) as u8)); // 3: partial, compressible
            file.set_len(0).unwrap();
            file.write_all_at(&data, 0).unwrap();
            let image =
                RawImage::new(&file, data.len() as u64, vec![Range { start: 0, end: data.len() as u64 }]).unwrap();
            let cluster_size = ClusterSize::new(cs as u64).unwrap();
            let mut modes = vec![Compression::None];
            modes.extend([1, 3, 9].map(|level| Compression::Zstd { level }));
            modes.extend((1..=9).map(|level| Compression::Zlib { level }));
            for compression in modes {
                let mut w = Worker::new(compression, cluster_size).unwrap();
                for guest in [0, 1, 2, 3, 0, 3, 1] {
                    let mut want = data[guest * cs..((guest + 1) * cs).min(data.len())].to_vec();
                    want.resize(cs, 0);
                    let got = w.cluster(&image, GuestCluster(guest as u64)).unwrap();
                    let what = format!("{compression:?} {cs} cluster {guest}");
                    match (guest, compression, got) {
                        (2, _, Cluster::Zero) => {}
                        (0, _, Cluster::Raw(d)) | (_, Compression::None, Cluster::Raw(d)) => {
                            assert!(d == want, "{what}")
                        }
                        (1 | 3, _, Cluster::Compressed(d)) => {
                            assert!(d.len() < cs, "{what}");
                            assert!(decompress(compression, &d, cs) == want, "{what}");
                        }
                        (_, _, got) => panic!("{what}: {got:?}"),
                    }
                }
            }
        }
    }
}
