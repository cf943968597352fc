//! QEMU boot runner: boots a disk image under TCG and watches the serial console for a marker line.
//!
//! Every boot runs `qemu-system-x86_64 -machine q35 -accel tcg` (or, with [`Firmware::Aavmf`],
//! `qemu-system-aarch64 -machine virt -cpu max -accel tcg`) with the image as a virtio disk
//! opened with `snapshot=on` (the image file is never modified), the first serial port on QEMU's
//! stdout, `-no-reboot` (a guest reboot or `poweroff` ends QEMU), and no network. The serial output
//! is read as it arrives: the boot succeeds as soon as a line ends with the marker, fails as soon as
//! a failure marker (`DEMO-STAGE1-FAIL`, `DEMO-STAGE2-FAIL`, `Kernel panic`) appears, and QEMU is
//! killed when the timeout passes — a boot never hangs a test. Each boot has its own temporary
//! directory (UEFI variable store, QEMU's snapshot overlay), so several boots can run at once.
//!
//! ```no_run
//! use std::time::Duration;
//! use kiln_tests::boot::{Boot, Firmware};
//! let outcome = Boot::new("disk.img", "KILN-DEMO-BOOT-OK specialisation=none files=309")
//!     .firmware(Firmware::Uefi)
//!     .timeout(Duration::from_secs(120))
//!     .run()
//!     .unwrap_or_else(|e| panic!("{e}"));
//! println!("booted in {:?}", outcome.elapsed);
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::tools;

/// OVMF firmware code (read-only pflash unit 0), from the Debian package `ovmf`.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template; every UEFI boot gets a fresh copy as pflash unit 1.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// AAVMF (EDK II for arm64) firmware code, from the Debian package `qemu-efi-aarch64`; 64 MiB, the size
/// of the virt machine's pflash banks.
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// AAVMF variable store template (64 MiB); every arm64 boot gets a fresh copy as pflash unit 1.
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// Lines that end a boot early as a failure, unless [`Boot::failure_markers`] replaces them.
pub const DEFAULT_FAILURE_MARKERS: &[&str] = &["DEMO-STAGE1-FAIL", "DEMO-STAGE2-FAIL", "Kernel panic"];

/// How many serial lines a [`BootFailure`] shows.
const TAIL_LINES: usize = 40;

/// The firmware QEMU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF (EDK II) with a fresh variable store: boots `EFI/BOOT/BOOTX64.EFI` from the ESP.
    Uefi,
    /// SeaBIOS, QEMU's default: boots the MBR boot code (GRUB i386-pc).
    Bios,
    /// AAVMF (EDK II for arm64) on QEMU's `virt` machine with a fresh variable store: boots
    /// `EFI/BOOT/BOOTAA64.EFI`. The serial console is the PL011 UART, `ttyAMA0` to Linux.
    Aavmf,
}

impl Firmware {
    /// The QEMU system emulator for this firmware's machine, and the Debian package that has it.
    fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Firmware::Uefi | Firmware::Bios => ("qemu-system-x86_64", "qemu-system-x86"),
            Firmware::Aavmf => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// Firmware code and variable store template (pflash units 0 and 1), with their Debian package.
    fn pflash(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Firmware::Uefi => Some((OVMF_CODE, OVMF_VARS, "ovmf")),
            Firmware::Aavmf => Some((AAVMF_CODE, AAVMF_VARS, "qemu-efi-aarch64")),
            Firmware::Bios => None,
        }
    }
}

/// Direct kernel boot: QEMU loads the kernel and initrd itself (`-kernel`, `-initrd`, `-append`);
/// the image is still attached as the virtio disk. Skips the bootloader, for filesystem tests.
#[derive(Debug, Clone)]
pub struct DirectKernel {
    /// The kernel image (bzImage), a host path.
    pub kernel: PathBuf,
    /// The initrd, a host path.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
}

/// One QEMU boot, configured builder-style and started with [`Boot::run`].
#[derive(Debug, Clone)]
pub struct Boot {
    image: PathBuf,
    format: String,
    firmware: Firmware,
    marker: String,
    failure_markers: Vec<String>,
    timeout: Duration,
    memory_mib: u32,
    direct_kernel: Option<DirectKernel>,
    extra_args: Vec<String>,
    writable: bool,
    sector_size: u32,
}

/// A boot that printed its marker.
#[derive(Debug, Clone)]
pub struct BootOutcome {
    /// The serial console output up to and including the marker line, without ANSI escapes and
    /// carriage returns.
    pub serial: String,
    /// Time from starting QEMU to the marker line.
    pub elapsed: Duration,
}

impl BootOutcome {
    /// The kernel command line the demo closure's stage 1 printed (`KILN-CMDLINE-HEX <hex of /proc/cmdline>`),
    /// without its trailing newline.
    ///
    /// # Panics
    /// If the serial output has no such line, or it is not hex of UTF-8.
    #[must_use]
    pub fn cmdline(&self) -> String {
        let hex = self
            .serial
            .lines()
            .find_map(|l| l.split_once("KILN-CMDLINE-HEX ").map(|(_, h)| h.trim().to_owned()))
            .unwrap_or_else(|| panic!("no KILN-CMDLINE-HEX line in the serial output:\n{}", self.serial));
        let bytes: Vec<u8> =
            (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        String::from_utf8(bytes).unwrap().trim_end_matches('\n').to_owned()
    }
}

/// Why a boot did not reach its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFailureKind {
    /// The timeout passed without the marker; QEMU was killed.
    Timeout,
    /// A failure marker appeared; the line is given.
    FailureMarker(String),
    /// QEMU ended (guest powered off or QEMU failed) before the marker appeared.
    QemuExited(String),
    /// QEMU could not be set up or started.
    Setup(String),
}

/// A failed boot, with everything needed to see why: its [`fmt::Display`] shows the kind, the
/// QEMU command, QEMU's stderr and the last 40 serial lines.
#[derive(Debug, Clone)]
pub struct BootFailure {
    /// What went wrong.
    pub kind: BootFailureKind,
    /// The marker that was awaited.
    pub marker: String,
    /// The whole serial output (ANSI escapes and carriage returns removed).
    pub serial: String,
    /// QEMU's stderr.
    pub qemu_stderr: String,
    /// The QEMU command line.
    pub command: String,
    /// Time from starting QEMU to the failure.
    pub elapsed: Duration,
}

impl fmt::Display for BootFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BootFailureKind::Timeout => write!(
                f,
                "boot timed out after {:.1} s without the marker `{}`",
                self.elapsed.as_secs_f64(),
                self.marker
            )?,
            BootFailureKind::FailureMarker(line) => {
                write!(f, "boot failed after {:.1} s (awaiting `{}`): {line}", self.elapsed.as_secs_f64(), self.marker)?
            }
            BootFailureKind::QemuExited(status) => write!(
                f,
                "QEMU ended ({status}) after {:.1} s without the marker `{}`",
                self.elapsed.as_secs_f64(),
                self.marker
            )?,
            BootFailureKind::Setup(msg) => write!(f, "cannot start the boot: {msg}")?,
        }
        write!(f, "\n--- command\n{}", self.command)?;
        let stderr = self.qemu_stderr.trim_end();
        if !stderr.is_empty() {
            write!(f, "\n--- QEMU stderr\n{stderr}")?;
        }
        let lines: Vec<&str> = self.serial.lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        write!(f, "\n--- last {} of {} serial lines\n{}", tail.len(), lines.len(), tail.join("\n"))
    }
}

impl std::error::Error for BootFailure {}

/// Boots `image` (`format`: `raw`, `qcow2`, `vpc`, `vmdk`, … as QEMU names them) with `firmware`
/// and waits up to `timeout` for a serial line ending in `marker`.
pub fn boot_until(
    image: &Path,
    firmware: Firmware,
    format: &str,
    marker: &str,
    timeout: Duration,
) -> Result<BootOutcome, Box<BootFailure>> {
    Boot::new(image, marker).firmware(firmware).format(format).timeout(timeout).run()
}

impl Boot {
    /// A boot of the raw image `image` under UEFI that waits 120 s for `marker`.
    pub fn new(image: impl Into<PathBuf>, marker: impl Into<String>) -> Self {
        Boot {
            image: image.into(),
            format: "raw".to_owned(),
            firmware: Firmware::Uefi,
            marker: marker.into(),
            failure_markers: DEFAULT_FAILURE_MARKERS.iter().map(|s| (*s).to_owned()).collect(),
            timeout: Duration::from_secs(120),
            memory_mib: 1024,
            direct_kernel: None,
            extra_args: Vec::new(),
            writable: false,
            sector_size: 512,
        }
    }

    /// Attaches the disk with this logical (and physical) sector size: 512 (default) or 4096 for a 4Kn disk.
    pub fn sector_size(mut self, bytes: u32) -> Self {
        self.sector_size = bytes;
        self
    }

    /// Sets the firmware (default UEFI).
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// Sets the image format as QEMU names it (default `raw`).
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_owned();
        self
    }

    /// Sets the time limit (default 120 s); QEMU is killed when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replaces the failure markers (default [`DEFAULT_FAILURE_MARKERS`]).
    pub fn failure_markers<S: AsRef<str>>(mut self, markers: &[S]) -> Self {
        self.failure_markers = markers.iter().map(|m| m.as_ref().to_owned()).collect();
        self
    }

    /// Sets the guest memory in MiB (default 1024).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Boots this kernel directly instead of going through the image's bootloader.
    pub fn direct_kernel(mut self, direct: DirectKernel) -> Self {
        self.direct_kernel = Some(direct);
        self
    }

    /// Lets the guest write to the image (default: never; a snapshot overlay takes the writes). For tests
    /// that check what the kernel wrote.
    pub fn writable(mut self, writable: bool) -> Self {
        self.writable = writable;
        self
    }

    /// Appends extra QEMU arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs QEMU until the marker line, a failure marker, QEMU's end or the timeout.
    pub fn run(&self) -> Result<BootOutcome, Box<BootFailure>> {
        let (qemu, package) = self.firmware.qemu();
        let qemu = tools::require(qemu, package);
        let fail_setup = |msg: String, command: String| {
            Box::new(BootFailure {
                kind: BootFailureKind::Setup(msg),
                marker: self.marker.clone(),
                serial: String::new(),
                qemu_stderr: String::new(),
                command,
                elapsed: Duration::ZERO,
            })
        };
        let is_disk =
            |m: std::fs::Metadata| m.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type());
        if !std::fs::metadata(&self.image).is_ok_and(is_disk) {
            return Err(fail_setup(format!("image {} does not exist", self.image.display()), String::new()));
        }
        let tmp = tempfile::Builder::new()
            .prefix("kiln-boot-")
            .tempdir()
            .map_err(|e| fail_setup(format!("cannot create a temporary directory: {e}"), String::new()))?;

        let mut cmd = Command::new(&qemu);
        match self.firmware {
            Firmware::Uefi | Firmware::Bios => cmd.args(["-machine", "q35", "-accel", "tcg"]),
            Firmware::Aavmf => cmd.args(["-machine", "virt", "-cpu", "max", "-accel", "tcg"]),
        };
        cmd.args(["-m", &self.memory_mib.to_string()])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-nic", "none"]);
        if let Some((code, vars_template, package)) = self.firmware.pflash() {
            let code = require_file(code, package);
            let vars_template = require_file(vars_template, package);
            let vars = tmp.path().join("VARS.fd");
            std::fs::copy(&vars_template, &vars)
                .map_err(|e| fail_setup(format!("cannot copy {}: {e}", vars_template.display()), String::new()))?;
            cmd.arg("-drive").arg(drive_arg(&code, "if=pflash,format=raw,unit=0,readonly=on"));
            cmd.arg("-drive").arg(drive_arg(&vars, "if=pflash,format=raw,unit=1"));
        }
        let snapshot = if self.writable { "off" } else { "on" };
        // On the virt machine `if=virtio` would be virtio-blk-pci too; naming the device keeps one path.
        if self.sector_size == 512 && self.firmware != Firmware::Aavmf {
            cmd.arg("-drive")
                .arg(drive_arg(&self.image, &format!("format={},if=virtio,snapshot={snapshot}", self.format)));
        } else {
            cmd.arg("-drive")
                .arg(drive_arg(&self.image, &format!("format={},if=none,id=disk0,snapshot={snapshot}", self.format)));
            let n = self.sector_size;
            let sizes =
                if n == 512 { String::new() } else { format!(",logical_block_size={n},physical_block_size={n}") };
            cmd.args(["-device", &format!("virtio-blk-pci,drive=disk0{sizes}")]);
        }
        if let Some(direct) = &self.direct_kernel {
            cmd.arg("-kernel").arg(&direct.kernel);
            if let Some(initrd) = &direct.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            cmd.arg("-append").arg(&direct.append);
        }
        cmd.args(&self.extra_args);
        // QEMU puts the snapshot overlay in $TMPDIR: keep it in this boot's directory.
        cmd.env("TMPDIR", tmp.path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let command = format!("{cmd:?}");

        let start = Instant::now();
        let child =
            cmd.spawn().map_err(|e| fail_setup(format!("cannot run {}: {e}", qemu.display()), command.clone()))?;
        let mut guard = KillOnDrop(child);
        let mut stdout = guard.0.stdout.take().expect("piped stdout");
        let mut stderr = guard.0.stderr.take().expect("piped stderr");
        let stderr_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let stdout_reader = thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let deadline = start + self.timeout;
        let mut watcher = SerialWatcher::new(&self.marker, &self.failure_markers);
        let result = loop {
            let now = Instant::now();
            if now >= deadline {
                break Err(BootFailureKind::Timeout);
            }
            match rx.recv_timeout(deadline - now) {
                Ok(chunk) => {
                    if let Some(done) = watcher.feed(&chunk) {
                        break done;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break Err(BootFailureKind::Timeout),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(done) = watcher.finish() {
                        break done;
                    }
                    let status = wait_briefly(&mut guard.0);
                    break Err(BootFailureKind::QemuExited(status));
                }
            }
        };
        let elapsed = start.elapsed();
        // Stop QEMU (it may still be running after the marker) and collect what it said.
        let _ = guard.0.kill();
        let _ = guard.0.wait();
        let _ = stdout_reader.join();
        let qemu_stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
        drop(tmp);

        match result {
            Ok(()) => Ok(BootOutcome { serial: watcher.text, elapsed }),
            Err(kind) => Err(Box::new(BootFailure {
                kind,
                marker: self.marker.clone(),
                serial: watcher.text,
                qemu_stderr,
                command,
                elapsed,
            })),
        }
    }
}

/// Kills QEMU if the runner itself panics or returns early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits up to 5 s for QEMU to report its exit status after closing its stdout.
fn wait_briefly(child: &mut Child) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return describe(status),
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
            Ok(None) => return "closed its serial output but kept running".to_owned(),
            Err(e) => return format!("unknown status: {e}"),
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(0) => "exit status 0: the guest powered off".to_owned(),
        _ => status.to_string(),
    }
}

/// `file=<path>,<options>` with commas in the path doubled, as QEMU's option syntax wants.
fn drive_arg(path: &Path, options: &str) -> String {
    format!("file={},{options}", path.display().to_string().replace(',', ",,"))
}

/// Panics, naming the Debian package, when a file the boot needs is missing.
fn require_file(path: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "required file `{}` not found: install the Debian package `{package}` (see .ci/run)",
        path.display()
    );
    path
}

/// Splits serial bytes into lines and checks each complete line for the markers.
#[derive(Debug)]
struct SerialWatcher<'a> {
    marker: &'a str,
    failure_markers: &'a [String],
    /// Bytes after the last newline.
    pending: Vec<u8>,
    /// Cleaned text of all complete lines so far.
    text: String,
}

impl<'a> SerialWatcher<'a> {
    fn new(marker: &'a str, failure_markers: &'a [String]) -> Self {
        SerialWatcher { marker, failure_markers, pending: Vec::new(), text: String::new() }
    }

    /// Takes more output; `Some` once the boot is decided.
    fn feed(&mut self, bytes: &[u8]) -> Option<Result<(), BootFailureKind>> {
        self.pending.extend_from_slice(bytes);
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=pos).collect();
            if let Some(done) = self.line(&raw[..raw.len() - 1]) {
                return Some(done);
            }
        }
        None
    }

    /// The output ended: checks the unterminated last line.
    fn finish(&mut self) -> Option<Result<(), BootFailureKind>> {
        if self.pending.is_empty() {
            return None;
        }
        let raw = std::mem::take(&mut self.pending);
        self.line(&raw)
    }

    fn line(&mut self, raw: &[u8]) -> Option<Result<(), BootFailureKind>> {
        let line = clean_line(&String::from_utf8_lossy(raw));
        self.text.push_str(&line);
        self.text.push('\n');
        if line_has_marker(&line, self.marker) {
            return Some(Ok(()));
        }
        self.failure_markers
            .iter()
            .find(|m| !m.is_empty() && line.contains(m.as_str()))
            .map(|_| Err(BootFailureKind::FailureMarker(line.trim().to_owned())))
    }
}

/// True when `marker` occurs in `line` followed by the end of the line or whitespace, so that
/// `files=3` does not match `files=30`. Anything may precede it (interleaved kernel messages).
pub fn line_has_marker(line: &str, marker: &str) -> bool {
    if marker.is_empty() {
        return false;
    }
    line.match_indices(marker).any(|(i, _)| line[i + marker.len()..].chars().next().is_none_or(char::is_whitespace))
}

/// Removes ANSI escape sequences (CSI `ESC [ … final`, charset selections `ESC ( B`, other
/// two-byte escapes), carriage returns and other control characters except tabs.
pub fn clean_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in 0x40..=0x7e.
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                Some('(' | ')' | '*' | '+') => {
                    chars.next();
                }
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_ovmf_escapes() {
        assert_eq!(clean_line("\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: loading\r"), "BdsDxe: loading");
        assert_eq!(clean_line("\x1b(Bplain\x1b[0m text\t1"), "plain text\t1");
    }

    #[test]
    fn marker_needs_a_boundary() {
        let m = "KILN-DEMO-BOOT-OK specialisation=none files=3";
        assert!(line_has_marker("KILN-DEMO-BOOT-OK specialisation=none files=3", m));
        assert!(line_has_marker("[ 1.0] x KILN-DEMO-BOOT-OK specialisation=none files=3 ", m));
        assert!(!line_has_marker("KILN-DEMO-BOOT-OK specialisation=none files=30", m));
        assert!(!line_has_marker("anything", ""));
    }

    #[test]
    fn watcher_decides_on_complete_lines() {
        let failures = vec!["DEMO-STAGE1-FAIL".to_owned()];
        let mut w = SerialWatcher::new("OK files=3", &failures);
        assert_eq!(w.feed(b"boot\r\nOK fil"), None);
        assert_eq!(w.feed(b"es=3"), None);
        assert_eq!(w.feed(b"0\nOK files=3\r\n"), Some(Ok(())));
        assert_eq!(w.text, "boot\nOK files=30\nOK files=3\n");

        let mut w = SerialWatcher::new("OK", &failures);
        assert_eq!(
            w.feed(b"DEMO-STAGE1-FAIL: no root\n"),
            Some(Err(BootFailureKind::FailureMarker("DEMO-STAGE1-FAIL: no root".to_owned())))
        );

        let mut w = SerialWatcher::new("OK", &failures);
        assert_eq!(w.feed(b"OK"), None);
        assert_eq!(w.finish(), Some(Ok(())));
    }
}
