//! What the user asked to have written: the format (from `--format`, the output's extension or the profile),
//! compression, block map, checksums and a bundle's label, checked for combinations that make no sense. The
//! output stage writes it.

use std::path::Path;

use anyhow::{Result, bail};

use crate::cli::{Compression, Format};

/// The format an output path's extension asks for, if it names one.
#[must_use]
pub fn format_of(output: &Path) -> Option<Format> {
    let name = output.file_name()?.to_str()?.to_ascii_lowercase();
    [
        (".raw.tar.gz", Format::Gce),
        (".raw.zst", Format::RawZst),
        (".img.zst", Format::RawZst),
        (".zst", Format::RawZst),
        (".qcow2", Format::Qcow2),
        (".vhdx", Format::Vhdx),
        (".vhd", Format::Vhd),
        (".vmdk", Format::Vmdk),
        (".raw", Format::Raw),
        (".img", Format::Raw),
    ]
    .into_iter()
    .find(|(ext, _)| name.ends_with(ext))
    .map(|(_, f)| f)
}

/// What the user asked to have written.
#[derive(Debug, Clone)]
pub struct Request {
    /// The format.
    pub format: Format,
    /// `--compress`, for qcow2.
    pub compress: Option<Compression>,
    /// `--bmap`, for raw and raw.zst.
    pub bmap: bool,
    /// Whether to write checksums (`--checksum`/`--no-checksum`; `None`: the format's default).
    pub checksum: Option<bool>,
    /// The image label for bundles (`image-info.json`), else derived from the toplevel's name.
    pub label: Option<String>,
}

impl Request {
    /// Refuses combinations that make no sense, before any work.
    ///
    /// # Errors
    /// `--compress` with a format other than qcow2; `--bmap` with a format other than raw or raw.zst.
    pub fn check(&self) -> Result<()> {
        let name = crate::cli::value_name(self.format);
        if let Some(c) = self.compress
            && self.format != Format::Qcow2
            && c != Compression::None
        {
            bail!(
                "--compress applies to --format qcow2, not {name} (vmdk and gce always compress with deflate, \
                 raw.zst with zstd)"
            );
        }
        if self.bmap && !matches!(self.format, Format::Raw | Format::RawZst) {
            bail!("--bmap goes with --format raw or raw.zst (what bmaptool flashes), not {name}");
        }
        Ok(())
    }

    /// Whether checksums are written: as asked, else on for bundles (ami, gce).
    #[must_use]
    pub fn writes_checksum(&self) -> bool {
        self.checksum.unwrap_or(matches!(self.format, Format::Ami | Format::Gce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_extensions() {
        for (name, want) in [
            ("a.qcow2", Some(Format::Qcow2)),
            ("a.raw.zst", Some(Format::RawZst)),
            ("nixos.raw.tar.gz", Some(Format::Gce)),
            ("A.VHD", Some(Format::Vhd)),
            ("a.vhdx", Some(Format::Vhdx)),
            ("a.vmdk", Some(Format::Vmdk)),
            ("disk.img", Some(Format::Raw)),
            ("disk", None),
            ("disk.tar.gz", None),
        ] {
            assert_eq!(format_of(Path::new(name)), want, "{name}");
        }
    }
}
