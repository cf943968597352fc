//! One kernel parameter: `quiet`, `root=/dev/vda1`, `opts="a b"`, `"key=a b"`.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::lex::{self, Lexeme};

/// Where a parameter's double quotes are, if it has any.
///
/// The kernel strips these quotes before handing the name and value over; [`Param`] keeps them so
/// the parameter renders exactly as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quoting {
    /// No quotes: `key` or `key=value`.
    Bare,
    /// The value is quoted: `key="value"`.
    Value,
    /// The whole parameter is quoted: `"key"` or `"key=value"`.
    ///
    /// Some older kernels (linux 4.x among them) dropped the closing quote only when the parameter
    /// had an `=`; a quoted `"key"` without a value reached them as `key"`.
    Whole,
}

/// One kernel parameter: a name and, after the first `=`, an optional value.
///
/// A `Param` keeps its text exactly as written, quotes included ([`raw`](Self::raw)), and gives the
/// kernel's view of it: [`key`](Self::key) and [`value`](Self::value) with the quotes stripped.
/// `key` (no `=`) has no value; `key=` has an empty one; the kernel tells them apart and so does
/// this type.
///
/// Every `Param` renders to text that parses back to an equal `Param`: the constructors reject what
/// the kernel would read differently (see [`Param::new`] and [`Param::parse`]).
///
/// Equality (`==`) compares the text as written, so `k="v"` and `k=v` differ; use
/// [`equivalent`](Self::equivalent) to compare the way the kernel sees them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Param {
    /// The text as written.
    raw: String,
    quoting: Quoting,
    /// Byte index in `raw` of the `=` ending the name.
    eq: Option<usize>,
}

impl Param {
    /// Builds a parameter from the kernel's view of it, adding double quotes where needed.
    ///
    /// A name containing a space (or a character encoded with byte 0xa0, which the kernel counts
    /// as a space) quotes the whole parameter (`"a b=c"`); otherwise a value containing one quotes
    /// the value (`key="a b"`); otherwise no quotes are added.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyKey`] for an empty name, [`Error::EqualsInKey`] for a name containing `=`,
    /// [`Error::MisplacedQuote`] for a double quote anywhere (the kernel has no escape for it),
    /// [`Error::ControlChar`] for control bytes, [`Error::Separator`] for the name `--` without a
    /// value. Offsets count in `key=value`.
    pub fn new(key: &str, value: Option<&str>) -> Result<Self, Error> {
        let plain = match value {
            Some(v) => format!("{key}={v}"),
            None => key.to_owned(),
        };
        if key.is_empty() {
            return Err(Error::EmptyKey { offset: 0, param: plain });
        }
        if let Some(offset) = key.find('=') {
            return Err(Error::EqualsInKey { offset, param: plain });
        }
        if let Some((offset, &byte)) =
            plain.as_bytes().iter().enumerate().find(|&(_, &b)| b == b'"' || b < 0x20 || b == 0x7f)
        {
            return Err(if byte == b'"' {
                Error::MisplacedQuote { offset, param: plain }
            } else {
                Error::ControlChar { offset, param: plain, byte }
            });
        }
        if value.is_none() && key == "--" {
            return Err(Error::Separator { offset: 0, param: plain });
        }

        let needs_quotes = |s: &str| s.bytes().any(|b| b == b' ' || b == 0xa0);
        let quoting = if needs_quotes(key) {
            Quoting::Whole
        } else if value.is_some_and(needs_quotes) {
            Quoting::Value
        } else {
            Quoting::Bare
        };
        let (raw, eq) = match (quoting, value) {
            (Quoting::Whole, _) => (format!("\"{plain}\""), value.map(|_| key.len() + 1)),
            (Quoting::Value, Some(v)) => (format!("{key}=\"{v}\""), Some(key.len())),
            _ => (plain, value.map(|_| key.len())),
        };
        Ok(Self { raw, quoting, eq })
    }

    /// Parses exactly one parameter, as written on a command line. Surrounding whitespace is
    /// ignored; the text is kept otherwise, quotes included.
    ///
    /// # Errors
    ///
    /// Any lexical [`Error`] (see [`Cmdline::parse`](crate::Cmdline::parse)),
    /// [`Error::Separator`] for `--`, [`Error::NotOneParam`] for empty input or several
    /// parameters.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let tokens = lex::tokenize(s, 0)?;
        let [token] = tokens[..] else {
            return Err(Error::NotOneParam { input: s.to_owned(), count: tokens.len() });
        };
        match lex::classify(token)? {
            Lexeme::Param(p) => Ok(p),
            Lexeme::Separator => Err(Error::Separator { offset: token.offset, param: token.text.to_owned() }),
        }
    }

    /// Used by the lexer, which has already checked `raw`.
    pub(crate) fn from_lexer(raw: String, quoting: Quoting, eq: Option<usize>) -> Self {
        Self { raw, quoting, eq }
    }

    /// The name as the kernel sees it, quotes stripped, spelled as written (`-` and `_` are not
    /// normalised; compare with [`key_matches`](Self::key_matches)).
    #[must_use]
    pub fn key(&self) -> &str {
        match (self.quoting, self.eq) {
            (Quoting::Whole, Some(eq)) => &self.raw[1..eq],
            (Quoting::Whole, None) => &self.raw[1..self.raw.len() - 1],
            (_, Some(eq)) => &self.raw[..eq],
            (_, None) => &self.raw,
        }
    }

    /// The value as the kernel sees it, quotes stripped: `None` for `key`, `Some("")` for `key=`.
    #[must_use]
    pub fn value(&self) -> Option<&str> {
        let eq = self.eq?;
        let end = self.raw.len();
        Some(match self.quoting {
            Quoting::Bare => &self.raw[eq + 1..],
            Quoting::Value => &self.raw[eq + 2..end - 1],
            Quoting::Whole => &self.raw[eq + 1..end - 1],
        })
    }

    /// The parameter exactly as written, quotes included.
    #[must_use]
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Where the quotes are.
    #[must_use]
    pub fn quoting(&self) -> Quoting {
        self.quoting
    }

    /// Whether the parameter has no `=` at all (`quiet`, not `quiet=`).
    #[must_use]
    pub fn is_flag(&self) -> bool {
        self.eq.is_none()
    }

    /// Whether this parameter's name is `key`, treating `-` and `_` as the same (the kernel's
    /// `parameq`).
    #[must_use]
    pub fn key_matches(&self, key: &str) -> bool {
        parameq(self.key(), key)
    }

    /// Whether the kernel sees the two parameters as the same setting: names equal under
    /// [`parameq`], values equal after quote stripping, and both flags or both with a value.
    #[must_use]
    pub fn equivalent(&self, other: &Self) -> bool {
        self.key_matches(other.key()) && self.value() == other.value()
    }
}

impl FromStr for Param {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl AsRef<str> for Param {
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

/// Compares parameter names the way the kernel's `parameq()` does: byte for byte, except that `-`
/// and `_` are the same. Case matters.
///
/// ```
/// assert!(kernel_params::parameq("nvme_core.default_ps_max_latency_us", "nvme-core.default-ps-max-latency-us"));
/// assert!(!kernel_params::parameq("Quiet", "quiet"));
/// ```
#[must_use]
pub fn parameq(a: &str, b: &str) -> bool {
    let norm = |c: u8| if c == b'-' { b'_' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        input: (&'static str, Option<&'static str>),
        want: Result<&'static str, Error>,
    }

    #[test]
    fn new_table() {
        let cases = [
            Case { name: "flag", input: ("quiet", None), want: Ok("quiet") },
            Case { name: "value", input: ("console", Some("ttyS0,115200n8")), want: Ok("console=ttyS0,115200n8") },
            Case { name: "empty value", input: ("init", Some("")), want: Ok("init=") },
            Case {
                name: "space in value",
                input: ("dyndbg", Some("file foo.c +p")),
                want: Ok("dyndbg=\"file foo.c +p\""),
            },
            Case { name: "space in key", input: ("a b", Some("c d")), want: Ok("\"a b=c d\"") },
            Case { name: "space in flag", input: ("a b", None), want: Ok("\"a b\"") },
            Case { name: "0xa0 in value", input: ("k", Some("\u{e0}")), want: Ok("k=\"\u{e0}\"") },
            Case { name: "dashes with value", input: ("--", Some("")), want: Ok("--=") },
            Case {
                name: "separator",
                input: ("--", None),
                want: Err(Error::Separator { offset: 0, param: "--".to_owned() }),
            },
            Case {
                name: "empty key",
                input: ("", Some("x")),
                want: Err(Error::EmptyKey { offset: 0, param: "=x".to_owned() }),
            },
            Case {
                name: "equals in key",
                input: ("a=b", Some("c")),
                want: Err(Error::EqualsInKey { offset: 1, param: "a=b=c".to_owned() }),
            },
            Case {
                name: "quote in value",
                input: ("k", Some("a\"b")),
                want: Err(Error::MisplacedQuote { offset: 3, param: "k=a\"b".to_owned() }),
            },
            Case {
                name: "quote in key",
                input: ("\"k\"", None),
                want: Err(Error::MisplacedQuote { offset: 0, param: "\"k\"".to_owned() }),
            },
            Case {
                name: "newline in value",
                input: ("k", Some("a\nb")),
                want: Err(Error::ControlChar { offset: 3, param: "k=a\nb".to_owned(), byte: b'\n' }),
            },
        ];
        for case in cases {
            let (key, value) = case.input;
            let got = Param::new(key, value);
            match (&got, &case.want) {
                (Ok(p), Ok(raw)) => {
                    assert_eq!(p.raw(), *raw, "{}", case.name);
                    assert_eq!((p.key(), p.value()), (key, value), "{}", case.name);
                    assert_eq!(&Param::parse(raw).unwrap(), p, "{}: reparse", case.name);
                }
                (Err(got), Err(want)) => assert_eq!(got, want, "{}", case.name),
                _ => panic!("{}: got {got:?}, want {:?}", case.name, case.want),
            }
        }
    }

    #[test]
    fn parse_one() {
        assert_eq!(Param::parse("  quiet \n").unwrap().raw(), "quiet");
        assert_eq!(Param::parse("a b"), Err(Error::NotOneParam { input: "a b".to_owned(), count: 2 }));
        assert_eq!(Param::parse(" "), Err(Error::NotOneParam { input: " ".to_owned(), count: 0 }));
        assert_eq!(Param::parse(" --"), Err(Error::Separator { offset: 1, param: "--".to_owned() }));
    }

    #[test]
    fn parameq_table() {
        struct Case {
            name: &'static str,
            input: (&'static str, &'static str),
            want: bool,
        }
        let cases = [
            Case { name: "equal", input: ("quiet", "quiet"), want: true },
            Case {
                name: "dash vs underscore",
                input: ("rd.systemd.mount-extra", "rd.systemd.mount_extra"),
                want: true,
            },
            Case { name: "case matters", input: ("Quiet", "quiet"), want: false },
            Case { name: "prefix is not equal", input: ("console", "consoleblank"), want: false },
            Case { name: "dot is not dash", input: ("a.b", "a-b"), want: false },
        ];
        for case in cases {
            let (a, b) = case.input;
            assert_eq!(parameq(a, b), case.want, "{}", case.name);
            assert_eq!(parameq(b, a), case.want, "{} (swapped)", case.name);
        }
    }

    #[test]
    fn equivalent_ignores_quotes_and_dash_spelling() {
        let a = Param::parse("a-b=\"x\"").unwrap();
        let b = Param::parse("a_b=x").unwrap();
        let flag = Param::parse("a_b").unwrap();
        let empty = Param::parse("a_b=").unwrap();
        assert!(a.equivalent(&b));
        assert_ne!(a, b, "== compares the text as written");
        assert!(!b.equivalent(&flag));
        assert!(!flag.equivalent(&empty));
        assert!(flag.is_flag() && !empty.is_flag());
    }
}
