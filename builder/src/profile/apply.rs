//! A profile applied to `kiln build`'s arguments: the command line always wins, the profile fills in the rest.

use anyhow::{Context, Result};
use kernel_params::Changes;

use super::validate::fits;
use super::{Grub, Output, PartitionSpec, Profile};
use crate::cli::{BuildArgs, SizeSpec};

/// What a profile gives a build besides the flags it fills in.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The profile as `--profile` named it.
    pub name: String,
    /// Changes to every boot entry's command line, applied before the user's `--remove-kernel-param` and
    /// `--kernel-param`.
    pub kernel_params: Changes,
    /// GRUB's terminal settings for grub.cfg.
    pub grub: Grub,
    /// Output metadata such as the AMI bundle's label.
    pub output: Output,
    /// The profile's custom partitions, unless `--layout` replaced them.
    pub partitions: Option<Vec<PartitionSpec>>,
}

impl Profile {
    /// Fills every option of `args` the user did not give from this profile (`name` is how `--profile` named
    /// it), and returns what the build takes from the profile besides flags.
    ///
    /// What goes together stays together: when the user gives `--layout`, the profile's partition list is
    /// dropped and its bootloader is kept only if the user's layout installs it; with a fixed `--size`, the
    /// profile's `extra-space` (which applies to `auto` only) is dropped.
    ///
    /// # Errors
    /// Kernel parameters that do not parse (a profile from [`Profile::load`] has none).
    pub fn apply(&self, name: &str, args: &mut BuildArgs) -> Result<Applied> {
        let user_layout = args.layout;
        args.layout = args.layout.or(self.layout);
        if args.bootloader.is_none() {
            args.bootloader = self.bootloader.filter(|&b| user_layout.is_none_or(|l| fits(b, l)));
        }
        args.format = args.format.or(self.format);
        args.compress = args.compress.or(self.compress);
        args.sector_size = args.sector_size.or(self.sector_size);
        args.size = args.size.or(self.size.map(|s| s.0));
        if !matches!(args.size, Some(SizeSpec::Fixed(_))) {
            args.extra_space = args.extra_space.or(self.extra_space.map(|b| b.get()));
        }
        args.esp_size = args.esp_size.or(self.esp_size.map(|b| b.get()));
        args.bmap |= self.bmap == Some(true);
        if !args.checksum && !args.no_checksum {
            match self.checksum {
                Some(true) => args.checksum = true,
                Some(false) => args.no_checksum = true,
                None => {}
            }
        }
        let kernel_params = self.kernel_params.changes().with_context(|| format!("kernel-params of profile {name}"))?;
        Ok(Applied {
            name: name.to_owned(),
            kernel_params,
            grub: self.grub.clone(),
            output: self.output.clone(),
            partitions: if user_layout.is_some() { None } else { self.partitions.clone() },
        })
    }
}

/// Loads `args.profile`, if given, and applies it to `args`.
///
/// # Errors
/// As [`Profile::load`] and [`Profile::apply`].
pub fn load_and_apply(args: &mut BuildArgs) -> Result<Option<Applied>> {
    let Some(name) = args.profile.clone() else { return Ok(None) };
    let profile = Profile::load(&name)?;
    profile.apply(&name, args).map(Some)
}
