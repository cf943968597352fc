//! Checks of a merged profile: values that may come from different files of an `extends` chain and must go
//! together. Each error names where the values were set.

use anyhow::{Result, bail};
use kiln_formats::disk::SectorSize;

use super::{Loc, Profile, Role};
use crate::boot::Boots;
use crate::cli::{Bootloader, Layout, value_name as name};

/// Whether `bootloader` is one the layout installs.
#[must_use]
pub(crate) fn fits(bootloader: Bootloader, layout: Layout) -> bool {
    Boots::of(layout).map_or(bootloader == Bootloader::None, |b| b.installs(bootloader))
}

/// Runs every check over the merged profile.
pub(super) fn check(p: &Profile) -> Result<()> {
    let at = |key: &str| p.origin(key).map_or_else(|| "?".to_owned(), Loc::to_string);
    if let (Some(_), Some(_)) = (p.layout, &p.partitions) {
        bail!(
            "{}: partitions and layout ({}) are exclusive: a partition list replaces the layout",
            at("partitions"),
            at("layout")
        );
    }
    if let (Some(b), Some(l)) = (p.bootloader, p.layout)
        && !fits(b, l)
    {
        bail!(
            "{}: bootloader {} does not fit layout {} ({}): efi and efixbootldr boot with systemd-boot, legacy and \
             legacy+gpt with grub, hybrid with both, none with none",
            at("bootloader"),
            name(b),
            name(l),
            at("layout")
        );
    }
    let has = |role: Role| p.partitions.as_ref().is_some_and(|list| list.iter().any(|x| x.role == role));
    if let (Some(b), Some(_)) = (p.bootloader, &p.partitions) {
        let need = match b {
            Bootloader::SystemdBoot => Some(Role::Esp),
            Bootloader::Grub => Some(Role::BiosBoot),
            Bootloader::None => None,
        };
        if let Some(role) = need
            && !has(role)
        {
            bail!(
                "{}: bootloader {} needs a partition with role = {:?}, and the partitions ({}) have none",
                at("bootloader"),
                name(b),
                role.name(),
                at("partitions")
            );
        }
    }
    let sector = p
        .sector_size
        .map(SectorSize::try_from)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("sector-size")))?;
    if let Some(sector) = sector {
        let bios_boot = Boots { uefi: false, bios: true, xbootldr: false };
        let needs_bios = |boots: Boots| !boots.fit_sector_size(sector);
        let bios = match (p.layout, p.bootloader) {
            (Some(l), _) if Boots::of(l).is_ok_and(needs_bios) => {
                Some(format!("layout {} ({})", name(l), at("layout")))
            }
            _ if has(Role::BiosBoot) && needs_bios(bios_boot) => {
                Some(format!("a bios-boot partition ({})", at("partitions")))
            }
            (_, Some(Bootloader::Grub)) if needs_bios(bios_boot) => {
                Some(format!("bootloader grub ({})", at("bootloader")))
            }
            _ => None,
        };
        if let Some(bios) = bios {
            bail!(
                "{}: sector-size {sector} cannot boot by BIOS, as {bios} does: GRUB's BIOS boot needs 512",
                at("sector-size")
            );
        }
    }
    Ok(())
}
