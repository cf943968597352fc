//! The Linux kernel command line as a type.
