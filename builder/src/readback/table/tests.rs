use std::sync::Arc;

use kiln_formats::disk::{DiskLayout, DiskSize, PartitionRequest, PartitionSize, PartitionTable, partition_type};
use kiln_formats::sink::MemSink;

use super::*;

fn request(name: &str, type_guid: Guid, guid: u128, attributes: GptAttributes, mib: u64) -> PartitionRequest {
    PartitionRequest {
        name: name.to_owned(),
        type_guid,
        guid: Guid::from_u128(guid),
        attributes,
        size: PartitionSize::AtLeast(Bytes::mib(mib)),
    }
}

fn mem(bytes: Vec<u8>) -> Disk {
    let len = Bytes(bytes.len() as u64);
    Disk::new(Arc::new(bytes), len, "mem.img".into())
}

/// What kiln's own writer writes for `requests`: its plan, and the image's bytes.
fn written(sector: SectorSize, table: PartitionTable, requests: Vec<PartitionRequest>) -> (DiskLayout, Vec<u8>) {
    let layout = DiskLayout::sequential(sector, table, DiskSize::Fit, requests).unwrap();
    let sink = MemSink::new(layout.size().get() as usize);
    layout.write(&sink).unwrap();
    (layout, sink.into_inner())
}

/// The issues as warnings name them.
fn texts(issues: &[Issue]) -> Vec<String> {
    issues.iter().map(|i| format!("mem.img: {i}")).collect()
}

/// What kiln's own partition table writer planned comes back, field by field.
#[test]
fn reads_back_what_formats_writes() {
    for sector in [SectorSize::S512, SectorSize::S4096] {
        let requests = vec![
            request("BIOS boot", partition_type::BIOS_BOOT, 1, GptAttributes::NONE, 1),
            request("ESP", partition_type::ESP, 2, GptAttributes::REQUIRED, 3),
            request("nixos", partition_type::ROOT_X86_64, 3, GptAttributes::GROWFS, 4),
        ];
        let disk_guid = Guid::from_u128(0xABCD);
        let (planned, bytes) = written(sector, PartitionTable::Gpt { disk_guid }, requests);
        let disk = mem(bytes);
        if sector == SectorSize::S4096 {
            let mut issues = Vec::new();
            assert_eq!(
                gpt::read(&disk, SectorSize::S512, &mut issues).unwrap(),
                None,
                "no table at LBA 1 of 512 bytes"
            );
        }
        let layout = Layout::read(&disk).unwrap().expect("a GPT");
        assert_eq!(layout.issues, [], "a whole table, a protective MBR");
        assert_eq!(layout.sector, Some(sector));
        let Table::Gpt { disk_guid: got, backup_header_lba, .. } = layout.table else { panic!("{:?}", layout.table) };
        assert_eq!(got, disk_guid);
        assert_eq!(backup_header_lba.get(), planned.sectors() - 1);
        assert_eq!(layout.past_end(disk.len()), []);
        assert_eq!(layout.partitions.len(), 3);
        for (p, want) in layout.partitions.iter().zip(planned.partitions()) {
            assert_eq!(p.name.as_deref(), Some(want.name.as_str()));
            assert_eq!(p.kind, PartitionType::Gpt(want.type_guid));
            assert_eq!(p.guid, Some(want.guid));
            assert_eq!(p.extent, want.extent);
            assert_eq!(p.range, want.extent.bytes(sector));
            assert_eq!(p.attributes, Some(want.attributes));
        }
        let names: Vec<&str> = layout.partitions.iter().map(|p| p.kind.name()).collect();
        assert_eq!(names, ["BIOS boot", "ESP", "Linux root (x86-64)"]);
        let roles: Vec<Role> = layout.partitions.iter().map(Partition::role).collect();
        assert_eq!(roles, [Role::BiosBoot, Role::Esp, Role::Other]);
        assert_eq!(layout.partitions[2].to_string(), "partition 3 (Linux root (x86-64))");
    }
}

/// Corruption is an error naming the image and the offset; a lost backup header is an issue unless the image
/// is too short to hold it, when it lies past the end.
#[test]
fn corrupt_and_truncated_tables() {
    struct Case {
        name: &'static str,
        damage: fn(&mut Vec<u8>),
        want_err: Option<&'static str>,
        want_issue: Option<&'static str>,
        want_past_end: Option<&'static str>,
    }
    let cases = [
        Case {
            name: "header checksum",
            damage: |b| b[512 + 40] ^= 1,
            want_err: Some("mem.img: GPT header at byte 512: checksum is"),
            want_issue: None,
            want_past_end: None,
        },
        Case {
            name: "entry array checksum",
            damage: |b| b[1024 + 56] ^= 1,
            want_err: Some("mem.img: GPT partition entry array at byte 1024: checksum is"),
            want_issue: None,
            want_past_end: None,
        },
        Case {
            name: "backup header",
            damage: |b| {
                let n = b.len();
                b[n - 512] = 0;
            },
            want_err: None,
            want_issue: Some("backup GPT header at byte"),
            want_past_end: None,
        },
        Case {
            name: "truncated",
            damage: |b| b.truncate(b.len() - (1 << 20)),
            want_err: None,
            want_issue: None,
            want_past_end: Some("mem.img: truncated: the GPT's backup header belongs at byte"),
        },
    ];
    for case in cases {
        let requests = vec![request("a", partition_type::LINUX_DATA, 1, GptAttributes::NONE, 2)];
        let (_, mut bytes) = written(SectorSize::S512, PartitionTable::Gpt { disk_guid: Guid::from_u128(9) }, requests);
        (case.damage)(&mut bytes);
        let disk = mem(bytes);
        let layout = match (case.want_err, Layout::read(&disk)) {
            (Some(want), Err(e)) => {
                assert!(e.to_string().starts_with(want), "{}: {e}", case.name);
                continue;
            }
            (None, Ok(Some(layout))) => layout,
            (want, got) => panic!("{}: want error {want:?}, got {got:?}", case.name),
        };
        let issues = texts(&layout.issues);
        match case.want_issue {
            Some(w) => assert!(issues.iter().any(|x| x.contains(w)), "{}: {issues:?}", case.name),
            None => assert!(issues.is_empty(), "{}: {issues:?}", case.name),
        }
        let past_end: Vec<String> =
            layout.past_end(disk.len()).iter().map(|p| format!("mem.img: truncated: {p}")).collect();
        match case.want_past_end {
            Some(w) => assert!(past_end.first().is_some_and(|x| x.starts_with(w)), "{}: {past_end:?}", case.name),
            None => assert!(past_end.is_empty(), "{}: {past_end:?}", case.name),
        }
    }
}

#[test]
fn reads_a_dos_table() {
    let root = request("", partition_type::LINUX_DATA, 0, GptAttributes::LEGACY_BIOS_BOOTABLE, 2);
    let (planned, bytes) = written(SectorSize::S512, PartitionTable::Mbr { disk_signature: 0x2FD0_9407 }, vec![root]);
    let disk = mem(bytes);
    let mut issues = Vec::new();
    assert_eq!(gpt::read(&disk, SectorSize::S512, &mut issues).unwrap(), None);
    let layout = Layout::read(&disk).unwrap().expect("a DOS table");
    assert_eq!(layout.table, Table::Dos { disk_signature: 0x2FD0_9407 });
    assert_eq!((layout.sector, layout.issues.as_slice()), (Some(SectorSize::S512), [].as_slice()));
    assert_eq!(layout.partitions.len(), 1);
    let p = &layout.partitions[0];
    assert_eq!((p.number, p.kind, p.bootable), (1, PartitionType::Mbr(0x83), true));
    assert_eq!(p.extent, planned.partitions()[0].extent);
    assert_eq!((p.kind.to_string(), p.kind.name()), ("83".to_owned(), "Linux"));
    assert_eq!(p.to_string(), "partition 1 (type 0x83)");
    assert_eq!(
        serde_json::to_value(Table::Dos { disk_signature: 0x2FD0_9407 }).unwrap()["disk_signature"],
        "0x2fd09407"
    );
}

/// A DOS table of `entries` (type, start, count) and `55 AA`.
fn dos(len: usize, entries: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[510] = 0x55;
    b[511] = 0xAA;
    for (i, &(kind, start, count)) in entries.iter().enumerate() {
        let e = &mut b[0x1BE + 16 * i..0x1BE + 16 * (i + 1)];
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
    }
    b
}

/// Entries that share sectors are reported, and the table is still read.
#[test]
fn overlapping_dos_entries_are_an_issue() {
    let layout = Layout::read(&mem(dos(4 << 20, &[(0x83, 2048, 4096), (0x83, 4096, 2048)]))).unwrap().unwrap();
    assert_eq!(layout.partitions.len(), 2);
    assert_eq!(texts(&layout.issues), ["mem.img: partitions 1 (LBA 2048..6144) and 2 (LBA 4096..6144) overlap"]);
}

/// A partition past the end of the image is named; a DOS table with an extended partition or a protective one
/// says what is not read.
#[test]
fn truncated_and_odd_dos_tables() {
    let disk = mem(dos(1 << 20, &[(0x83, 2048, 4096), (0x05, 6144, 10), (0xEE, 1, 100)]));
    let layout = Layout::read(&disk).unwrap().unwrap();
    let past_end: Vec<String> = layout.past_end(disk.len()).iter().map(ToString::to_string).collect();
    assert_eq!(past_end, ["partition 1 ends at byte 3145728", "partition 2 ends at byte 3150848"]);
    assert_eq!(
        texts(&layout.issues),
        [
            "mem.img: partition 2 is an extended partition: the logical partitions in it are not listed",
            "mem.img: sector 0 is a GPT protective MBR, but there is no GPT header at byte 512 or 4096",
        ]
    );
}

/// A GPT disk's sector 0 must be a protective MBR: a hybrid one, or none, is an issue.
#[test]
fn hybrid_and_missing_protective_mbrs() {
    let requests = vec![request("a", partition_type::LINUX_DATA, 1, GptAttributes::NONE, 2)];
    let (_, bytes) = written(SectorSize::S512, PartitionTable::Gpt { disk_guid: Guid::from_u128(9) }, requests);
    let mut hybrid = bytes.clone();
    hybrid[0x1BE + 16 + 4] = 0x0C;
    let layout = Layout::read(&mem(hybrid)).unwrap().unwrap();
    assert_eq!(
        texts(&layout.issues),
        ["mem.img: sector 0 is a hybrid MBR: besides the GPT's protective partition it lists partitions 2 (type \
          0x0c), which BIOS firmware and MBR tools see instead of the GPT"]
    );
    let mut none = bytes;
    none[510] = 0;
    let layout = Layout::read(&mem(none)).unwrap().unwrap();
    assert_eq!(layout.issues, [Issue::NoProtectiveMbr]);
}

/// What is neither a table nor a filesystem is `None`; a filesystem at byte 0 is the image.
#[test]
fn bare_filesystems_and_nothing() {
    assert_eq!(Layout::read(&mem(vec![0u8; 1 << 20])).unwrap(), None);
    assert_eq!(Layout::read(&mem(b"tiny".to_vec())).unwrap(), None);
    let mut xfs = vec![0u8; 1 << 20];
    xfs[..4].copy_from_slice(b"XFSB");
    let layout = Layout::read(&mem(xfs)).unwrap().unwrap();
    assert_eq!((layout.table, layout.bare, layout.sector), (Table::None, Some(Magic::Other("xfs")), None));
}

#[test]
fn crc_matches_the_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b"123456789"), kiln_formats::disk::crc32(b"123456789"), "the writer's agrees");
}
