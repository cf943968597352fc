//! Unified Kernel Images: Debian's systemd EFI stub with sections appended, read back by binutils
//! (`objdump -h` for the section table, `objcopy --only-section` for each section's bytes).

use std::process::Command;

use kiln_formats::uki::{build, machine, section, sections};

use crate::common::{run, tool, xorshift_bytes};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[test]
fn binutils_reads_the_sections_back() {
    let stub = std::fs::read(STUB).unwrap_or_else(|e| panic!("{STUB}: {e} (install systemd-boot-efi)"));
    let linux: Vec<u8> = xorshift_bytes(1, 3_000_001).collect();
    let initrd: Vec<u8> = xorshift_bytes(2, 777_777).collect();
    let add: Vec<(&str, &[u8])> = vec![
        (".osrel", b"ID=nixos\nVERSION_ID=\"24.11\"\n"),
        (".cmdline", b"init=/nix/store/x-nixos-system/init usrhash=00ff console=ttyS0"),
        (".uname", b"6.1.0-demo"),
        (".initrd", &initrd),
        (".linux", &linux),
    ];
    let uki = build(&stub, &add).unwrap();
    assert_eq!(machine(&uki).unwrap(), 0x8664);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uki.efi");
    std::fs::write(&path, &uki).unwrap();
    let objdump = run(Command::new(tool("objdump", "binutils")).arg("-h").arg(&path));
    assert!(objdump.ok, "{}", objdump.text);
    assert!(objdump.text.contains("file format pei-x86-64"), "{}", objdump.text);
    let ours = sections(&uki).unwrap();
    for (name, data) in &add {
        let s = ours.iter().find(|s| s.name == *name).unwrap();
        // "Idx Name Size VMA LMA File-off Algn"
        let line = objdump
            .text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(*name))
            .unwrap_or_else(|| panic!("objdump lists no {name}: {}", objdump.text));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(u64::from_str_radix(cols[2], 16).unwrap(), data.len() as u64, "{line}");
        assert_eq!(u64::from_str_radix(cols[3], 16).unwrap(), u64::from(s.virtual_address), "{line}");
        assert_eq!(u64::from_str_radix(cols[5], 16).unwrap(), u64::from(s.file_offset), "{line}");
        let out = dir.path().join(format!("s{name}"));
        let objcopy = run(Command::new(tool("objcopy", "binutils"))
            .args(["-O", "binary", "--only-section", name])
            .arg(&path)
            .arg(&out));
        assert!(objcopy.ok, "{}", objcopy.text);
        assert!(std::fs::read(&out).unwrap() == *data, "{name}: objcopy read other bytes");
        assert_eq!(section(&uki, name).unwrap().unwrap(), *data);
    }
    // The stub's own sections are where they were.
    let theirs = sections(&stub).unwrap();
    assert_eq!(&ours[..theirs.len()], &theirs[..]);
}
