//! qcow2 version 3 (QEMU's `docs/interop/qcow2.txt`), written natively: the raw image's clusters are compressed in
//! parallel (one zstd frame or one raw-deflate stream each), packed byte by byte into the file in virtual order,
//! and the metadata (L2 tables, L1 table, refcount blocks and table, then the header) follows the data.
//!
//! Output depends only on the image and the options, never on the thread count: clusters are compressed in
//! batches with rayon, but placed one after another in order. All-zero clusters and clusters outside the image's
//! data extents are left unallocated (the latter are never read). A cluster that does not compress to less than a
//! cluster is stored as it is. Refcounts are exact: every host cluster, metadata included, and a host cluster
//! shared by N compressed clusters counts N, so `qemu-img check` finds neither leaks nor errors.
//!
//! Memory stays bounded: two batches of clusters (16 MiB each), up to 4 MiB of uncompressed clusters held back
//! (see `layout`), and the metadata written at the end: the L2 tables that have entries (one cluster per 8192
//! guest clusters with 64 KiB clusters) and 2 bytes of refcount per host cluster.

mod compress;
mod convert;
mod header;
mod layout;

use std::fmt;
use std::fs::File;
use std::io;

use super::{Container, Progress, RawImage};

/// How data clusters are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Copied as they are (all-zero clusters still left unallocated).
    None,
    /// One zstd frame per cluster (qcow2 `compression_type` 1; QEMU 5.1 and later read it).
    Zstd {
        /// zstd level, 1 ..= 22 (QEMU writes level 3).
        level: i32,
    },
    /// One raw deflate stream with a 4 KiB window per cluster (qcow2's default `compression_type` 0, "zlib").
    Zlib {
        /// deflate level, 1 (fastest) ..= 9 (smallest); QEMU writes 6.
        level: u32,
    },
}

impl Compression {
    /// zstd's level when none is given: what QEMU uses (zstd's default, 3).
    pub const ZSTD_DEFAULT_LEVEL: i32 = 3;
    /// deflate's level when none is given: 4. Of the large benchmark corpus's openstack disk it makes a file
    /// 1.03x the size of QEMU's level 6 of the same disk (0.99x of what nixpkgs' pipeline writes), in 0.83x
    /// the time of level 6. Level 1 (`deflate_quick`) takes half as long but makes files a quarter larger: too
    /// much for an image that is downloaded and stored many times.
    pub const ZLIB_DEFAULT_LEVEL: u32 = 4;

    /// zstd at [`Compression::ZSTD_DEFAULT_LEVEL`].
    #[must_use]
    pub const fn zstd() -> Self {
        Self::Zstd { level: Self::ZSTD_DEFAULT_LEVEL }
    }

    /// zlib (raw deflate) at [`Compression::ZLIB_DEFAULT_LEVEL`].
    #[must_use]
    pub const fn zlib() -> Self {
        Self::Zlib { level: Self::ZLIB_DEFAULT_LEVEL }
    }

    /// `none`, `zstd` or `zlib`, as `qemu-img info` names the compression type.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd { .. } => "zstd",
            Self::Zlib { .. } => "zlib",
        }
    }
}

/// The cluster size: a power of two from 512 bytes to 2 MiB (QEMU's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterSize {
    bits: u32,
}

impl ClusterSize {
    /// 64 KiB, qemu-img's default.
    pub const DEFAULT: Self = Self { bits: 16 };
    const MIN_BITS: u32 = 9;
    const MAX_BITS: u32 = 21;

    /// A cluster size of `bytes`.
    ///
    /// # Errors
    /// [`Error::ClusterSize`] unless `bytes` is a power of two in 512 ..= 2 MiB.
    pub const fn new(bytes: u64) -> Result<Self, Error> {
        let bits = bytes.trailing_zeros();
        if bytes.is_power_of_two() && bits >= Self::MIN_BITS && bits <= Self::MAX_BITS {
            Ok(Self { bits })
        } else {
            Err(Error::ClusterSize { bytes })
        }
    }

    /// The size in bytes.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        1 << self.bits
    }

    /// log2 of the size (the header's `cluster_bits`).
    #[must_use]
    pub const fn bits(self) -> u32 {
        self.bits
    }

    /// The size in bytes as a `usize` (at most 2 MiB).
    const fn len(self) -> usize {
        1 << self.bits
    }
}

impl Default for ClusterSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for ClusterSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.bytes())
    }
}

/// The qcow2 container: options, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2 {
    compression: Compression,
    cluster_size: ClusterSize,
}

impl Qcow2 {
    /// qcow2 with `compression` and 64 KiB clusters.
    ///
    /// # Errors
    /// [`Error::ZstdLevel`] or [`Error::ZlibLevel`] for a level out of range.
    pub fn new(compression: Compression) -> Result<Self, Error> {
        match compression {
            Compression::None => {}
            Compression::Zstd { level } => {
                let range = zstd::compression_level_range();
                if level < 1 || !range.contains(&level) {
                    return Err(Error::ZstdLevel { level, max: *range.end() });
                }
            }
            Compression::Zlib { level } => {
                if !(1..=9).contains(&level) {
                    return Err(Error::ZlibLevel { level });
                }
            }
        }
        Ok(Self { compression, cluster_size: ClusterSize::DEFAULT })
    }

    /// The same with clusters of `cluster_size`.
    #[must_use]
    pub const fn with_cluster_size(self, cluster_size: ClusterSize) -> Self {
        Self { cluster_size, ..self }
    }

    /// How data clusters are stored.
    #[must_use]
    pub const fn compression(&self) -> Compression {
        self.compression
    }

    /// The cluster size.
    #[must_use]
    pub const fn cluster_size(&self) -> ClusterSize {
        self.cluster_size
    }
}

impl Container for Qcow2 {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    /// QEMU sees disks in whole 512-byte sectors (it rounds a qcow2's size up to one), so the image is planned
    /// that way.
    fn virtual_size(&self, size: u64) -> u64 {
        size.next_multiple_of(header::SECTOR)
    }

    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        convert::convert(self, image, out, progress).map_err(io::Error::from)
    }
}

/// What can go wrong choosing qcow2 options or writing a qcow2 image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A cluster size that is not a power of two from 512 bytes to 2 MiB.
    #[error("qcow2 cluster size {bytes} is not a power of two from 512 bytes to 2 MiB")]
    ClusterSize {
        /// The size asked for.
        bytes: u64,
    },
    /// A zstd level out of range.
    #[error("zstd level {level} is out of range 1..={max}")]
    ZstdLevel {
        /// The level asked for.
        level: i32,
        /// The highest level.
        max: i32,
    },
    /// A deflate level out of range.
    #[error("zlib level {level} is out of range 1..=9")]
    ZlibLevel {
        /// The level asked for.
        level: u32,
    },
    /// Reading the raw image failed.
    #[error("reading the raw image at {offset}..{}", offset + len)]
    Read {
        /// Offset in the raw image.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The failure.
        source: io::Error,
    },
    /// Writing the qcow2 file failed.
    #[error("writing the qcow2 {what} at {offset}..{} of the output", offset + len)]
    Write {
        /// The structure written (`data`, `L2 table`, `L1 table`, `refcount block`, `refcount table`, `header`).
        what: &'static str,
        /// Offset in the qcow2 file.
        offset: u64,
        /// Bytes written.
        len: u64,
        /// The failure.
        source: io::Error,
    },
    /// The compressor could not be set up.
    #[error("setting up the {codec} compressor")]
    Compressor {
        /// `zstd`.
        codec: &'static str,
        /// The failure.
        source: io::Error,
    },
    /// The image does not fit qcow2's (or QEMU's) limits with this cluster size.
    #[error("{what} is {value}, beyond qcow2's limit of {limit} with {cluster_size} clusters")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
        /// The cluster size.
        cluster_size: ClusterSize,
    },
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Read { source, .. } | Error::Write { source, .. } | Error::Compressor { source, .. } => {
                source.kind()
            }
            Error::ClusterSize { .. } | Error::ZstdLevel { .. } | Error::ZlibLevel { .. } => {
                io::ErrorKind::InvalidInput
            }
            Error::TooLarge { .. } => io::ErrorKind::FileTooLarge,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_sizes() {
        struct Case {
            bytes: u64,
            want: Option<u32>,
        }
        let cases = [
            Case { bytes: 512, want: Some(9) },
            Case { bytes: 65536, want: Some(16) },
            Case { bytes: 2 << 20, want: Some(21) },
            Case { bytes: 256, want: None },
            Case { bytes: 4 << 20, want: None },
            Case { bytes: 65535, want: None },
            Case { bytes: 0, want: None },
        ];
        for c in cases {
            assert_eq!(ClusterSize::new(c.bytes).ok().map(ClusterSize::bits), c.want, "{}", c.bytes);
        }
        assert_eq!(ClusterSize::default().bytes(), 65536);
    }

    #[test]
    fn levels_are_checked() {
        assert!(Qcow2::new(Compression::zstd()).is_ok());
        assert!(Qcow2::new(Compression::Zstd { level: 19 }).is_ok());
        assert!(matches!(Qcow2::new(Compression::Zstd { level: 0 }), Err(Error::ZstdLevel { .. })));
        assert!(matches!(Qcow2::new(Compression::Zstd { level: 99 }), Err(Error::ZstdLevel { .. })));
        assert!(Qcow2::new(Compression::zlib()).is_ok());
        assert!(matches!(Qcow2::new(Compression::Zlib { level: 0 }), Err(Error::ZlibLevel { .. })));
        assert!(matches!(Qcow2::new(Compression::Zlib { level: 10 }), Err(Error::ZlibLevel { .. })));
    }

    #[test]
    fn virtual_size_is_whole_sectors() {
        let q = Qcow2::new(Compression::None).unwrap();
        assert_eq!(q.virtual_size(0), 0);
        assert_eq!(q.virtual_size(1), 512);
        assert_eq!(q.virtual_size(1024), 1024);
        assert_eq!(q.virtual_size(1025), 1536);
    }
}
