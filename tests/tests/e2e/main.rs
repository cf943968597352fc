//! End-to-end tests: the real `kiln` binary on generated fixtures, checked by independent tools.

mod aarch64;
mod boot_kiln;
mod boot_reference;
mod cmdline_boot;
mod dry_run;
mod errors;
mod ext4_build;
mod ext4_checkers;
mod ext4_property;
mod failures;
mod flash;
mod formats;
mod golden;
mod harness;
mod inspect;
mod interrupt;
mod nar;
mod nix_state;
mod nixdb;
mod output_paths;
mod pinned;
mod profiles;
mod progress;
mod security;
mod util;
mod verify;
