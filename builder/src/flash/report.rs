//! What `kiln flash` says: the dry run's plan and the summary after writing, as text.

use std::fmt::Write as _;

use super::target::Holes;
use super::{Flashed, fit::Table2};
use crate::units::human_bytes;

fn size(bytes: u64) -> String {
    format!("{bytes} bytes ({})", human_bytes(bytes))
}

/// The lines that say what will be (or was) written where and which checks are made.
#[must_use]
pub fn plan_text(f: &Flashed) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "  source   {} ({}), a disk of {}", f.source, value(&f.format), size(f.image_size));
    if let Some(b) = &f.bmap {
        let data = f.data_bytes.map_or(String::new(), |d| format!(": {} of data", human_bytes(d)));
        let _ = writeln!(s, "  bmap     {b}{data}");
    } else if let Some(d) = f.data_bytes {
        let _ = writeln!(s, "  data     {} (from the source's own map)", human_bytes(d));
    }
    for c in &f.checks {
        let _ = writeln!(s, "  check    {} (expected value from {})", c.what, c.from);
    }
    if f.checks.is_empty() {
        let _ = writeln!(s, "  check    none: no --sha256, no .sha256 and no block map beside the source");
    }
    let _ = writeln!(s, "  target   {} ({}, {})", f.target, f.target_kind.replace('-', " "), size(f.target_size));
    if !f.replaced.is_empty() {
        let _ = writeln!(s, "  replaces {} (--force)", f.replaced.join("; "));
    }
    let _ = writeln!(s, "  wipe     the target's first and last MiB (old signatures), flushed, before any data");
    let holes = match f.holes {
        Holes::Discard => "holes deallocated (punched / zeroed by the device without writing)",
        Holes::Write => "holes written with zeros (--zero-holes)",
        Holes::Leave => "holes left as they are (the device cannot zero them without writing; --zero-holes does)",
    };
    let _ = writeln!(s, "  data     written in order, flushed every few MiB; {holes}");
    let table = match (f.table, f.table_how) {
        ("none", _) | (_, Table2::None) => "none: the image is one filesystem".to_owned(),
        (t, Table2::AsIs) => format!("{t}, written as it is"),
        (t, Table2::Refit) => {
            let mut t = format!("{t}, rebuilt for the target");
            if let Some(at) = f.backup_gpt_at {
                let _ = write!(t, ": backup GPT header at byte {at} (the target's last sector)");
            }
            t
        }
    };
    let _ = writeln!(s, "  table    {table}");
    if let Some((from, to)) = f.sectors.filter(|(a, b)| a != b) {
        let parts: Vec<String> = f.remade.iter().map(|r| format!("partition {}", r.number)).collect();
        let _ = writeln!(
            s,
            "  sectors  re-targeted from {from} to {to} bytes: table in {to}-byte LBAs, FAT re-made in {}",
            if parts.is_empty() { "no partition".to_owned() } else { parts.join(", ") }
        );
    }
    if let Some(g) = &f.grown {
        let _ = writeln!(s, "  grow     partition {} from {} to {}", g.number, size(g.from), size(g.to));
    }
    if f.verify {
        let _ = writeln!(s, "  verify   everything written read back bypassing the page cache and compared");
    }
    let _ = writeln!(s, "  last     the partition tables (sector 0 last), flushed and read back");
    s
}

/// After writing: the plan, then what was done and how fast.
#[must_use]
pub fn summary_text(f: &Flashed) -> String {
    let mut s = format!("flashed {} to {}\n", f.source, f.target);
    s.push_str(&plan_text(f));
    let rate = |bytes: u64, secs: f64| if secs > 0.0 { human_bytes((bytes as f64 / secs) as u64) } else { "-".into() };
    let _ = writeln!(
        s,
        "  written  {} in {:.2}s ({}/s, flushed), {} of holes",
        human_bytes(f.written_bytes),
        f.write_secs,
        rate(f.written_bytes, f.write_secs),
        human_bytes(f.hole_bytes)
    );
    if f.verify {
        let how = if f.verified_direct { "O_DIRECT" } else { "page cache dropped" };
        let _ = writeln!(
            s,
            "  verified {} in {:.2}s ({}/s, {how})",
            human_bytes(f.verified_bytes),
            f.verify_secs,
            rate(f.verified_bytes, f.verify_secs)
        );
    }
    s
}

fn value<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
