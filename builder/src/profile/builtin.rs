//! The built-in profiles: `images/*.toml` at the top of the repository, embedded in the binary.

/// One built-in profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    /// The name `--profile` takes.
    pub name: &'static str,
    /// The file's text.
    pub text: &'static str,
}

impl Builtin {
    /// The file it comes from, as errors name it: `images/<name>.toml`.
    #[must_use]
    pub fn file(&self) -> String {
        format!("images/{}.toml", self.name)
    }
}

macro_rules! builtins {
    ($($name:literal),* $(,)?) => {
        /// Every built-in profile, in the order `kiln profiles` lists them.
        pub const BUILTINS: &[Builtin] =
            &[$(Builtin { name: $name, text: include_str!(concat!("../../../images/", $name, ".toml")) }),*];
    };
}

builtins!["amazon", "gce", "azure", "openstack", "qemu-efi", "qemu-bios", "usb-hybrid", "metal-efi"];

/// The built-in profile called `name`.
#[must_use]
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The built-ins' names, comma-separated, for error messages.
#[must_use]
pub fn names() -> String {
    BUILTINS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}
