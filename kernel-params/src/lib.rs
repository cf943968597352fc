//! The Linux kernel command line as a type.
//!
//! [`Cmdline`] parses a command line with the kernel's own splitting and quoting rules into
//! [`Param`]s, keeps their order and their text exactly as written, edits through methods
//! ([`append`](Cmdline::append), [`append_if_missing`](Cmdline::append_if_missing),
//! [`remove`](Cmdline::remove), [`remove_exact`](Cmdline::remove_exact),
//! [`replace`](Cmdline::replace)), merges layers of changes taking "later wins" only where the
//! kernel does ([`merge`], [`MULTI_VALUED_KEYS`]), checks the kernel's length limit
//! ([`Cmdline::validate`]) and renders back.
//!
//! ```
//! use kernel_params::{Cmdline, Param, COMMAND_LINE_SIZE_X86_64};
//!
//! let mut cmdline: Cmdline = "root=/dev/vda1 console=tty0 quiet dyndbg=\"file a.c +p\" -- single".parse()?;
//! assert_eq!(cmdline.get("dyndbg").and_then(Param::value), Some("file a.c +p"));
//!
//! cmdline.append("console=ttyS0,115200".parse()?);
//! cmdline.remove("quiet");
//! cmdline.replace("root", Param::new("root", Some("PARTUUID=0a1b"))?);
//! assert_eq!(cmdline.get("console").and_then(Param::value), Some("ttyS0,115200"));
//! assert_eq!(cmdline.get_all("console").count(), 2);
//! assert_eq!(cmdline.init_args(), Some("single"));
//!
//! cmdline.validate(COMMAND_LINE_SIZE_X86_64)?;
//! assert_eq!(
//!     cmdline.to_string(),
//!     "root=PARTUUID=0a1b console=tty0 dyndbg=\"file a.c +p\" console=ttyS0,115200 -- single",
//! );
//! # Ok::<(), kernel_params::Error>(())
//! ```
//!
//! # The kernel's rules
//!
//! As implemented by `next_arg()` (lib/cmdline.c) and `parse_args()` (kernel/params.c):
//!
//! * Parameters are separated by runs of the kernel's `isspace` bytes: space, `\t`, `\n`, `\v`,
//!   `\f`, `\r`, and byte 0xa0 (the kernel's ctype table is Latin-1, where 0xa0 is a no-break
//!   space; in UTF-8 it occurs inside characters such as `à`).
//! * Double quotes group: `key="a b"` and `"key=a b"` are one parameter, and so is `"a b"`. The
//!   kernel strips a quote that opens the value together with one at the very end, and a quote that
//!   opens the whole parameter together with one at the very end. There is no escape for `"`.
//! * The name ends at the first `=`; `key` has no value and `key=` an empty one.
//! * `-` and `_` are the same in names ([`parameq`]); case matters.
//! * The first unquoted `--` ends the kernel's parameters; the rest goes to init.
//!
//! This crate accepts the part of that language that means what it says, and rejects the rest with
//! an [`Error`] naming the parameter and its byte offset:
//!
//! * quotes anywhere else: in `a"b c"` or `key="a"b` the kernel keeps some of the quotes
//!   ([`Error::MisplacedQuote`]);
//! * unbalanced quotes, which swallow the rest of the line ([`Error::UnbalancedQuote`]);
//! * control bytes inside a parameter: a NUL ends the command line, a newline breaks bootloader
//!   entries ([`Error::ControlChar`]);
//! * byte 0xa0 outside quotes ([`Error::SpaceByte`]);
//! * empty names (`=x`, `""`; [`Error::EmptyKey`]) and a quoted `"--"` ([`Error::QuotedSeparator`]).
//!
//! Whitespace between parameters is normalised to one space (see [`Cmdline`'s normal
//! form](Cmdline#normal-form)); everything else round-trips byte for byte.

mod cmdline;
mod error;
mod lex;
mod merge;
mod param;
mod validate;

pub use cmdline::Cmdline;
pub use error::Error;
pub use merge::{Changes, MULTI_VALUED_KEYS, Removal, is_multi_valued, merge};
pub use param::{Param, Quoting, parameq};
pub use validate::{
    COMMAND_LINE_SIZE_AARCH64, COMMAND_LINE_SIZE_RISCV64, COMMAND_LINE_SIZE_X86_64, DEFAULT_COMMAND_LINE_SIZE,
    REQUIRES_VALUE,
};
