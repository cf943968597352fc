//! Test harness for kiln: fixtures generated on demand, independent checkers, and a QEMU boot runner.
//!
//! Every helper that needs an outside tool fails loudly (naming the Debian package to install) when the
//! tool is missing: a test that cannot check what it claims must not pass.

pub mod boot;
pub mod disk;
pub mod ext4;
pub mod fixtures;
pub mod identical;
pub mod nix;
pub mod ssh_builder;
pub mod tools;
pub mod trees;
