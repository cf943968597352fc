//! Byte-level writers for disk images, generic over positioned sinks. Knows nothing about Nix.

pub mod sparse;
