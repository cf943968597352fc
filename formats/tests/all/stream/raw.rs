//! `raw`: the copy is the image, and holes stay holes.

use kiln_formats::image::Container;
use kiln_formats::image::raw::Raw;

use super::util::{allocated, convert, noise, same_bytes, sparse_file};

#[test]
fn copy_is_the_image_and_stays_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("in.raw"), dir.path().join("out.raw"));
    let size = (64 << 20) + 1000;
    sparse_file(&src, size, &[(0, noise(1, 5000)), (40 << 20, noise(2, 3 << 20)), (size - 10, vec![1; 10])]);
    convert(&Raw, &src, &out, 2);
    same_bytes(&src, &out);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    assert!(allocated(&out) < 8 << 20, "holes stay holes: {} bytes allocated", allocated(&out));
    assert!(Raw.in_place());
    Raw.finish_in_place(&std::fs::File::open(&out).unwrap(), size).unwrap();
}
