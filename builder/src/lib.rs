//! kiln: builds NixOS disk images from a system closure, in userspace, in one planned pass.
//!
//! The pipeline: [`system`] reads the toplevel's bootspec, [`closure`] finds every store path it needs and
//! [`inventory`] lists their files; later stages plan the image and write it. [`dry_run`] runs the stages that
//! exist and reports what they found; [`build`] plans the root filesystem ([`rootfs`]) and writes it
//! atomically ([`output`]).
//!
//! [`inspect`] and [`verify`] read images back through [`readback`].

pub mod boot;
pub mod build;
pub mod cli;
pub mod closure;
pub mod copy;
pub mod disk;
pub mod dry_run;
pub mod emit;
pub mod inspect;
pub mod inventory;
pub mod nar;
pub mod nixdb;
pub mod output;
pub mod profile;
pub mod progress;
pub mod readback;
pub mod render;
pub mod rootfs;
pub mod run;
pub mod seed;
pub mod store;
pub mod system;
pub mod verify;
