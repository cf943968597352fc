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
            Compression::Zlib { level } => Codec::Zlib(Box::new(flate2::Compress::new_with_window_bits(
                flate2::Compression::new(level),
                false,
                DEFLATE_WINDOW_BITS,
            ))),
        };
        let n = cluster_size.len();
        Ok(Self { cluster_size, input: vec![0; n], output: vec![0; n], codec })
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
        let room = &mut self.output[..self.cluster_size.len() - 1];
        let compressed = match &mut self.codec {
            Codec::None => None,
            Codec::Zstd(z) => z.compress_to_buffer(&self.input, room).ok(),
            Codec::Zlib(z) => {
                z.reset();
                let before = z.total_out();
                match z.compress(&self.input, room, FlushCompress::Finish) {
                    Ok(Status::StreamEnd) => Some((z.total_out() - before) as usize),
                    _ => None,
                }
            }
        };
        Ok(match compressed {
            Some(n) => Cluster::Compressed(self.output[..n].to_vec()),
            None => Cluster::Raw(self.input.clone()),
        })
    }
}

/// Whether `bytes` are all zero (checked 64 bytes at a time, which compiles to vector instructions).
fn is_zero(bytes: &[u8]) -> bool {
    bytes.chunks(64).all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
