//! A URL source: a local HTTP server (`python3 -m http.server`, started by the test on a free port) serving
//! raw.zst with its bmap and `.sha256`; the flashed device holds the image. A corrupted download is refused
//! before the partition tables are written.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::tools;

use super::{
    Images, Loop, assert_filesystems_clean, assert_holds, assert_table_fits, blank, flash, has_partition_table,
};

/// An HTTP server on 127.0.0.1 serving `dir`, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(tools::require("python3", "python3"))
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "the HTTP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_url_source_is_streamed_checked_and_flashed() {
    let images = Images::get();
    let zst = images.efi_as("raw.zst");
    let served = tempfile::tempdir().unwrap();
    for name in ["efi.raw.zst", "efi.raw.zst.sha256", "efi.raw.bmap"] {
        std::fs::copy(images.dir.join(name), served.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let _ = zst;
    let server = Server::start(served.path());
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1 << 30);
    let dev = Loop::new(&backing, 512);
    let out = flash(&[server.url("efi.raw.zst").as_str(), dev.dev.to_str().unwrap()]).ok();
    assert!(out.contains("efi.raw.zst.sha256"), "the .sha256 beside the URL was not checked:\n{out}");
    assert!(out.contains("efi.raw.bmap"), "the bmap beside the URL was not used:\n{out}");
    assert_holds(&dev.dev, &images.raw("efi"), 33 * 512);
    assert_table_fits(&dev.dev, 512);
    assert_filesystems_clean(&dev.dev, 512);

    // The same download with one byte changed in the middle: refused, and no partition table is written.
    let bad = served.path().join("efi.raw.zst");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&bad).unwrap();
    let mid = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, mid).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], mid).unwrap();
    let run = flash(&[server.url("efi.raw.zst").as_str(), dev.dev.to_str().unwrap(), "--force"]);
    assert_eq!(run.status.code(), Some(1), "a corrupted download was flashed:\n{}\n{}", run.stdout, run.stderr);
    assert!(!has_partition_table(&dev.dev), "a corrupted download left a partition table:\n{}", run.stderr);
}
