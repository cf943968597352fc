//! The command line, as clap types. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Build NixOS disk images from a system closure: no VM, no root, no loop devices.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image of a NixOS system.
    Build(Box<BuildArgs>),
    /// Show what an image holds: partition table, filesystems, bootloader and entries.
    Inspect(InspectArgs),
    /// Check an image's store against its Nix database and profile.
    Verify(VerifyArgs),
    /// List the built-in image profiles, or show one resolved.
    Profiles(ProfilesArgs),
    /// Write an image to a disk (or a file): only its data, verified, partition tables last.
    Flash(FlashArgs),
    /// Build an image as the builder of a Nix derivation (what nix/make-image.nix runs): the system, its closure,
    /// the options and the output come from the structured attributes Nix writes.
    NixBuilder(NixBuilderArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print kiln's manual page (roff, for `man`) on stdout.
    Man,
}

/// `kiln nix-builder`.
#[derive(Debug, Args)]
pub struct NixBuilderArgs {
    /// The structured-attrs file (default: `$NIX_ATTRS_JSON_FILE`, else `.attrs.json` in `$NIX_BUILD_TOP`).
    #[arg(long, value_name = "FILE")]
    pub attrs: Option<PathBuf>,
}

/// `kiln build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The system's toplevel: `/nix/store/…-nixos-system-…`, its path under --store-dir, or a link to it
    /// such as nix-build's `result`.
    #[arg(long, value_name = "TOPLEVEL")]
    pub system: PathBuf,

    /// The architecture the image is for (`x86_64`, `aarch64`, or as Nix says it, `aarch64-linux`), in place
    /// of the one the system's bootspec names (its `system`).
    #[arg(long, value_name = "ARCH")]
    pub system_arch: Option<String>,

    /// Where to write the image (written beside it under a temporary name, renamed when complete).
    #[arg(long, short, value_name = "PATH", required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,

    /// An image profile: a built-in's name (`kiln profiles` lists them) or a profile file (a path with a `/` or
    /// ending in `.toml`). It fills in every option not given here.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,

    /// The directory on this machine that holds the logical /nix/store (a chroot's or a fixture's store).
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    pub store_dir: PathBuf,

    /// A nixpkgs closureInfo directory (`store-paths` and `registration`) to take the closure from.
    #[arg(long, value_name = "DIR", conflicts_with = "closure_attrs")]
    pub closure_info: Option<PathBuf>,

    /// A Nix structured-attrs file (`.attrs.json`, `$NIX_ATTRS_JSON_FILE`) to take the closure from: the lists its
    /// `exportReferencesGraph` names, with each path's narHash, narSize and references.
    #[arg(long, value_name = "FILE")]
    pub closure_attrs: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, value_name = "F")]
    pub format: Option<Format>,

    /// Partition layout.
    #[arg(long, value_enum, value_name = "L")]
    pub layout: Option<Layout>,

    /// Bootloader.
    #[arg(long, value_enum, value_name = "B")]
    pub bootloader: Option<Bootloader>,

    /// Image size: `auto` (exactly what the plan needs plus --extra-space) or a size such as `8G`.
    #[arg(long, value_name = "auto|SIZE", value_parser = parse_size_spec)]
    pub size: Option<SizeSpec>,

    /// Free space to leave in the root filesystem with `--size auto`, e.g. `512M`.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub extra_space: Option<u64>,

    /// Size of the EFI system partition (default 512M).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub esp_size: Option<u64>,

    /// GRUB package directory (with lib/grub/i386-pc, whose files are read as data; nothing in it is run) for
    /// BIOS layouts, instead of the closure's.
    #[arg(long, value_name = "DIR")]
    pub grub: Option<PathBuf>,

    /// Boot this specialisation by default (loader.conf `default`, GRUB's `default`).
    #[arg(long, value_name = "NAME")]
    pub default_specialisation: Option<String>,

    /// Seed for every GUID, UUID and volume id in the image (default: derived from the toplevel).
    #[arg(long, value_name = "STR")]
    pub seed: Option<String>,

    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Also ship this store path and its closure in the image, registered in its Nix database (repeatable;
    /// for offline installs: what `nixos-rebuild` will need without a binary cache).
    #[arg(long = "extra-path", value_name = "P")]
    pub extra_paths: Vec<PathBuf>,

    /// Add a kernel parameter to every boot entry (repeatable).
    #[arg(long = "kernel-param", value_name = "P")]
    pub kernel_params: Vec<String>,

    /// Remove a kernel parameter from every boot entry: `KEY` removes every `KEY` and `KEY=…`, `KEY=VALUE` only
    /// that one (repeatable; applied before --kernel-param).
    #[arg(long = "remove-kernel-param", value_name = "P")]
    pub remove_kernel_params: Vec<String>,

    /// Logical sector size of the disk: 512, or 4096 for 4Kn disks (UEFI layouts only; GRUB's BIOS boot
    /// needs 512).
    #[arg(long, value_name = "BYTES", value_parser = parse_sector_size)]
    pub sector_size: Option<kiln_formats::disk::SectorSize>,

    /// Compression inside the container: qcow2 takes none, zstd (default) or zlib.
    #[arg(long, value_enum, value_name = "C")]
    pub compress: Option<Compression>,

    /// Also write a bmaptool block map (`IMAGE.bmap`) beside a raw or raw.zst output.
    #[arg(long)]
    pub bmap: bool,

    /// Also write the image's sha256 in `sha256sum -c` format: `IMAGE.sha256` beside a file output, `SHA256SUMS`
    /// inside a bundle (on by default for gce and ami).
    #[arg(long, overrides_with = "no_checksum")]
    pub checksum: bool,

    /// Do not write checksums (`IMAGE.sha256`, or a bundle's `SHA256SUMS`).
    #[arg(long, overrides_with = "checksum")]
    pub no_checksum: bool,

    /// Do not check store paths' contents against their registered narHash while copying them.
    #[arg(long)]
    pub no_verify_hashes: bool,

    /// Also write `/nix-path-registration` (the closure's registration, for systems that load it at boot).
    #[arg(long)]
    pub registration_file: bool,

    /// Boot Unified Kernel Images (`EFI/Linux/<entry>.efi`: systemd's EFI stub with the kernel, initrd, command
    /// line and os-release inside) instead of entry files, so the command line (with the store's root hash for
    /// efi-verity) cannot be edited at the boot menu. The stub comes from the closure's systemd.
    #[arg(long)]
    pub uki: bool,

    /// The EFI stub for --uki when the closure has none (Debian's systemd-boot-efi:
    /// /usr/lib/systemd/boot/efi/linuxx64.efi.stub).
    #[arg(long, value_name = "FILE", requires = "uki")]
    pub uki_stub: Option<PathBuf>,

    /// Compress the read-only store of `--layout efi-verity` (EROFS): files LZ4 shrinks by at least a block are
    /// stored in 4 KiB LZ4 clusters the kernel decompresses on read (as `mkfs.erofs -zlz4`); the rest as they
    /// are.
    #[arg(long, value_enum, value_name = "C", default_value_t = StoreCompression::None)]
    pub store_compression: StoreCompression,

    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,

    /// Resolve everything and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// How to report progress: bars on a terminal, plain lines, JSON lines on stdout, or nothing.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `kiln inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image to read.
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `kiln verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image to check.
    pub image: PathBuf,
    /// The toplevel the image should boot.
    #[arg(long, value_name = "TOPLEVEL")]
    pub system: Option<PathBuf>,
    /// The store directory holding the system (see `kiln build --store-dir`).
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
}

/// `kiln flash`.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The image: a kiln output (raw, raw.zst, qcow2, fixed VHD, stream-optimized VMDK, GCE `*.raw.tar.gz`) or
    /// an `http://`/`https://` URL of one. A `.bmap` and a `.sha256` beside it are used when present.
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// The disk to write: a whole block device (`/dev/sdX`, `/dev/disk/by-id/…`), or a regular file.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,

    /// The sha256 of the source file (instead of a `.sha256` beside it).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,

    /// The block map to use (instead of looking for one beside the source).
    #[arg(long, value_name = "PATH|URL", conflicts_with = "no_bmap")]
    pub bmap: Option<String>,

    /// Use no block map: write every non-zero block of the image.
    #[arg(long)]
    pub no_bmap: bool,

    /// Write the target even though it holds a partition table or a filesystem.
    #[arg(long)]
    pub force: bool,

    /// Allow the target to be a partition rather than a whole disk.
    #[arg(long)]
    pub allow_partition: bool,

    /// Write zeros over the image's holes instead of discarding them (or leaving them, where the device cannot
    /// discard).
    #[arg(long)]
    pub zero_holes: bool,

    /// Do not read the written data back to compare it.
    #[arg(long)]
    pub no_verify: bool,

    /// On an error, keep what was written (the partition tables are wiped otherwise).
    #[arg(long)]
    pub preserve_on_error: bool,

    /// Extend the root partition to the end of the target (the root filesystem grows at first boot).
    #[arg(long)]
    pub grow_root: bool,

    /// Flush written data to the device every SIZE bytes, so a slow stick never stalls at the end (default 64M).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub sync_every: Option<u64>,

    /// Say what would be written where and which checks would be made; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// How to report progress: bars on a terminal, plain lines, JSON lines on stdout, or nothing.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `kiln profiles`.
#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Without a subcommand: list the built-in profiles, one per line with its description.
    #[command(subcommand)]
    pub command: Option<ProfilesCommand>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `kiln profiles` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Print a profile with its `extends` chain resolved, as TOML.
    Show {
        /// A built-in profile's name, or a profile file (a path with a `/` or ending in `.toml`).
        #[arg(value_name = "NAME|FILE")]
        profile: String,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A sparse raw disk image.
    Raw,
    /// A raw image compressed with zstd.
    #[value(name = "raw.zst")]
    #[serde(rename = "raw.zst")]
    RawZst,
    /// QEMU copy-on-write v3.
    Qcow2,
    /// Fixed VHD (Azure).
    Vhd,
    /// VHDX (Hyper-V).
    Vhdx,
    /// Stream-optimized VMDK (VMware, AWS import).
    Vmdk,
    /// A GCE image: `*.raw.tar.gz` holding `disk.raw`.
    Gce,
    /// An AMI bundle: disk plus `image-info.json`.
    Ami,
}

/// How the store partition of `efi-verity` is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreCompression {
    /// Every file as it is.
    None,
    /// LZ4 clusters (needs a kernel with `CONFIG_EROFS_FS_ZIP`, which NixOS's has).
    Lz4,
}

/// Partition layouts, named as in nixpkgs' make-disk-image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// GPT: ESP + root.
    Efi,
    /// MBR: one root partition, GRUB in the gap after the MBR.
    Legacy,
    /// GPT: BIOS boot partition + root.
    #[value(name = "legacy+gpt")]
    #[serde(rename = "legacy+gpt")]
    LegacyGpt,
    /// GPT: BIOS boot + ESP + root, boots both ways.
    Hybrid,
    /// GPT: ESP + XBOOTLDR + root.
    Efixbootldr,
    /// GPT: ESP + the store's dm-verity hash partition + the store (erofs, read-only, verified) + a writable
    /// root; as nixpkgs' `image.repart.verityStore` lays it out (`usrhash=` on the command line).
    EfiVerity,
    /// No partition table: a bare root filesystem.
    None,
    /// A profile's own partition list (`[[partitions]]`); not a command-line value.
    #[value(skip)]
    Custom,
}

/// Bootloaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    /// systemd-boot (UEFI).
    SystemdBoot,
    /// GRUB (BIOS).
    Grub,
    /// No bootloader.
    None,
}

/// Compression inside an image container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Stored as is.
    None,
    /// zstd, one frame per cluster, compressed in parallel.
    Zstd,
    /// zlib/deflate (what `qemu-img convert -c` writes), compressed in parallel.
    Zlib,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines on stderr.
    Plain,
    /// Versioned JSON lines on stdout.
    Json,
    /// Nothing.
    None,
}

/// `--size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// Exactly what is needed, plus the extra space.
    Auto,
    /// A fixed size in bytes.
    Fixed(u64),
}

/// A value enum's command-line spelling (`legacy+gpt`, `raw.zst`, …): every name is spelled once, in its
/// `#[value]` attribute.
pub fn value_name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_owned()).unwrap_or_default()
}

fn parse_sector_size(s: &str) -> Result<kiln_formats::disk::SectorSize, String> {
    s.parse().map_err(|e: kiln_formats::units::SectorSizeError| e.to_string())
}

fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    if s == "auto" { Ok(SizeSpec::Auto) } else { parse_bytes(s).map(SizeSpec::Fixed) }
}

/// Parses a size: a number of bytes, or a number with a binary suffix `K`/`KiB`, `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB` (all powers of 1024). Decimal-looking suffixes such as `MB` are refused as ambiguous.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512M, 8GiB)"))?;
    let shift = match suffix {
        "" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(format!("{s:?}: unknown size suffix {suffix:?} (use K, M, G, T or KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn stable_flags_parse() {
        let cli = Cli::try_parse_from([
            "kiln",
            "build",
            "--system",
            "/nix/store/x",
            "--output",
            "out.img",
            "--profile",
            "amazon",
            "--store-dir",
            "/s",
            "--closure-info",
            "/ci",
            "--format",
            "raw.zst",
            "--layout",
            "legacy+gpt",
            "--bootloader",
            "systemd-boot",
            "--size",
            "auto",
            "--extra-space",
            "512M",
            "--seed",
            "s",
            "--threads",
            "2",
            "--kernel-param",
            "a=1",
            "--kernel-param",
            "b",
            "--progress",
            "json",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else { panic!("not build") };
        assert_eq!(b.format, Some(Format::RawZst));
        assert_eq!(b.layout, Some(Layout::LegacyGpt));
        assert_eq!(b.size, Some(SizeSpec::Auto));
        assert_eq!(b.extra_space, Some(512 << 20));
        assert_eq!(b.kernel_params, ["a=1", "b"]);
        assert!(Cli::try_parse_from(["kiln", "build", "--system", "/x", "--dry-run"]).is_ok());
        assert!(Cli::try_parse_from(["kiln", "build", "--system", "/x"]).is_err(), "--output required");
        assert!(Cli::try_parse_from(["kiln", "build", "--system", "/x", "--dry-run", "--threads", "0"]).is_err());
        assert!(Cli::try_parse_from(["kiln", "inspect", "img", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["kiln", "verify", "img", "--system", "/t", "--store-dir", "/d"]).is_ok());
    }

    #[test]
    fn profiles_subcommand_parses() {
        let parse = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Profiles(p)) => Ok(p),
            Ok(other) => panic!("not profiles: {other:?}"),
            Err(e) => Err(e.kind()),
        };
        let list = parse(&["kiln", "profiles"]).unwrap();
        assert!(list.command.is_none() && !list.json);
        assert!(parse(&["kiln", "profiles", "--json"]).unwrap().json);
        let show = parse(&["kiln", "profiles", "show", "amazon"]).unwrap();
        assert!(matches!(show.command, Some(ProfilesCommand::Show { ref profile }) if profile == "amazon"));
        assert!(!show.json);
        let show = parse(&["kiln", "profiles", "show", "./mine.toml", "--json"]).unwrap();
        assert!(matches!(show.command, Some(ProfilesCommand::Show { ref profile }) if profile == "./mine.toml"));
        assert!(show.json, "--json after the subcommand");
        assert!(parse(&["kiln", "profiles", "--json", "show", "gce"]).unwrap().json, "--json before it");
        assert_eq!(parse(&["kiln", "profiles", "show"]).unwrap_err(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(parse(&["kiln", "profiles", "list"]).unwrap_err(), clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn value_enums_and_serde_agree() {
        for f in Format::value_variants() {
            let name = f.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(serde_json::to_value(f).unwrap(), serde_json::Value::String(name));
        }
        for l in Layout::value_variants() {
            let name = l.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(serde_json::to_value(l).unwrap(), serde_json::Value::String(name));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        assert!(parse_bytes("1MB").is_err());
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("99999999999999T").is_err());
    }
}
