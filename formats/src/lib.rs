//! Byte-level writers for disk images, generic over positioned sinks. Knows nothing about Nix.

pub mod copy;
pub mod disk;
pub mod ext4;
pub mod fat;
pub mod grub;
pub mod image;
pub mod sink;
pub mod sparse;
pub mod swap;
pub mod units;
