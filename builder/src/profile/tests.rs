use std::path::Path;
use std::sync::Arc;

use super::*;

/// A temporary directory of profile files.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    /// Writes `name` (may hold subdirectories) and returns its path as text.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn load_err(name: &str) -> String {
    format!("{:#}", Profile::load(name).expect_err(name))
}

/// Loads `text` as a user file and returns the error.
fn text_err(text: &str) -> (String, String) {
    let dir = Dir::new();
    let path = dir.write("p.toml", text);
    let err = load_err(&path);
    (path, err)
}

#[test]
fn every_builtin_parses_and_validates() {
    assert_eq!(BUILTINS.len(), 8);
    let mut names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 8, "names are unique");
    for b in BUILTINS {
        let p = Profile::load(b.name).unwrap_or_else(|e| panic!("{}: {e:#}", b.name));
        let d = p.description.as_deref().unwrap_or_default();
        assert!(!d.is_empty() && !d.contains('\n'), "{}: one-line description", b.name);
        assert!(p.layout.is_some() && p.format.is_some(), "{}: says its layout and format", b.name);
        assert_eq!(p.files(), [Arc::from(b.file())]);
        p.kernel_params.changes().unwrap();
    }
}

#[test]
fn builtins_say_what_the_issue_asks() {
    let p = |name: &str| Profile::load(name).unwrap();
    let amazon = p("amazon");
    assert_eq!(
        (amazon.layout, amazon.bootloader, amazon.format),
        (Some(Layout::Efi), Some(Bootloader::SystemdBoot), Some(Format::Ami))
    );
    assert_eq!(
        amazon.kernel_params.add,
        ["console=ttyS0,115200n8", "random.trust_cpu=on", "nvme_core.io_timeout=4294967295"]
    );
    assert_eq!(p("gce").kernel_params.add, ["console=ttyS0", "panic=1", "boot.panic_on_fail"]);
    assert_eq!(p("gce").format, Some(Format::Gce));
    assert_eq!(
        p("azure").kernel_params.add,
        ["console=ttyS0", "earlyprintk=ttyS0", "rootdelay=300", "panic=1", "boot.panic_on_fail"]
    );
    assert_eq!(p("azure").format, Some(Format::Vhd));
    assert_eq!(p("azure").esp_size, Some(ByteSize(256 << 20)));
    let bios = p("qemu-bios");
    assert_eq!((bios.layout, bios.bootloader), (Some(Layout::LegacyGpt), Some(Bootloader::Grub)));
    assert_eq!(bios.grub.terminal, Some(vec![GrubTerminal::Serial, GrubTerminal::Console]));
    assert_eq!(bios.grub.serial.as_deref(), Some("--unit=0 --speed=115200"));
    let usb = p("usb-hybrid");
    assert_eq!((usb.layout, usb.format, usb.bmap), (Some(Layout::Hybrid), Some(Format::Raw), Some(true)));
    let metal = p("metal-efi");
    assert_eq!((metal.layout, metal.format, metal.bmap), (Some(Layout::Efi), Some(Format::Raw), Some(true)));
    for name in ["openstack", "qemu-efi"] {
        assert_eq!((p(name).layout, p(name).format), (Some(Layout::Efi), Some(Format::Qcow2)), "{name}");
        assert_eq!(p(name).kernel_params.add, ["console=ttyS0"], "{name}");
    }
}

#[test]
fn shown_profiles_read_back_the_same() {
    let dir = Dir::new();
    for b in BUILTINS {
        let text = Profile::load(b.name).unwrap().to_toml().unwrap();
        let path = dir.write(&format!("{}.toml", b.name), &text);
        assert_eq!(Profile::load(&path).unwrap().to_toml().unwrap(), text, "{}", b.name);
    }
}

#[test]
fn unknown_key_names_file_line_and_column() {
    let (path, err) = text_err("description = \"x\"\n\nlayot = \"efi\"\n");
    let keys = "`description`, `extends`, `layout`, `bootloader`, `format`, `compress`, `sector-size`, `size`, \
                `extra-space`, `esp-size`, `bmap`, `checksum`, `kernel-params`, `grub`, `output`, `partitions`";
    assert_eq!(err, format!("{path}:3:1: unknown field `layot`, expected one of {keys}"));
    let (path, err) = text_err("[grub]\nterminal = [\"serial\"]\n  seriall = \"--unit=0\"\n");
    assert_eq!(err, format!("{path}:3:3: unknown field `seriall`, expected `terminal` or `serial`"));
}

#[test]
fn bad_values_name_file_line_and_column() {
    let (path, err) = text_err("format = \"qcow3\"\n");
    assert_eq!(
        err,
        format!(
            "{path}:1:10: unknown variant `qcow3`, expected one of `raw`, `raw.zst`, `qcow2`, `vhd`, `vhdx`, `vmdk`, \
             `gce`, `ami`"
        )
    );
    for (text, want) in [
        ("layout = \"efi\"\nesp-size = \"1MB\"\n", ":2:12: \"1MB\": unknown size suffix \"MB\""),
        ("size = -4\n", ":1:8: -4 is not a size: it is negative"),
        ("sector-size = 1024\n", ":1:15: sector-size 1024: the sector size is 512 or 4096"),
        ("bmap = \"yes\"\n", ":1:8: invalid type: string \"yes\", expected a boolean"),
        ("description = \"\"\"\ntwo\nlines\"\"\"\n", ":1:15: description: one line of text"),
        ("size = \"8G\"\nextra-space = \"1G\"\n", ":2:15: extra-space applies to size \"auto\" only; with size 8G"),
        ("[kernel-params]\nadd = [\"quiet\", \"a b\"]\n", ":2:17: kernel-params.add \"a b\""),
        ("[kernel-params]\nremove = [\"\"]\n", ":2:11: kernel-params.remove \"\""),
        ("[grub]\nterminal = []\n", ":2:12: grub.terminal: give \"serial\", \"console\" or both"),
        ("[grub]\nterminal = [\"serial\", \"serial\"]\n", ":2:12: grub.terminal: \"serial\" twice"),
        ("[grub]\nterminal = [\"vga\"]\n", ":2:13: unknown variant `vga`, expected `serial` or `console`"),
        ("[grub]\nserial = \"--unit=0; reboot\"\n", ":2:10: grub.serial \"--unit=0; reboot\": ';' is not allowed"),
        ("[output]\nlabel = \"a/b\"\n", ":2:9: output.label \"a/b\": '/' is not allowed in a label"),
        ("layout = \"efi\"\nbootloader = \"grub\"\n", ":2:14: bootloader grub does not fit layout efi ("),
        ("layout = \"efi\"\n[kernel-params]\nadd = [\"x\"\n", ":3:11: "),
    ] {
        let (path, err) = text_err(text);
        assert!(err.starts_with(&path) && err.contains(want), "{text:?}: want {want:?} in\n{err}");
    }
}

#[test]
fn extends_overrides_field_by_field() {
    let dir = Dir::new();
    dir.write(
        "base.toml",
        "description = \"base\"\nlayout = \"efi\"\nformat = \"qcow2\"\nesp-size = \"256M\"\nbmap = true\n\
         [kernel-params]\nadd = [\"console=ttyS0\", \"quiet\"]\nremove = [\"loglevel\"]\n\
         [grub]\nterminal = [\"serial\", \"console\"]\nserial = \"--unit=0 --speed=115200\"\n",
    );
    let child = dir.write(
        "sub/child.toml",
        "extends = \"../base.toml\"\nformat = \"raw\"\n[kernel-params]\nremove = [\"console\"]\n\
         add = [\"console=ttyS1\", \"panic=1\"]\n[grub]\nserial = \"--unit=1\"\n[output]\nlabel = \"mine\"\n",
    );
    let p = Profile::load(&child).unwrap();
    assert_eq!(p.description.as_deref(), Some("base"));
    assert_eq!(p.layout, Some(Layout::Efi));
    assert_eq!(p.format, Some(Format::Raw));
    assert_eq!(p.esp_size, Some(ByteSize(256 << 20)));
    assert_eq!(p.bmap, Some(true));
    // The parent's additions, less what the child removes, then the child's; removals appended likewise.
    assert_eq!(p.kernel_params.add, ["quiet", "console=ttyS1", "panic=1"]);
    assert_eq!(p.kernel_params.remove, ["loglevel", "console"]);
    assert_eq!(p.grub.terminal, Some(vec![GrubTerminal::Serial, GrubTerminal::Console]));
    assert_eq!(p.grub.serial.as_deref(), Some("--unit=1"));
    assert_eq!(p.output.label.as_deref(), Some("mine"));
    let base = dir.path().join("sub/../base.toml").display().to_string();
    assert_eq!(p.files(), [Arc::from(child.as_str()), Arc::from(base.as_str())]);
    assert_eq!(p.origin("format").unwrap().to_string(), format!("{child}:2:10"));
    assert_eq!(p.origin("layout").unwrap().to_string(), format!("{base}:2:10"));
    assert_eq!(p.origin("grub.serial").unwrap().to_string(), format!("{child}:7:10"));
}

#[test]
fn extends_a_builtin_and_replaces_its_layout_with_partitions() {
    let dir = Dir::new();
    let path = dir.write(
        "p.toml",
        "extends = \"amazon\"\nformat = \"raw\"\n\
         [[partitions]]\nrole = \"esp\"\nsize = \"256M\"\n\
         [[partitions]]\nrole = \"swap\"\nsize = \"1G\"\nlabel = \"swap\"\n\
         [[partitions]]\nrole = \"root\"\nsize = \"fill\"\nname = \"root\"\ntype-guid = \"0fc63daf-8483-4772-8e79-3d69d8477de4\"\n",
    );
    let p = Profile::load(&path).unwrap();
    assert_eq!(p.layout, None, "the partition list replaces amazon's layout");
    assert_eq!(p.bootloader, Some(Bootloader::SystemdBoot));
    assert_eq!(p.format, Some(Format::Raw));
    assert_eq!(p.kernel_params.add.len(), 3);
    let parts = p.partitions.as_ref().unwrap();
    assert_eq!(parts.iter().map(|x| x.role).collect::<Vec<_>>(), [Role::Esp, Role::Swap, Role::Root]);
    assert_eq!(parts[2].size, PartSize::Fill);
    assert_eq!(parts[2].type_guid.unwrap().to_string(), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    let shown = p.to_toml().unwrap();
    assert!(shown.contains("[[partitions]]\nrole = \"swap\"\nsize = \"1G\"\nlabel = \"swap\""), "{shown}");
    // And a layout in a child replaces the parent's partitions.
    let child = dir.write("c.toml", "extends = \"p.toml\"\nlayout = \"hybrid\"\n");
    let c = Profile::load(&child).unwrap();
    assert_eq!((c.layout, c.partitions.is_none()), (Some(Layout::Hybrid), true));
}

#[test]
fn extends_cycles_are_named() {
    let dir = Dir::new();
    let a = dir.write("a.toml", "extends = \"b.toml\"\n");
    let b = dir.write("b.toml", "# b\nextends = \"a.toml\"\n");
    assert_eq!(load_err(&a), format!("{b}:2:11: extends makes a cycle: {a} → {b} → {a}"));
    let me = dir.write("me.toml", "extends = \"./me.toml\"\n");
    let again = dir.path().join("./me.toml").display().to_string();
    assert_eq!(load_err(&me), format!("{me}:1:11: extends makes a cycle: {me} → {again}"));
}

#[test]
fn unknown_builtins_list_the_builtins() {
    let err = load_err("amzon");
    assert!(err.starts_with("profile \"amzon\": no built-in profile is called \"amzon\""), "{err}");
    assert!(err.contains("(the built-ins: amazon, gce, azure, openstack, qemu-efi, qemu-bios, usb-hybrid, metal-efi)"));
    let (path, err) = text_err("\nextends = \"amzon\"\n");
    assert!(
        err.starts_with(&format!("{path}:2:11: extends \"amzon\": no built-in profile is called \"amzon\"")),
        "{err}"
    );
    let err = load_err("/nonexistent/p.toml");
    assert!(err.starts_with("reading profile /nonexistent/p.toml: "), "{err}");
}

#[test]
fn a_builtin_needs_a_description() {
    let name: Arc<str> = Arc::from("images/x.toml");
    let err = file::layer(file::Source { name: &name, text: "layout = \"efi\"\n", builtin: true }).unwrap_err();
    assert_eq!(err.to_string(), "images/x.toml: a built-in profile needs a description");
    assert!(file::layer(file::Source { name: &name, text: "layout = \"efi\"\n", builtin: false }).is_ok());
}

struct Case {
    name: &'static str,
    input: &'static str,
    want: Result<(), &'static str>,
}

#[test]
fn partition_lists_are_checked() {
    let cases = [
        Case {
            name: "esp and root",
            input: "bootloader = \"systemd-boot\"\n[[partitions]]\nrole = \"esp\"\nsize = \"256M\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Ok(()),
        },
        Case {
            name: "fill not last",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n[[partitions]]\nrole = \"swap\"\nsize = \"1G\"\n",
            want: Err(":3:8: partition 1 (root): size \"fill\" is for the last partition only"),
        },
        Case {
            name: "two roots",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"1G\"\n[[partitions]]\nrole = \"root\"\nsize = \"1G\"\n",
            want: Err(": partition 2 (root): a second root partition (the first is at "),
        },
        Case {
            name: "no root",
            input: "[[partitions]]\nrole = \"swap\"\nsize = \"1G\"\n",
            want: Err(": partitions: no root partition"),
        },
        Case {
            name: "empty list",
            input: "partitions = []\n",
            want: Err(":1:14: partitions: give at least the root partition"),
        },
        Case {
            name: "zero size",
            input: "[[partitions]]\nrole = \"root\"\nsize = 0\n",
            want: Err(":3:8: partition 1 (root): size 0: a partition's size is a positive multiple of 4 KiB"),
        },
        Case {
            name: "odd size",
            input: "[[partitions]]\nrole = \"root\"\nsize = 1000\n",
            want: Err("size 1000: a partition's size is a positive multiple of 4 KiB"),
        },
        Case {
            name: "bad role",
            input: "[[partitions]]\nrole = \"home\"\nsize = \"1G\"\n",
            want: Err(
                ":2:8: unknown variant `home`, expected one of `esp`, `xbootldr`, `bios-boot`, `root`, `swap`, `linux`, `empty`",
            ),
        },
        Case {
            name: "bad size",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"rest\"\n",
            want: Err(":3:8: \"rest\" is not a size"),
        },
        Case { name: "missing size", input: "[[partitions]]\nrole = \"root\"\n", want: Err("missing field `size`") },
        Case {
            name: "unknown key",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"fill\"\nfs = \"xfs\"\n",
            want: Err(":4:1: unknown field `fs`, expected one of `role`, `size`, `name`, `label`, `type-guid`"),
        },
        Case {
            name: "empty with a label",
            input: "[[partitions]]\nrole = \"empty\"\nsize = \"1M\"\nlabel = \"x\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err(": partition 1 (empty): an empty partition is unallocated space: it has no label"),
        },
        Case {
            name: "label on bios-boot",
            input: "[[partitions]]\nrole = \"bios-boot\"\nsize = \"1M\"\nlabel = \"x\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err(":4:9: partition 1 (bios-boot): label \"x\": a bios-boot partition has no filesystem to label"),
        },
        Case {
            name: "long FAT label",
            input: "[[partitions]]\nrole = \"esp\"\nsize = \"256M\"\nlabel = \"EFI-SYSTEM-PART\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err("label \"EFI-SYSTEM-PART\": a FAT label is at most 11 ASCII characters"),
        },
        Case {
            name: "long ext4 label",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"fill\"\nlabel = \"a-very-long-root-label\"\n",
            want: Err("an ext4 or swap label is at most 16 bytes"),
        },
        Case {
            name: "long name",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"fill\"\nname = \"0123456789012345678901234567890123456\"\n",
            want: Err(
                ":4:8: partition 1 (root): name \"0123456789012345678901234567890123456\": a GPT partition name is at most 36 UTF-16 units",
            ),
        },
        Case {
            name: "bad GUID",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"fill\"\ntype-guid = \"0fc63daf-8483-4772-8e79\"\n",
            want: Err(":4:13: partition 1 (root): type-guid \"0fc63daf-8483-4772-8e79\" is not a GUID"),
        },
        Case {
            name: "nil GUID",
            input: "[[partitions]]\nrole = \"root\"\nsize = \"fill\"\ntype-guid = \"00000000-0000-0000-0000-000000000000\"\n",
            want: Err("type-guid: all zeros marks an unused entry"),
        },
        Case {
            name: "two ESPs",
            input: "[[partitions]]\nrole = \"esp\"\nsize = \"256M\"\n[[partitions]]\nrole = \"esp\"\nsize = \"256M\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err("a second esp partition"),
        },
        Case {
            name: "xbootldr without esp",
            input: "[[partitions]]\nrole = \"xbootldr\"\nsize = \"1G\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err(": an xbootldr partition goes with an esp partition"),
        },
        Case {
            name: "with a layout",
            input: "layout = \"efi\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err(": partitions and layout ("),
        },
        Case {
            name: "systemd-boot without esp",
            input: "bootloader = \"systemd-boot\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err(":1:14: bootloader systemd-boot needs a partition with role = \"esp\", and the partitions ("),
        },
        Case {
            name: "grub without bios-boot",
            input: "bootloader = \"grub\"\n[[partitions]]\nrole = \"esp\"\nsize = \"256M\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err("bootloader grub needs a partition with role = \"bios-boot\""),
        },
        Case {
            name: "4Kn with bios-boot",
            input: "sector-size = 4096\n[[partitions]]\nrole = \"bios-boot\"\nsize = \"1M\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Err(":1:15: sector-size 4096 cannot boot by BIOS, as a bios-boot partition ("),
        },
        Case {
            name: "4Kn with esp",
            input: "sector-size = 4096\n[[partitions]]\nrole = \"esp\"\nsize = \"256M\"\n[[partitions]]\nrole = \"root\"\nsize = \"fill\"\n",
            want: Ok(()),
        },
    ];
    for case in cases {
        let dir = Dir::new();
        let path = dir.write("p.toml", case.input);
        match (Profile::load(&path), case.want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => {
                let e = format!("{e:#}");
                assert!(e.starts_with(&path) && e.contains(want), "{}: want {want:?} in\n{e}", case.name);
            }
            (got, want) => {
                panic!("{}: got {:?}, want {want:?}", case.name, got.map(|_| ()).map_err(|e| format!("{e:#}")))
            }
        }
    }
}

#[test]
fn checks_across_files_name_both() {
    let dir = Dir::new();
    let path = dir.write("p.toml", "extends = \"amazon\"\nlayout = \"legacy+gpt\"\n");
    let err = load_err(&path);
    assert!(
        err.starts_with(&format!(
            "images/amazon.toml:6:14: bootloader systemd-boot does not fit layout legacy+gpt ({path}:2:10)"
        )),
        "{err}"
    );
    let path = dir.write("q.toml", "extends = \"qemu-bios\"\nsector-size = 4096\n");
    let err = load_err(&path);
    assert!(
        err.starts_with(&format!(
            "{path}:2:15: sector-size 4096 cannot boot by BIOS, as layout legacy+gpt (images/qemu-bios.toml:"
        )),
        "{err}"
    );
    let path = dir.write("r.toml", "extends = \"metal-efi\"\nsector-size = 4096\n");
    Profile::load(&path).unwrap();
}

#[test]
fn kernel_params_per_architecture_merge_and_are_checked() {
    let dir = Dir::new();
    dir.write(
        "base.toml",
        "[kernel-params]\nadd = [\"console=ttyS0\", \"quiet\"]\n\
         [kernel-params.aarch64]\nremove = [\"console=ttyS0\"]\nadd = [\"console=ttyAMA0\", \"earlycon\"]\n",
    );
    let child = dir.write(
        "child.toml",
        "extends = \"base.toml\"\n[kernel-params]\nremove = [\"earlycon\"]\nadd = [\"panic=1\"]\n\
         [kernel-params.aarch64]\nadd = [\"acpi=force\"]\n[kernel-params.x86_64]\nadd = [\"nomodeset\"]\n",
    );
    let p = Profile::load(&child).unwrap();
    assert_eq!(p.kernel_params.add, ["console=ttyS0", "quiet", "panic=1"]);
    // The child's general removal drops what the parent's aarch64 table added.
    let arm = &p.kernel_params.arch["aarch64"];
    assert_eq!(
        (arm.add.as_slice(), arm.remove.as_slice()),
        (&["console=ttyAMA0".to_owned(), "acpi=force".to_owned()][..], &["console=ttyS0".to_owned()][..])
    );
    assert_eq!(p.kernel_params.arch["x86_64"].add, ["nomodeset"]);
    let applied = p.applied("child", false).unwrap();
    assert_eq!(applied.arch_kernel_params.len(), 2);
    let shown = p.to_toml().unwrap();
    assert!(shown.contains("[kernel-params.aarch64]\nadd = [\"console=ttyAMA0\", \"acpi=force\"]"), "{shown}");

    let bad = dir.write("bad.toml", "[kernel-params.sparc]\nadd = [\"quiet\"]\n");
    assert!(load_err(&bad).contains("[kernel-params.sparc]: not an architecture"), "{}", load_err(&bad));
    let long = dir.write("long.toml", "[kernel-params.aarch64-linux]\nadd = [\"quiet\"]\n");
    assert!(load_err(&long).contains("name the architecture as \"aarch64\""), "{}", load_err(&long));
    let nested = dir.write("nested.toml", "[kernel-params.aarch64.x86_64]\nadd = [\"quiet\"]\n");
    assert!(load_err(&nested).contains("unknown field"), "{}", load_err(&nested));
    let param = dir.write("param.toml", "[kernel-params.aarch64]\nadd = [\"a b\"]\n");
    assert!(load_err(&param).contains("kernel-params.aarch64.add \"a b\""), "{}", load_err(&param));
}
