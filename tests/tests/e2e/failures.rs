//! Failures during a real build, and where it writes: a full device, source files changing under kiln, the
//! output path missing, taken or too small, symlinks out of the store, options that do not fit the layout, and
//! a whole build as an unprivileged user. Each failure is one clear line naming the file, path or size, and
//! nothing is left in the output directory afterwards: no image, no temporary.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kiln_tests::disk::{fsck_fat_clean, sfdisk_json, sgdisk_verify};
use kiln_tests::ext4::{InodeInfo, e2fsck_clean, extract, inode_info};
use kiln_tests::{fixtures, tools};

use crate::util::{MINI_TOP as TOP, MiniStore, Run, kiln, kiln_cmd, run, store_of};

/// `kiln build` of the demo closure (with its closureInfo) with `layout` into `out`, plus `extra`.
fn demo_args(store: &Path, closure_info: &Path, layout: &str, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let top = fixtures::toplevel_of(&fixtures::demo_closure());
    let mut args: Vec<OsString> = ["build", "--progress", "none", "--layout", layout].map(OsString::from).to_vec();
    args.extend(["--system".into(), top.into(), "--store-dir".into(), store.into()]);
    args.extend(["--closure-info".into(), closure_info.into(), "--output".into(), out.into()]);
    args.extend(extra.iter().map(OsString::from));
    args
}

/// The demo closure's fixture as it is.
fn demo(layout: &str, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let fx = fixtures::demo_closure();
    demo_args(&store_of(&fx), &fx.join("closure-info"), layout, out, extra)
}

/// Panics unless `dir` is empty: no image and no temporary left behind.
fn assert_empty(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{what}: {} holds {left:?}", dir.display());
}

#[test]
fn a_full_device_is_named_and_nothing_is_left_on_it() {
    // What the image really occupies: a build into a tmpfs smaller than that cannot succeed.
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference.img");
    kiln(demo("efi", &reference, &[])).ok();
    let allocated = std::fs::metadata(&reference).unwrap().blocks() * 512;
    std::fs::remove_file(&reference).unwrap();
    // 4 MiB is full inside the ESP (the kernel and initrd are larger); the other, inside the root filesystem.
    let late = (allocated >> 20).checked_sub(4).expect("the demo image holds more than 4 MiB") << 20;
    let unshare = tools::require("unshare", "util-linux");
    tools::require("mount", "mount");
    // A tmpfs of `size` over `dir` in a new user and mount namespace (no root needed), kiln run there, and
    // what the tmpfs holds afterwards printed on the last line, since it vanishes with the namespace.
    let script = r#"dir=$1; size=$2; shift 2
        mount -t tmpfs -o "size=$size" none "$dir" || exit 99
        "$@"; rc=$?
        printf 'left:[%s]\n' "$(ls -A "$dir" | tr '\n' ' ')"
        exit $rc"#;
    for size in [4 << 20, late] {
        let dir = tmp.path().join(format!("tmpfs-{size}"));
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("disk.img");
        let mut cmd = Command::new(&unshare);
        cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]);
        cmd.arg(&dir).arg(size.to_string()).arg(fixtures::kiln_bin()).args(demo("efi", &target, &[]));
        let r = run(&mut cmd);
        assert_ne!(r.status.code(), Some(99), "cannot mount a tmpfs in a user namespace: {}", r.stderr);
        let mib = format!("{:.1} MiB free in {} when writing began", size as f64 / f64::from(1 << 20), dir.display());
        r.fails_with(&[&format!("output {}: no space left on device", target.display()), &mib, "does not fit"]);
        let in_esp = r.stderr.contains("stopped at: writing the ESP of ");
        assert_eq!(in_esp, size == 4 << 20, "where a {size}-byte tmpfs filled up: {}", r.stderr);
        let left = r.stdout.lines().last().unwrap_or_default();
        assert_eq!(left, "left:[]", "a {size}-byte tmpfs holds something after the failed build:\n{}", r.stdout);
        assert_empty(&dir, "under the tmpfs");
    }
}

/// A thread changing a file over and over until dropped.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Churn {
    /// Calls `change(file, round)` every 200 µs, and returns once it has done so.
    fn start(path: &Path, change: impl Fn(&std::fs::File, u64) + Send + 'static) -> Self {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (flag, done) = (Arc::clone(&stop), Arc::clone(&rounds));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                change(&file, done.load(Ordering::Relaxed));
                done.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        while rounds.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// A mini store whose toplevel holds a 16 MiB file of non-zero bytes, `big`.
fn store_with_big_file() -> (MiniStore, PathBuf) {
    let m = MiniStore::new();
    let big = m.top().join("big");
    let bytes: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&big, bytes).unwrap();
    (m, big)
}

#[test]
fn a_source_file_changing_size_during_the_build_is_named() {
    let (m, big) = store_with_big_file();
    // Registered as it is now, so with the closureInfo the first read of `big` is the copy into the image;
    // without it, the hash phase reads it first.
    let ci = m.closure_info();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("root.img");
    let _churn = Churn::start(&big, |f, _| f.write_all_at(&[b'x'; 4096], f.metadata().unwrap().len()).unwrap());
    for extra in [&[][..], &[OsStr::new("--closure-info"), ci.as_os_str()][..]] {
        let r = m.build(&out, extra);
        r.fails_with(&[&format!("{}: reading its contents: changed", big.display()), " bytes then, "]);
        assert_empty(out_dir.path(), "after a file grew");
    }
}

#[test]
fn a_source_file_rewritten_in_place_during_the_build_fails_the_build() {
    // Same size, new bytes, between the hash phase (no closureInfo: kiln hashes the path itself) and the copy:
    // the image's database would record a hash its files do not have. Refused even with --no-verify-hashes,
    // which only skips the check against registered hashes.
    let (m, big) = store_with_big_file();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("root.img");
    let _churn = Churn::start(&big, |f, round| f.write_all_at(&(round + 1).to_le_bytes(), 0).unwrap());
    for extra in [&[][..], &[OsStr::new("--no-verify-hashes")][..]] {
        let r = m.build(&out, extra);
        r.fails_with(&[
            &format!("{}: store path /nix/store/{TOP} changed during the build: hashed as narHash", m.top().display()),
            ", copied as narHash",
        ]);
        assert_empty(out_dir.path(), "after a file changed");
    }
}

#[test]
fn a_missing_output_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-such-dir");
    let out = dir.join("disk.img");
    kiln(demo("efi", &out, &[])).fails_with(&[&format!(
        "output {}: directory {} does not exist",
        out.display(),
        dir.display()
    )]);
    assert_empty(tmp.path(), "after refusing a missing directory");
}

#[test]
fn an_existing_output_is_untouched_without_force_and_a_symlink_is_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("disk.img");
    let precious: Vec<u8> = (0..=255u8).cycle().take(1 << 16).collect();
    std::fs::write(&out, &precious).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::metadata(&out).unwrap();
    kiln(demo("efi", &out, &[])).fails_with(&[&format!("output {} exists (use --force to replace it)", out.display())]);
    let after = std::fs::metadata(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), precious, "the existing file's bytes changed");
    assert_eq!(
        (after.ino(), after.mode(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mode(), before.mtime(), before.mtime_nsec())
    );
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [OsString::from("disk.img")], "only the existing file, no temporary");

    // An output path that is a symlink (even a dangling one) exists; with --force the link itself is
    // replaced and the file it pointed to is never written.
    let link = tmp.path().join("link.img");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    kiln(demo("none", &link, &[])).fails_with(&[&format!("output {} exists", link.display())]);
    let dangling = tmp.path().join("dangling.img");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    kiln(demo("none", &dangling, &[])).fails_with(&[&format!("output {} exists", dangling.display())]);
    assert!(!tmp.path().join("nowhere").exists());
    kiln(demo("none", &link, &["--force"])).ok();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file(), "the link was replaced by the image");
    assert_eq!(std::fs::read(&out).unwrap(), precious, "the link's target was written through");
    e2fsck_clean(&link, 0).unwrap();
}

/// The bytes of the image a `--size … is too small` error says are needed, after checking the message.
fn needed(r: &Run, given: u64) -> u64 {
    r.fails_with(&[&format!("--size {given} is too small: the image needs at least ")]);
    let rest = r.stderr.split("needs at least ").nth(1).unwrap();
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_size_too_small_for_a_disk_says_what_it_needs_and_that_is_enough() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("disk.img");
    // 100M is less than the ESP alone (512 MiB); 530M leaves too little for the root filesystem.
    let wants: Vec<u64> = [100u64 << 20, 530 << 20]
        .iter()
        .map(|&given| {
            let n = needed(&kiln(demo("efi", &out, &["--size", &given.to_string()])), given);
            assert!(n > given, "needs {n}, less than the {given} refused");
            assert_empty(tmp.path(), "after refusing the size");
            n
        })
        .collect();
    assert_eq!(wants[0], wants[1], "one disk, one minimum");
    let n = wants[0];
    needed(&kiln(demo("efi", &out, &["--size", &(n - 512).to_string()])), n - 512);
    assert_empty(tmp.path(), "after refusing the size");
    // The number is true: exactly that size builds, and the disk is sound.
    kiln(demo("efi", &out, &["--size", &n.to_string()])).ok();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), n);
    sgdisk_verify(&out).unwrap();
    let root = &sfdisk_json(&out)["partitiontable"]["partitions"][1];
    e2fsck_clean(&out, root["start"].as_u64().unwrap() * 512).unwrap();
}

/// Whether `needle` occurs in the file, read a MiB at a time.
fn contains(path: &Path, needle: &[u8]) -> bool {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; (1 << 20) + needle.len()];
    let (mut pos, mut kept) = (0u64, 0usize);
    loop {
        let n = file.read_at(&mut buf[kept..], pos).unwrap();
        if n == 0 {
            return false;
        }
        if buf[..kept + n].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        pos += n as u64;
        let keep = (kept + n).min(needle.len() - 1);
        buf.copy_within(kept + n - keep..kept + n, 0);
        kept = keep;
    }
}

#[test]
fn symlinks_out_of_the_store_are_copied_as_symlinks_and_never_followed() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first = passwd.lines().next().expect("a line in /etc/passwd").to_owned();
    let m = MiniStore::new();
    let links = [("passwd", "/etc/passwd"), ("etc", "/etc"), ("up", "../../../../../../../etc/passwd"), ("root", "/")];
    for (name, target) in links {
        std::os::unix::fs::symlink(target, m.top().join(name)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    m.build(&img, &[]).ok();
    e2fsck_clean(&img, 0).unwrap();
    for (name, target) in links {
        let info = inode_info(&img, 0, format!("/nix/store/{TOP}/{name}").as_bytes()).unwrap();
        assert_eq!(info.file_type(), InodeInfo::S_IFLNK, "{name} is not a symlink in the image");
        assert_eq!(info.size, target.len() as u64, "{name}");
    }
    let dump = tmp.path().join("dump");
    extract(&img, 0, &dump).unwrap();
    for (name, target) in links {
        assert_eq!(std::fs::read_link(dump.join("nix/store").join(TOP).join(name)).unwrap(), Path::new(target));
    }
    // Not a byte of what the links point to: the image never holds the host's /etc/passwd.
    assert!(!contains(&img, first.as_bytes()), "the image holds {first:?} from /etc/passwd");

    // A file kiln itself reads (the bootspec) that leads out of the store is refused, naming the link.
    let boot_json = m.top().join("boot.json");
    std::fs::rename(&boot_json, m.dir.path().join("boot.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &boot_json).unwrap();
    let out = tmp.path().join("again.img");
    m.build(&out, &[])
        .fails_with(&[&format!("symlink {} points outside the store to /etc/passwd", boot_json.display())]);
    assert!(!out.exists());
}

#[test]
fn options_that_do_not_fit_the_layout_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("disk.img");
    for (layout, flags, want) in [
        ("none", &["--esp-size", "100M"][..], "--esp-size does not fit --layout none, which has no ESP"),
        ("legacy", &["--esp-size", "100M"][..], "--esp-size does not fit --layout legacy, which has no ESP"),
        ("efi", &["--grub", "/tmp"][..], "--grub /tmp does not fit --layout efi, which does not boot by BIOS"),
        ("none", &["--grub", "/tmp"][..], "--grub /tmp does not fit --layout none"),
        (
            "none",
            &["--default-specialisation", "debug"][..],
            "--default-specialisation debug does not fit --layout none, which installs no boot loader",
        ),
    ] {
        kiln(demo(layout, &out, flags)).fails_with(&[want]);
        assert_empty(tmp.path(), want);
    }
    // A profile's ESP size is the profile's business: a layout without an ESP drops it.
    let profile = tmp.path().join("p.toml");
    std::fs::write(&profile, "layout = \"efi\"\nesp-size = \"256M\"\n").unwrap();
    let mut args = demo("none", &out, &["--profile"]);
    args.push(profile.into());
    kiln(args).ok();
    e2fsck_clean(&out, 0).unwrap();
}

/// Copies the binary `from` to `to` and returns once `to` runs. A process another test forks while the copy is
/// open for writing holds that descriptor until it execs, and running the copy meanwhile fails with ETXTBSY.
fn executable_copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for _ in 0..500 {
        match Command::new(to).arg("--help").output() {
            Ok(out) if out.status.success() => return,
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => panic!("{} --help: {other:?}", to.display()),
        }
    }
    panic!("{} stayed busy for 5 s", to.display());
}

/// A copy of the demo closure and of kiln that user 65534 can read and run, and an output directory it owns.
struct Unprivileged {
    tmp: tempfile::TempDir,
}

const NOBODY: u32 = 65534;

impl Unprivileged {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fx = fixtures::demo_closure();
        // cp -a keeps the store's modes (0444, 0555) and mtimes; everyone may read them.
        tools::run_ok(Command::new("cp").arg("-a").arg(&fx).arg(tmp.path().join("fx")));
        executable_copy(&fixtures::kiln_bin(), &tmp.path().join("kiln"));
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::chown(&out, Some(NOBODY), Some(NOBODY)).unwrap();
        Self { tmp }
    }

    fn store(&self) -> PathBuf {
        store_of(&self.tmp.path().join("fx"))
    }

    fn args(&self, out: &Path) -> Vec<OsString> {
        demo_args(&self.store(), &self.tmp.path().join("fx/closure-info"), "efi", out, &[])
    }

    /// kiln as user and group 65534, with no supplementary groups.
    fn kiln(&self, out: &Path) -> Run {
        let mut cmd = Command::new(tools::require("setpriv", "util-linux"));
        cmd.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into(), "--".into()]);
        run(cmd.arg(self.tmp.path().join("kiln")).args(self.args(out)))
    }
}

#[test]
fn a_whole_disk_builds_as_an_unprivileged_user() {
    let u = Unprivileged::new();
    let img = u.tmp.path().join("out/disk.img");
    let r = u.kiln(&img);
    assert!(r.status.success(), "kiln as uid {NOBODY} failed:\n{}", r.stderr);
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "the image belongs to who built it");
    sgdisk_verify(&img).unwrap();
    let parts = sfdisk_json(&img);
    let part = |i: usize, key: &str| parts["partitiontable"]["partitions"][i][key].as_u64().unwrap() * 512;
    fsck_fat_clean(&img, part(0, "start"), part(0, "size")).unwrap();
    e2fsck_clean(&img, part(1, "start")).unwrap();
    // Who builds it makes no difference to the bytes: root's build of the same copy is identical.
    let as_root = u.tmp.path().join("root.img");
    run(kiln_cmd().args(u.args(&as_root))).ok();
    tools::run_ok(Command::new("cmp").arg(&img).arg(&as_root));
}

#[test]
fn an_output_directory_the_user_cannot_write_is_named() {
    let u = Unprivileged::new();
    // The temporary directory belongs to root (mode 0755): user 65534 may read it, not write into it.
    let img = u.tmp.path().join("disk.img");
    let before: Vec<_> = std::fs::read_dir(u.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let where_ = format!("output {}: cannot create files in {}", img.display(), u.tmp.path().display());
    u.kiln(&img).fails_with(&[&where_, "Permission denied"]);
    let after: Vec<_> = std::fs::read_dir(u.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing new in the output directory");
}
