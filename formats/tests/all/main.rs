//! The formats crate's integration tests, one binary: what each writer produces, read back by independent
//! tools, read-only (gdisk and fdisk for partition tables, e2fsck for ext4, dosfstools, mtools and the `fatfs`
//! crate for FAT, QEMU for qcow2, VHD, VHDX and VMDK, zstd, GNU tar, gzip, bmaptool and sha256sum for the
//! streaming outputs, grub-mkimage as the oracle for GRUB's core.img and SeaBIOS in QEMU booting it). Missing
//! tools fail the tests with the Debian package to install.

mod common;

mod disk;
mod erofs;
mod ext4;
mod fat;
mod grub;
mod qcow2;
mod stream;
mod uki;
mod vdisk;
mod verity;
