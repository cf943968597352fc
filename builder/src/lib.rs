//! kiln: builds NixOS disk images from a system closure, in userspace, in one planned pass.
//!
//! The pipeline: [`system`] reads the toplevel's bootspec, [`closure`] finds every store path it needs and
//! [`inventory`] lists their files; later stages plan the image and write it. [`dry_run`] runs the stages that
//! exist and reports what they found.

pub mod cli;
pub mod closure;
pub mod dry_run;
pub mod inventory;
pub mod progress;
pub mod run;
pub mod store;
pub mod system;
