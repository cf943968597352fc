//! The one error type of this crate.

/// Why a command line, a parameter or a limit check was rejected.
///
/// Every variant that concerns a parameter carries the parameter's text as written (`param`) and the
/// byte offset of the offending byte (`offset`). Offsets count from the start of the string that was
/// being parsed: the whole command line for [`Cmdline::parse`](crate::Cmdline::parse) (the joined line
/// for [`Cmdline::from_args`](crate::Cmdline::from_args)), the single parameter for
/// [`Param::parse`](crate::Param::parse) and [`Param::new`](crate::Param::new), and the rendered command
/// line for [`Cmdline::validate`](crate::Cmdline::validate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A control byte (0x00–0x1f or 0x7f) inside a parameter. Tab, newline, vertical tab, form feed and
    /// carriage return separate parameters (the kernel's `isspace`), but only outside double quotes;
    /// inside quotes, and every other control byte anywhere, is rejected: bootloader configuration
    /// files are line based and the kernel stops reading at NUL.
    #[error("control byte {byte:#04x} at byte {offset} in kernel parameter {param:?}")]
    ControlChar {
        /// Byte offset of the control byte.
        offset: usize,
        /// The parameter containing it.
        param: String,
        /// The control byte itself.
        byte: u8,
    },

    /// A character whose UTF-8 encoding contains byte 0xa0 outside double quotes. The kernel's
    /// `isspace` treats 0xa0 (Latin-1 no-break space) as whitespace, so it would split the parameter
    /// in the middle of the character.
    #[error(
        "{ch:?} at byte {offset} in kernel parameter {param:?} is encoded with byte 0xa0, which the \
         kernel treats as a space outside double quotes; quote the value or the whole parameter"
    )]
    SpaceByte {
        /// Byte offset of the first byte of the character.
        offset: usize,
        /// The parameter containing it.
        param: String,
        /// The character.
        ch: char,
    },

    /// A double quote that is never closed: the kernel would swallow the rest of the line, separators
    /// included, into this parameter.
    #[error("unbalanced double quote at byte {offset} in kernel parameter {param:?}")]
    UnbalancedQuote {
        /// Byte offset of the quote that opens the unterminated part.
        offset: usize,
        /// The parameter, up to the end of the input.
        param: String,
    },

    /// A double quote somewhere the kernel does not strip it. Only `"key=value"` (whole parameter)
    /// and `key="value"` (whole value) are accepted; in `a"b c"` or `key="a"b` the kernel would keep
    /// some quotes in the name or the value.
    #[error(
        "double quote at byte {offset} in kernel parameter {param:?}: the kernel strips quotes only \
         around a whole parameter (\"key=value\") or a whole value (key=\"value\")"
    )]
    MisplacedQuote {
        /// Byte offset of the quote.
        offset: usize,
        /// The parameter containing it.
        param: String,
    },

    /// A parameter with an empty name: `=value`, `""` or `"=value"`.
    #[error("empty name in kernel parameter {param:?} at byte {offset}")]
    EmptyKey {
        /// Byte offset of the parameter.
        offset: usize,
        /// The parameter.
        param: String,
    },

    /// [`Param::new`](crate::Param::new) was given a name containing `=`; the first `=` ends the name,
    /// so the parameter would not read back as given.
    #[error("'=' at byte {offset} in the name of kernel parameter {param:?}")]
    EqualsInKey {
        /// Byte offset of the `=` within the parameter.
        offset: usize,
        /// The parameter as it would have been written.
        param: String,
    },

    /// `"--"` in double quotes. The kernel strips the quotes and then treats it as the `--` that
    /// ends kernel parameters, which is never what quoting was meant to achieve.
    #[error(
        "quoted {param} at byte {offset}: the kernel strips the quotes and ends its parameters \
         there; write -- unquoted to start init arguments"
    )]
    QuotedSeparator {
        /// Byte offset of the opening quote.
        offset: usize,
        /// The token, `"--"`.
        param: String,
    },

    /// `--` where a single parameter was expected ([`Param::parse`](crate::Param::parse),
    /// [`Param::new`](crate::Param::new)). On a command line it separates kernel parameters from
    /// init arguments; use [`Cmdline::set_init_args`](crate::Cmdline::set_init_args) for those.
    #[error("{param} at byte {offset} separates kernel parameters from init arguments; it is not a parameter")]
    Separator {
        /// Byte offset of the `--`.
        offset: usize,
        /// The token, `--`.
        param: String,
    },

    /// A string that should hold exactly one parameter holds none or several.
    #[error("expected exactly one kernel parameter, found {count} in {input:?}")]
    NotOneParam {
        /// The text given.
        input: String,
        /// How many parameters it holds.
        count: usize,
    },

    /// A parameter that must have a non-empty value has `key=` (see
    /// [`REQUIRES_VALUE`](crate::REQUIRES_VALUE)).
    #[error("kernel parameter {param:?} at byte {offset} needs a non-empty value")]
    EmptyValue {
        /// Byte offset of the parameter in the rendered command line.
        offset: usize,
        /// The parameter.
        param: String,
    },

    /// The rendered command line does not fit in the kernel's `COMMAND_LINE_SIZE` buffer, which also
    /// holds the terminating NUL. Longer lines are truncated silently by the kernel.
    #[error(
        "kernel command line is {len} bytes; at most {max} fit (COMMAND_LINE_SIZE {size} includes \
         the terminating NUL)",
        size = max + 1
    )]
    TooLong {
        /// Length of the rendered command line in bytes, without a terminating NUL.
        len: usize,
        /// The most bytes that fit: `COMMAND_LINE_SIZE - 1`.
        max: usize,
    },
}
