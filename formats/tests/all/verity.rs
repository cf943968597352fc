//! dm-verity: kiln's hash device checked by cryptsetup's `veritysetup verify`, and the same bytes and root
//! hash as `veritysetup format` makes with the same salt and UUID.

use std::os::unix::fs::FileExt;
use std::process::Command;

use kiln_formats::verity::{Verity, hex};

use crate::common::{run, tool, xorshift_bytes};

fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[test]
fn veritysetup_verifies_it_and_formats_the_same_bytes() {
    let veritysetup = tool("veritysetup", "cryptsetup-bin");
    let dir = tempfile::tempdir().unwrap();
    // Sizes: one block, exactly one hash block of them, one more (two levels), and 3 levels.
    for blocks in [1u64, 128, 129, 16_385] {
        let data_path = dir.path().join(format!("data-{blocks}"));
        let data: Vec<u8> = xorshift_bytes(blocks, (blocks * 4096) as usize).collect();
        std::fs::write(&data_path, &data).unwrap();
        let salt: Vec<u8> = xorshift_bytes(99, 32).collect();
        let uuid = [0x5a; 16];
        let v = Verity::new(data.len() as u64, &salt, uuid).unwrap();
        let hash_path = dir.path().join(format!("hash-{blocks}"));
        let hash = std::fs::File::create(&hash_path).unwrap();
        hash.set_len(v.hash_bytes()).unwrap();
        let read = |buf: &mut [u8], at: u64| data_read(&data, buf, at);
        let root = v.write(&read, &hash, 0).unwrap();
        drop(hash);
        let verify = run(Command::new(&veritysetup).arg("verify").arg(&data_path).arg(&hash_path).arg(hex(&root)));
        assert!(verify.ok, "{blocks} blocks: veritysetup verify: {}", verify.text);
        let theirs = dir.path().join(format!("theirs-{blocks}"));
        let format = run(Command::new(&veritysetup)
            .arg("format")
            .arg(format!("--salt={}", hex(&salt)))
            .arg(format!("--uuid={}", uuid_text(&uuid)))
            .arg(&data_path)
            .arg(&theirs));
        assert!(format.ok, "veritysetup format: {}", format.text);
        assert!(format.text.contains(&format!("Root hash:      \t{}", hex(&root))), "{blocks} blocks: {}", format.text);
        let (ours, theirs) = (std::fs::read(&hash_path).unwrap(), std::fs::read(&theirs).unwrap());
        assert!(ours == theirs, "{blocks} blocks: hash devices differ ({} vs {} bytes)", ours.len(), theirs.len());
        // A flipped byte is caught by veritysetup too.
        let f = std::fs::OpenOptions::new().write(true).open(&data_path).unwrap();
        f.write_all_at(&[data[4096 * (blocks as usize - 1)] ^ 1], 4096 * (blocks - 1)).unwrap();
        let verify = run(Command::new(&veritysetup).arg("verify").arg(&data_path).arg(&hash_path).arg(hex(&root)));
        assert!(!verify.ok, "{blocks} blocks: a changed block verified");
    }
}

fn data_read(data: &[u8], buf: &mut [u8], at: u64) -> std::io::Result<()> {
    buf.copy_from_slice(&data[at as usize..at as usize + buf.len()]);
    Ok(())
}
