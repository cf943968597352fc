//! QEMU boot runner.
