//! Merging a base command line with layers of additions and removals, taking "later wins" only
//! where the kernel does.

use std::fmt;
use std::str::FromStr;

use crate::cmdline::Cmdline;
use crate::error::Error;
use crate::param::{Param, parameq};

/// Parameters that may legitimately appear several times, each occurrence adding to the effect
/// rather than overriding the previous one. [`Cmdline::merge_param`] appends these and never
/// replaces them. Names are compared with [`parameq`] (`-` and `_` alike).
///
/// Kernel (`__setup`/`early_param` handlers that accumulate):
///
/// * `console`: every occurrence registers a console; the last one becomes `/dev/console`.
/// * `memmap`, `reserve`: every occurrence adds a memory region.
/// * `hugepagesz`, `hugepages`: pairs read in order (`hugepagesz=1G hugepages=4 hugepagesz=2M
///   hugepages=512`); `hugepages` applies to the `hugepagesz` before it, so order and repetition
///   both matter.
/// * `crashkernel`: `crashkernel=X,high` and `crashkernel=Y,low` are read side by side.
/// * `video`: one per connector (`video=HDMI-A-1:1920x1080 video=DP-1:d`).
/// * `acpi_osi`: every occurrence adds or removes one `_OSI` string.
/// * `initcall_blacklist`: every occurrence adds to the list.
/// * `pci`: every occurrence applies its comma-separated options on top of the earlier ones.
/// * `dyndbg` (and `<module>.dyndbg`): every occurrence applies one more query.
///
/// Userspace that reads `/proc/cmdline` and accumulates:
///
/// * `modprobe.blacklist` (kmod): every occurrence adds modules. Unlike `module_blacklist`, the
///   kernel's own module parameter, which keeps only the last value and is single-valued here.
/// * `ip`, `nameserver`, `rd.route`, `ifname`, `vlan`, `bond`, `bridge` (systemd-network-generator,
///   dracut): one per interface, server or route.
/// * `systemd.setenv`, `systemd.mask`, `rd.systemd.mask`, `systemd.wants`, `rd.systemd.wants`,
///   `systemd.mount-extra`, `rd.systemd.mount-extra`, `systemd.swap-extra`,
///   `rd.systemd.swap-extra`, `systemd.set_credential`, `systemd.set_credential_binary` (systemd):
///   one per variable, unit, mount or credential.
/// * `luks.uuid`, `rd.luks.uuid`, `luks.name`, `rd.luks.name`, `luks.options`, `rd.luks.options`,
///   `luks.key`, `rd.luks.key` (systemd-cryptsetup-generator): one per encrypted volume.
///
/// Everything else is single-valued: the kernel runs the handler again or overwrites the module
/// parameter, so the last occurrence wins. A few handlers keep the *first* occurrence instead
/// (`earlycon` ignores later ones once a console is set up); replacing in place makes an
/// addition take effect there too.
pub const MULTI_VALUED_KEYS: &[&str] = &[
    "console",
    "memmap",
    "reserve",
    "hugepagesz",
    "hugepages",
    "crashkernel",
    "video",
    "acpi_osi",
    "initcall_blacklist",
    "pci",
    "dyndbg",
    "modprobe.blacklist",
    "ip",
    "nameserver",
    "rd.route",
    "ifname",
    "vlan",
    "bond",
    "bridge",
    "systemd.setenv",
    "systemd.mask",
    "rd.systemd.mask",
    "systemd.wants",
    "rd.systemd.wants",
    "systemd.mount-extra",
    "rd.systemd.mount-extra",
    "systemd.swap-extra",
    "rd.systemd.swap-extra",
    "systemd.set_credential",
    "systemd.set_credential_binary",
    "luks.uuid",
    "rd.luks.uuid",
    "luks.name",
    "rd.luks.name",
    "luks.options",
    "rd.luks.options",
    "luks.key",
    "rd.luks.key",
];

/// Whether `key` is in [`MULTI_VALUED_KEYS`] (compared with [`parameq`]) or is a module's
/// `<module>.dyndbg`.
#[must_use]
pub fn is_multi_valued(key: &str) -> bool {
    MULTI_VALUED_KEYS.iter().any(|k| parameq(k, key))
        || key.strip_suffix("dyndbg").is_some_and(|module| module.ends_with('.') && module.len() > 1)
}

/// What to take away from a command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Removal {
    /// Every parameter with this name (`-` and `_` alike), whatever its value: written `key`.
    Key(String),
    /// Every parameter [`equivalent`](Param::equivalent) to this one: written `key=value`.
    Exact(Param),
}

impl Removal {
    /// Parses `key` as [`Removal::Key`] and `key=value` (quotes allowed as on a command line) as
    /// [`Removal::Exact`].
    ///
    /// # Errors
    ///
    /// As [`Param::parse`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        let p = Param::parse(s)?;
        Ok(if p.is_flag() { Self::Key(p.key().to_owned()) } else { Self::Exact(p) })
    }
}

impl FromStr for Removal {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => f.write_str(k),
            Self::Exact(p) => f.write_str(p.raw()),
        }
    }
}

/// One layer of changes to a command line: a profile's, or the user's `--kernel-param` and
/// `--remove-kernel-param` values. [`Cmdline::apply`] applies the removals first, then the
/// additions, so `remove: [console]` with `add: [console=ttyS0]` leaves exactly one console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Applied first, in order.
    pub remove: Vec<Removal>,
    /// Applied second, in order, each with [`Cmdline::merge_param`].
    pub add: Vec<Param>,
}

impl Changes {
    /// Parses additions and removals given as strings, one parameter per string.
    ///
    /// # Errors
    ///
    /// The first string that is not exactly one parameter ([`Param::parse`], [`Removal::parse`]).
    pub fn parse<A, R>(add: A, remove: R) -> Result<Self, Error>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        R: IntoIterator,
        R::Item: AsRef<str>,
    {
        Ok(Self {
            remove: remove.into_iter().map(|s| Removal::parse(s.as_ref())).collect::<Result<_, _>>()?,
            add: add.into_iter().map(|s| Param::parse(s.as_ref())).collect::<Result<_, _>>()?,
        })
    }
}

impl Cmdline {
    /// Adds `param` the way a later occurrence takes effect in the kernel:
    ///
    /// * [multi-valued](is_multi_valued) names (`console`, `hugepages`, …) are appended, even when
    ///   an equal parameter is already present, because their order carries meaning (the last
    ///   `console=` is `/dev/console`; `hugepages=` pairs with the `hugepagesz=` before it);
    /// * any other name replaces the first existing occurrence in place and removes the later ones
    ///   ([`replace`](Self::replace)), or is appended if absent. This also deduplicates flags:
    ///   merging `quiet` into `quiet splash quiet` gives `quiet splash`.
    pub fn merge_param(&mut self, param: Param) {
        if is_multi_valued(param.key()) {
            self.append(param);
        } else {
            let key = param.key().to_owned();
            self.replace(&key, param);
        }
    }

    /// Applies one layer: its removals ([`remove`](Self::remove) for [`Removal::Key`],
    /// [`remove_exact`](Self::remove_exact) for [`Removal::Exact`]), then its additions with
    /// [`merge_param`](Self::merge_param). Init arguments are left alone.
    pub fn apply(&mut self, changes: &Changes) -> &mut Self {
        for removal in &changes.remove {
            match removal {
                Removal::Key(key) => self.remove(key),
                Removal::Exact(param) => self.remove_exact(param),
            };
        }
        for param in &changes.add {
            self.merge_param(param.clone());
        }
        self
    }
}

/// Builds the final command line: `base` (e.g. bootspec `kernelParams`, joined as NixOS does, see
/// [`Cmdline::from_args`]) kept as it is, then each layer [applied](Cmdline::apply) in order, e.g.
/// the profile's changes and then the user's.
///
/// ```
/// use kernel_params::{Changes, merge};
///
/// let base = ["init=/nix/store/x-nixos-system/init", "loglevel=4", "console=tty0"];
/// let profile = Changes::parse(["console=ttyS0,115200", "quiet"], ["loglevel"])?;
/// let user = Changes::parse(["loglevel=7", "quiet"], ["console=tty0"])?;
/// let cmdline = merge(base, [&profile, &user])?;
/// assert_eq!(
///     cmdline.to_string(),
///     "init=/nix/store/x-nixos-system/init console=ttyS0,115200 quiet loglevel=7",
/// );
/// # Ok::<(), kernel_params::Error>(())
/// ```
///
/// # Errors
///
/// As [`Cmdline::from_args`].
pub fn merge<'a, I, S, L>(base: I, layers: L) -> Result<Cmdline, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
    L: IntoIterator<Item = &'a Changes>,
{
    let mut cmdline = Cmdline::from_args(base)?;
    for layer in layers {
        cmdline.apply(layer);
    }
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        input: (&'static str, &'static [&'static str]),
        want: &'static str,
    }

    #[test]
    fn merge_param_table() {
        let cases = [
            Case {
                name: "single-valued replaced in place",
                input: ("loglevel=4 quiet", &["loglevel=7"]),
                want: "loglevel=7 quiet",
            },
            Case {
                name: "single-valued duplicates collapse",
                input: ("mem=1G a mem=2G b", &["mem=4G"]),
                want: "mem=4G a b",
            },
            Case { name: "flag deduplicated", input: ("quiet splash quiet", &["quiet"]), want: "quiet splash" },
            Case {
                name: "flag replaces a value of the same name",
                input: ("rd.break=pre-mount x", &["rd.break"]),
                want: "rd.break x",
            },
            Case {
                name: "dash spelling matches; new spelling wins",
                input: ("nvme_core.default_ps_max_latency_us=0", &["nvme-core.default-ps-max-latency-us=5500"]),
                want: "nvme-core.default-ps-max-latency-us=5500",
            },
            Case {
                name: "console accumulates, duplicates kept",
                input: ("console=tty0 console=ttyS0", &["console=ttyS0", "console=hvc0"]),
                want: "console=tty0 console=ttyS0 console=ttyS0 console=hvc0",
            },
            Case {
                name: "hugepages pairs keep order",
                input: ("hugepagesz=1G hugepages=4", &["hugepagesz=2M", "hugepages=4"]),
                want: "hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=4",
            },
            Case {
                name: "module dyndbg accumulates",
                input: ("i915.dyndbg=+p", &["i915.dyndbg=\"func a +p\""]),
                want: "i915.dyndbg=+p i915.dyndbg=\"func a +p\"",
            },
            Case {
                name: "absent appended before init args",
                input: ("quiet -- single", &["root=/dev/vda1"]),
                want: "quiet root=/dev/vda1 -- single",
            },
            Case {
                name: "earlycon is single",
                input: ("earlycon=uart8250,io,0x3f8 x", &["earlycon"]),
                want: "earlycon x",
            },
        ];
        for case in cases {
            let (base, adds) = case.input;
            let mut c = Cmdline::parse(base).unwrap();
            for a in adds {
                c.merge_param(Param::parse(a).unwrap());
            }
            assert_eq!(c.render(), case.want, "{}", case.name);
        }
    }

    #[test]
    fn multi_valued_names() {
        for (key, want) in [
            ("console", true),
            ("systemd.mount_extra", true),
            ("rd-luks.uuid", false),
            ("rd.luks.uuid", true),
            ("i915.dyndbg", true),
            ("dyndbg", true),
            (".dyndbg", false),
            ("xdyndbg", false),
            ("earlycon", false),
            ("module_blacklist", false),
            ("modprobe.blacklist", true),
            ("Console", false),
        ] {
            assert_eq!(is_multi_valued(key), want, "{key}");
        }
    }

    #[test]
    fn apply_removes_then_adds() {
        let mut c = Cmdline::parse("console=tty0 console=ttyS0 quiet splash rhgb").unwrap();
        let changes = Changes::parse(["console=hvc0", "loglevel=3"], ["console", "splash", "rhgb=1"]).unwrap();
        c.apply(&changes);
        assert_eq!(c.render(), "quiet rhgb console=hvc0 loglevel=3");
    }

    #[test]
    fn removal_parse() {
        assert_eq!(Removal::parse("quiet"), Ok(Removal::Key("quiet".to_owned())));
        let exact = Removal::parse("console=\"ttyS0\"").unwrap();
        assert_eq!(exact.to_string(), "console=\"ttyS0\"");
        assert!(matches!(exact, Removal::Exact(ref p) if p.value() == Some("ttyS0")));
        assert_eq!(Removal::parse("a b"), Err(Error::NotOneParam { input: "a b".to_owned(), count: 2 }));
    }

    #[test]
    fn changes_parse_reports_first_error() {
        assert_eq!(
            Changes::parse(["ok", "k=\"x"], Vec::<String>::new()),
            Err(Error::UnbalancedQuote { offset: 2, param: "k=\"x".to_owned() })
        );
    }
}
