//! The streaming outputs (`raw`, `raw.zst`, `gce`), the block map and SHA256SUMS, checked by independent
//! tools: `zstd -d`/`-t`/`-l`, `tar -t`/`-xS` (GNU tar) and Python's tarfile, `gzip -t`, `bmaptool copy`,
//! `sha256sum -c` and `cmp`. Missing tools fail the tests with the Debian package to install.

mod bmap;
mod gce;
mod prop;
mod raw;
mod util;
mod zst;
