//! A profile applied to `kiln build`'s arguments: the command line always wins, the profile fills in the rest.

use anyhow::{Context, Result};
use kernel_params::Changes;

use super::{Grub, Output, PartitionSpec, Profile};

/// What a profile gives a build besides the flags it fills in.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The profile as `--profile` named it.
    pub name: String,
    /// Changes to every boot entry's command line, applied before the user's `--remove-kernel-param` and
    /// `--kernel-param`.
    pub kernel_params: Changes,
    /// `[kernel-params.<arch>]`: changes after those, on that architecture only, by its name (`aarch64`).
    pub arch_kernel_params: std::collections::BTreeMap<String, Changes>,
    /// GRUB's terminal settings for grub.cfg.
    pub grub: Grub,
    /// Output metadata such as the AMI bundle's label.
    pub output: Output,
    /// The profile's custom partitions, unless `--layout` replaced them.
    pub partitions: Option<Vec<PartitionSpec>>,
}

impl Profile {
    /// What a build takes from this profile besides the flags it fills in (`name` is how `--profile` named it;
    /// the resolve stage merges the flags, the command line winning). When the user gives
    /// `--layout`, the profile's partition list is dropped.
    ///
    /// # Errors
    /// Kernel parameters that do not parse (a profile from [`Profile::load`] has none).
    pub fn applied(&self, name: &str, user_layout: bool) -> Result<Applied> {
        let kernel_params = self.kernel_params.changes().with_context(|| format!("kernel-params of profile {name}"))?;
        let arch_kernel_params =
            self.kernel_params.arch_changes().with_context(|| format!("kernel-params of profile {name}"))?;
        Ok(Applied {
            name: name.to_owned(),
            kernel_params,
            arch_kernel_params,
            grub: self.grub.clone(),
            output: self.output.clone(),
            partitions: if user_layout { None } else { self.partitions.clone() },
        })
    }
}
