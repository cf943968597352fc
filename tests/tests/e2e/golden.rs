//! Golden plans: the plan `kiln build --dry-run --progress json` prints (every partition's place and GUID, each
//! filesystem's geometry and identities, the boot entries) for deterministic inputs, compared with the files in
//! `tests/golden/plans/`. A change that means to change a plan rewrites them:
//!
//! ```sh
//! KILN_UPDATE_GOLDEN=1 cargo test -p kiln-tests --test e2e golden
//! ```
//!
//! and the diff of `tests/golden/plans/` shows what changed. Only inputs that are the same on every machine are
//! planned (no Debian GRUB: BIOS layouts' plans hold its core.img's size).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kiln_tests::fixtures;

use crate::pinned::{TOP, pinned_system};
use crate::util::{kiln, store_of};

/// A profile with its own partition list: ESP, swap, a gap, the root.
const CUSTOM: &str = "description = \"golden custom\"\n\
    [[partitions]]\nrole = \"esp\"\nsize = \"300M\"\n\n\
    [[partitions]]\nrole = \"swap\"\nsize = \"64M\"\nlabel = \"swap0\"\n\n\
    [[partitions]]\nrole = \"empty\"\nsize = \"16M\"\n\n\
    [[partitions]]\nrole = \"root\"\nname = \"system\"\nlabel = \"sysroot\"\nsize = \"fill\"\n";

fn golden_dir() -> PathBuf {
    fixtures::workspace_root().join("tests/golden/plans")
}

/// The plan of `kiln build --dry-run` with `args`.
fn plan_of(args: &[OsString]) -> serde_json::Value {
    let mut full: Vec<OsString> = ["build", "--dry-run", "--progress", "json"].map(Into::into).to_vec();
    full.extend_from_slice(args);
    let stdout = kiln(&full).ok();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("output")).unwrap();
    assert_eq!((&last["v"], &last["type"]), (&serde_json::json!(1), &serde_json::json!("dry-run")), "{last}");
    last["plan"].clone()
}

fn cases(store: &Path, profile: &Path, synthetic: &Path) -> Vec<(&'static str, Vec<OsString>)> {
    let sys = |extra: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--system".into(), format!("/nix/store/{TOP}").into()];
        v.extend(["--store-dir".into(), store.into()]);
        v.extend(extra.iter().map(Into::into));
        v
    };
    let mut syn: Vec<OsString> = vec!["--system".into(), fixtures::toplevel_of(synthetic).into()];
    syn.extend(["--store-dir".into(), store_of(synthetic).into(), "--layout".into(), "none".into()]);
    let profile = profile.to_str().unwrap();
    vec![
        ("synthetic-none", syn),
        ("efi", sys(&["--layout", "efi"])),
        ("efi-4kn-qcow2", sys(&["--layout", "efi", "--sector-size", "4096", "--format", "qcow2", "--seed", "4kn"])),
        (
            "efixbootldr",
            sys(&[
                "--layout",
                "efixbootldr",
                "--kernel-param",
                "kiln.pin=\"a b\"",
                "--default-specialisation",
                "debug",
            ]),
        ),
        ("efi-8g-vhd", sys(&["--layout", "efi", "--size", "8G", "--format", "vhd", "--esp-size", "300M"])),
        ("custom-partitions", sys(&["--profile", profile, "--size", "2G"])),
        ("amazon", sys(&["--profile", "amazon"])),
    ]
}

#[test]
fn plans_of_deterministic_inputs_match_the_golden_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = pinned_system(&tmp.path().join("sys"));
    let profile = tmp.path().join("custom.toml");
    std::fs::write(&profile, CUSTOM).unwrap();
    let update = std::env::var_os("KILN_UPDATE_GOLDEN").is_some();
    let dir = golden_dir();
    let mut differ = Vec::new();
    for (name, args) in cases(&store, &profile, &fixtures::synthetic_store()) {
        let plan = plan_of(&args);
        let text = format!("{}\n", serde_json::to_string_pretty(&plan).unwrap());
        let path = dir.join(format!("{name}.json"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (KILN_UPDATE_GOLDEN=1 writes it)", path.display()));
        if want != text {
            differ.push(format!("{name}: the plan differs from {}:\n{text}", path.display()));
        }
    }
    assert!(differ.is_empty(), "{}\n(KILN_UPDATE_GOLDEN=1 rewrites the golden plans)", differ.join("\n"));
}
