//! Reference images built with standard tools (no kiln) from the demo closure boot to the marker.
//!
//! These prove the fixture, the reference layouts and the QEMU runner before kiln's own images are
//! judged by them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::{self, Boot, BootFailureKind, DirectKernel, Firmware};
use kiln_tests::{fixtures, tools};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn fixture_script(name: &str) -> PathBuf {
    fixtures::scripts_dir().join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn reference_image_boots(mode: &str, firmware: Firmware) {
    let tmp = tempfile::TempDir::new().expect("temporary directory");
    let demo = fixtures::demo_closure();
    let image = tmp.path().join(format!("reference-{mode}.img"));
    tools::run_ok(Command::new("bash").arg(fixture_script("reference-image.gen.sh")).arg(&demo).arg(&image).arg(mode));
    let marker = read(&demo.join("marker"));
    assert!(marker.starts_with("KILN-DEMO-BOOT-OK specialisation=none files="), "unexpected marker {marker:?}");
    let outcome = boot::boot_until(&image, firmware, "raw", &marker, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("reference {mode} image did not boot: {e}"));
    eprintln!("reference {mode} image booted to the marker in {:.1} s", outcome.elapsed.as_secs_f64());
    assert!(outcome.serial.contains("demo-stage1: switching to"));
}

#[test]
fn reference_image_boots_uefi() {
    reference_image_boots("uefi", Firmware::Uefi);
}

#[test]
fn reference_image_boots_bios() {
    reference_image_boots("bios", Firmware::Bios);
}

/// Direct kernel boot of the debug specialisation, and the runner's early failure detection: a
/// root that does not exist must end the boot with stage 1's failure line, long before the timeout.
#[test]
fn direct_kernel_boot_specialisation_and_stage1_failure() {
    let tmp = tempfile::TempDir::new().expect("temporary directory");
    let demo = fixtures::demo_closure();
    let image = tmp.path().join("reference-bios.img");
    tools::run_ok(
        Command::new("bash").arg(fixture_script("reference-image.gen.sh")).arg(&demo).arg(&image).arg("bios"),
    );
    let toplevel = read(&demo.join("toplevel"));
    let physical = |logical: &str| demo.join(logical.trim_start_matches('/'));
    let link = |logical: String| {
        let target =
            std::fs::read_link(physical(&logical)).unwrap_or_else(|e| panic!("cannot read link {logical}: {e}"));
        physical(target.to_str().expect("UTF-8 link"))
    };
    let debug =
        std::fs::read_link(physical(&format!("{toplevel}/specialisation/debug"))).expect("specialisation/debug link");
    let debug = debug.to_str().expect("UTF-8 link").to_owned();
    let direct = |init: &str, root: &str| DirectKernel {
        kernel: link(format!("{toplevel}/kernel")),
        initrd: Some(link(format!("{toplevel}/initrd"))),
        append: format!("console=ttyS0 panic=-1 loglevel=4 root={root} init={init}"),
    };
    let files =
        read(&demo.join("marker")).rsplit_once("files=").map(|(_, n)| n.to_owned()).expect("files= in the marker");

    let marker = format!("KILN-DEMO-BOOT-OK specialisation=debug files={files}");
    let outcome = Boot::new(&image, &marker)
        .firmware(Firmware::Bios)
        .direct_kernel(direct(&format!("{debug}/init"), "/dev/vda2"))
        .timeout(BOOT_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("debug specialisation did not boot: {e}"));
    eprintln!("direct kernel boot (debug) in {:.1} s", outcome.elapsed.as_secs_f64());

    let failure = Boot::new(&image, "KILN-DEMO-BOOT-OK")
        .firmware(Firmware::Bios)
        .direct_kernel(direct(&format!("{toplevel}/init"), "LABEL=no-such-label"))
        .timeout(BOOT_TIMEOUT)
        .run()
        .expect_err("a boot without its root filesystem must fail");
    match &failure.kind {
        BootFailureKind::FailureMarker(line) => {
            assert!(line.contains("DEMO-STAGE1-FAIL: root device"), "{failure}")
        }
        other => panic!("expected a stage 1 failure, got {other:?}:\n{failure}"),
    }
    assert!(failure.elapsed < BOOT_TIMEOUT / 2, "{failure}");
}
