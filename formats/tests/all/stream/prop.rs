//! Random sparse images (holes, zero blocks inside data, sizes off the 512 and 4096 grids, empty) round-trip
//! through `raw` (the copy), `raw.zst` (`zstd -d`) and `gce` (`tar -xSzf`), compared with `cmp`.

use kiln_formats::image::gce::Gce;
use kiln_formats::image::raw::Raw;
use kiln_formats::image::zst::RawZst;
use proptest::prelude::*;

use super::util::{convert, noise, same_bytes, sparse_file, untar, unzstd};

/// What one write puts into the image.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Noise,
    Zeros,
    Byte(u8),
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![Just(Fill::Noise), Just(Fill::Zeros), any::<u8>().prop_map(Fill::Byte)]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..3_000_000, (1u64..700).prop_map(|blocks| blocks * 4096)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn round_trips(
        size in size(),
        writes in prop::collection::vec((0.0f64..1.0, 0usize..300_000, fill()), 0..8),
        threads in 1usize..3,
    ) {
        let writes: Vec<(u64, Vec<u8>)> = writes
            .iter()
            .enumerate()
            .filter(|_| size > 0)
            .map(|(i, &(at, len, what))| {
                let off = ((at * size as f64) as u64).min(size - 1);
                let len = len.min((size - off) as usize);
                let bytes = match what {
                    Fill::Noise => noise(i as u64 + 1, len),
                    Fill::Zeros => vec![0; len],
                    Fill::Byte(b) => vec![b; len],
                };
                (off, bytes)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let src = d.join("in.raw");
        sparse_file(&src, size, &writes);

        convert(&Raw, &src, &d.join("out.raw"), threads);
        same_bytes(&src, &d.join("out.raw"));

        convert(&RawZst::new(1, threads as u32), &src, &d.join("out.raw.zst"), threads);
        unzstd(&d.join("out.raw.zst"), &d.join("back.raw"));
        same_bytes(&src, &d.join("back.raw"));

        convert(&Gce::default(), &src, &d.join("out.raw.tar.gz"), threads);
        let extracted = untar(&d.join("out.raw.tar.gz"), &d.join("x"));
        same_bytes(&src, &extracted);
        prop_assert_eq!(std::fs::metadata(&extracted).unwrap().len(), size);
    }
}
