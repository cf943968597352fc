//! `kiln flash`: writes an image to a disk (or a file) safely, fast and verified.

pub mod source;
