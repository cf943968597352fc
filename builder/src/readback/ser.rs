//! Serialisers for the typed units of what is read back, as `kiln inspect --json` and `kiln verify`'s report
//! show them: bytes, sectors and LBAs as numbers, GUIDs as text.

use std::fmt::Display;
use std::path::Path;

use kiln_formats::disk::{Bytes, GptAttributes, Lba, SectorSize};
use serde::Serializer;

/// A path as text (lossy for names that are not UTF-8, which JSON strings cannot hold).
pub(crate) fn path<S: Serializer>(v: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&v.display())
}

pub(crate) fn bytes<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.get())
}

pub(crate) fn opt_bytes<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_u64(v.get()),
        None => s.serialize_none(),
    }
}

pub(crate) fn lba<S: Serializer>(v: &Lba, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.get())
}

/// A sector size as its bytes.
pub(crate) fn sector<S: Serializer>(v: &SectorSize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.bytes().get())
}

pub(crate) fn opt_sector<S: Serializer>(v: &Option<SectorSize>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => sector(v, s),
        None => s.serialize_none(),
    }
}

pub(crate) fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(crate) fn opt_display<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A DOS disk signature as `sfdisk --json` prints it: `0x` and eight hex digits.
pub(crate) fn signature<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#010x}"))
}

/// All 64 attribute bits as `0x` and 16 hex digits (a JSON number would lose the high bits).
pub(crate) fn attributes<S: Serializer>(v: &GptAttributes, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{:#018x}", v.0))
}
