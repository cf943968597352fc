//! Checks that go beyond the lexical rules: the kernel's buffer size and values that must not be empty.

use crate::cmdline::Cmdline;
use crate::error::Error;

/// `COMMAND_LINE_SIZE` on x86_64 (`arch/x86/include/asm/setup.h`): 2048 bytes including the
/// terminating NUL. The x86 boot protocol's `cmdline_size` header field reports 2047, the length
/// without the NUL. Kernels may be built with a larger value; pass it to
/// [`Cmdline::validate`] then.
pub const COMMAND_LINE_SIZE_X86_64: usize = 2048;

/// `COMMAND_LINE_SIZE` on aarch64 (`arch/arm64/include/uapi/asm/setup.h`): 2048 bytes including
/// the terminating NUL in current kernels (the first arm64 kernels used 4096).
pub const COMMAND_LINE_SIZE_AARCH64: usize = 2048;

/// `COMMAND_LINE_SIZE` on riscv64 (`arch/riscv/include/uapi/asm/setup.h` in Linux 6.12): 1024
/// bytes including the terminating NUL.
pub const COMMAND_LINE_SIZE_RISCV64: usize = 1024;

/// The size [`Cmdline::validate`] callers should use when they know nothing better: the
/// x86_64 and aarch64 value.
pub const DEFAULT_COMMAND_LINE_SIZE: usize = 2048;

/// Parameters whose value must not be empty when they have one, and why:
///
/// * `init=`: without an initramfs the kernel tries to run the empty path and panics ("Requested
///   init  failed"); NixOS's initrd reads `init=` to find stage 2 and fails the same way.
/// * `rdinit=`: the kernel cannot find the empty path in the initramfs and silently falls back to
///   mounting a root file system itself.
/// * `root=`: an empty root device name leaves the kernel (or the initrd's fstab generator)
///   without a root file system.
///
/// The flag forms (`init` without `=`) are not checked: the kernel passes those to init as
/// arguments.
pub const REQUIRES_VALUE: &[&str] = &["init", "rdinit", "root"];

impl Cmdline {
    /// Checks what parsing cannot: that the rendered line fits the kernel's `COMMAND_LINE_SIZE`
    /// buffer (`command_line_size` bytes including the terminating NUL, e.g.
    /// [`COMMAND_LINE_SIZE_X86_64`]), and that no parameter in [`REQUIRES_VALUE`] has an empty
    /// value. The lexical rules (quotes, control bytes) hold for every `Cmdline` by construction.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyValue`] with the parameter's offset in [`render`](Self::render)'s output,
    /// then [`Error::TooLong`].
    pub fn validate(&self, command_line_size: usize) -> Result<(), Error> {
        for (offset, p) in self.rendered_offsets() {
            if p.value() == Some("") && REQUIRES_VALUE.iter().any(|k| p.key_matches(k)) {
                return Err(Error::EmptyValue { offset, param: p.raw().to_owned() });
            }
        }
        let len = self.rendered_len();
        let max = command_line_size.saturating_sub(1);
        if len > max {
            return Err(Error::TooLong { len, max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        input: String,
        want: Result<(), Error>,
    }

    #[test]
    fn validate_table() {
        let long = |n: usize| format!("a={}", "x".repeat(n - 2));
        let cases = [
            Case { name: "empty line", input: String::new(), want: Ok(()) },
            Case { name: "exactly fits with the NUL", input: long(2047), want: Ok(()) },
            Case { name: "one byte over", input: long(2048), want: Err(Error::TooLong { len: 2048, max: 2047 }) },
            Case {
                name: "init args count",
                input: format!("{} -- x", long(2043)),
                want: Err(Error::TooLong { len: 2048, max: 2047 }),
            },
            Case {
                name: "empty init",
                input: "quiet init= root=/dev/vda".to_owned(),
                want: Err(Error::EmptyValue { offset: 6, param: "init=".to_owned() }),
            },
            Case {
                name: "empty quoted rdinit",
                input: "rdinit=\"\"".to_owned(),
                want: Err(Error::EmptyValue { offset: 0, param: "rdinit=\"\"".to_owned() }),
            },
            Case { name: "init flag is fine", input: "init".to_owned(), want: Ok(()) },
            Case { name: "other empty values are fine", input: "console= quiet=".to_owned(), want: Ok(()) },
        ];
        for case in cases {
            let c = Cmdline::parse(&case.input).unwrap();
            assert_eq!(c.validate(COMMAND_LINE_SIZE_X86_64), case.want, "{}", case.name);
        }
    }

    #[test]
    fn size_is_the_callers() {
        let c = Cmdline::parse(&"x".repeat(3000)).unwrap();
        assert!(c.validate(DEFAULT_COMMAND_LINE_SIZE).is_err());
        assert_eq!(c.validate(4096), Ok(()));
        assert_eq!(Cmdline::new().validate(0), Ok(()), "an empty line fits anywhere");
    }
}
