//! kiln: builds NixOS disk images from a system closure, in userspace, in one planned pass.
//!
//! # The pipeline
//!
//! `kiln build` is [`build::run`]: four stages, each a module that takes the previous one's value, imports
//! running one way (a stage never imports a later one):
//!
//! 1. [`resolve`]: the command line and the profile become [`resolve::options::Options`]; the system's bootspec
//!    ([`system`]), its closure ([`closure`]: closureInfo, the host's Nix database, or a reference scan) and the
//!    inventory of its files ([`inventory`]) become a [`resolve::Resolved`], every narHash known ([`nar`]).
//! 2. [`plan`]: every byte's place decided, as a [`plan::Plan`]: the partition table ([`plan::disk`]), the root
//!    filesystem's tree ([`plan::rootfs`]: the store, the Nix database of [`nixdb`], the profile, `/boot`) and
//!    its ext4 plan, the boot partitions' FAT plans, the boot files and entries ([`boot`]: systemd-boot, GRUB).
//! 3. [`write`](mod@write): the plan written into a raw image: metadata and store data in parallel, store files hashed from
//!    the same reads that copy them.
//! 4. [`output`]: the raw image turned into the container asked for ([`output::emit`]: qcow2, VHD, …, block
//!    maps, checksums, bundles), written beside the target and renamed when complete.
//!
//! [`report`] renders what was resolved and planned (the dry run, JSON and text); [`progress`] is the sink the
//! stages report to, [`render`] its renderers for terminals, logs and machines.
//!
//! # Around it
//!
//! [`inspect`] and [`verify`] read images back (never writing them) through [`readback`], the one reader of
//! partition tables, filesystems and containers; [`profile`] holds the image profiles;
//! [`cli`] is clap's definition of the command line and [`run`] carries it out; [`store`], [`seed`] and [`units`]
//! are the small vocabulary everything shares.

pub mod arch;
pub mod boot;
pub mod build;
pub mod cli;
pub mod closure;
pub mod derivation;
pub mod flash;
pub mod inspect;
pub mod inventory;
pub mod nar;
pub mod nixdb;
pub mod output;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod readback;
pub mod render;
pub mod report;
pub mod resolve;
pub mod run;
pub mod seed;
pub mod store;
pub mod system;
pub mod units;
pub mod verify;
pub mod write;
