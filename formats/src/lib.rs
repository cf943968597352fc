//! Byte-level writers for disk images, generic over positioned sinks. Knows nothing about Nix.

pub mod copy;
pub mod disk;
pub mod erofs;
pub mod ext4;
pub mod fat;
pub mod grub;
pub mod image;
pub mod sha256x2;
pub mod sink;
pub mod sparse;
pub mod swap;
pub mod uki;
pub mod units;
pub mod verity;

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;

    /// Every error that wraps an I/O error says what and where, and leaves the I/O error to its source: printed
    /// as a chain (anyhow's `{:#}`), the OS error's text appears once.
    #[test]
    fn errors_print_their_os_error_once() {
        let os = || io::Error::from_raw_os_error(28);
        let copy_write = || crate::copy::Error::Write { offset: 7, source: os() };
        let cases: Vec<(&str, Box<dyn Error>)> = vec![
            ("copy", Box::new(copy_write())),
            ("copy read", Box::new(crate::copy::Error::Read { path: "/f".into(), offset: 0, source: os() })),
            ("ext4 copy", Box::new(crate::ext4::Error::from(copy_write()))),
            ("ext4", Box::new(crate::ext4::Error::Write { offset: 7, what: "inode table", source: os() })),
            ("fat copy", Box::new(crate::fat::Error::from(copy_write()))),
            ("fat", Box::new(crate::fat::Error::Write { offset: 7, what: "FAT", source: os() })),
            ("disk", Box::new(crate::disk::Error::Write { what: "GPT header", offset: 7, source: os() })),
            ("qcow2 read", Box::new(crate::image::qcow2::Error::Read { offset: 7, len: 1, source: os() })),
            (
                "qcow2 write",
                Box::new(crate::image::qcow2::Error::Write { what: "data", offset: 7, len: 1, source: os() }),
            ),
            (
                "qcow2 as io",
                Box::new(io::Error::from(crate::image::qcow2::Error::Compressor { codec: "zstd", source: os() })),
            ),
            (
                "grub read file",
                Box::new(crate::grub::Error::ReadFile {
                    name: "ext2.mod".into(),
                    location: "/grub/i386-pc/ext2.mod".into(),
                    source: os(),
                }),
            ),
            (
                "grub write",
                Box::new(crate::grub::Error::Write {
                    what: "GRUB core.img",
                    offset: crate::units::Bytes(7),
                    source: os(),
                }),
            ),
            (
                "grub read",
                Box::new(crate::grub::Error::Read {
                    what: "GRUB boot sector",
                    offset: crate::units::Bytes(7),
                    source: os(),
                }),
            ),
        ];
        let text = os().to_string();
        for (name, err) in cases {
            let mut chain = vec![err.to_string()];
            let mut at: &dyn Error = err.as_ref();
            while let Some(source) = at.source() {
                chain.push(source.to_string());
                at = source;
            }
            let shown = chain.join(": ");
            assert_eq!(shown.matches(&text).count(), 1, "{name}: {shown}");
            assert!(shown.ends_with(&text), "{name}: {shown}");
        }
    }
}
