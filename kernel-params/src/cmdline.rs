//! A whole command line: kernel parameters in order, then optional init arguments after `--`.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::lex::{self, Lexeme};
use crate::param::Param;

/// A kernel command line: parameters in order, and the init arguments after `--` if there is one.
///
/// # Normal form
///
/// Parsing keeps every parameter's text exactly (quotes included) but not the whitespace between
/// parameters: [`render`](Self::render) (and `Display`) joins parameters with one space, with no
/// leading or trailing whitespace. So:
///
/// * `Cmdline::parse(&c.render()) == Ok(c)` for every `Cmdline`, however it was built;
/// * `Cmdline::parse(s)?.render() == s` for every `s` that parses and is in normal form (single
///   spaces between parameters, none at either end). Any other `s` that parses renders to its normal
///   form, which the kernel reads the same way: runs of its whitespace (space, `\t`, `\n`, `\v`,
///   `\f`, `\r`) between parameters mean one separator.
///
/// Keeping the original whitespace was rejected: it would make two command lines the kernel cannot
/// tell apart compare unequal, and a trailing `\n` (as in `/proc/cmdline`) would then have to be
/// written back into bootloader entries.
///
/// # Init arguments
///
/// Everything after the first unquoted `--` belongs to init (the kernel's `parse_args()` stops there
/// and hands the rest to init as its arguments). It is kept as text, token for token; only the
/// whitespace between tokens is normalised as above. Its tokens follow the same lexical rules as
/// kernel parameters, because the kernel splits them with the same function. Note that the kernel
/// stops at a second `--` inside the init arguments too, and drops what follows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cmdline {
    params: Vec<Param>,
    /// Normalised: tokens joined by one space.
    init_args: Option<String>,
}

impl Cmdline {
    /// An empty command line.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a command line with the kernel's rules (see the [crate docs](crate#the-kernels-rules)).
    ///
    /// # Errors
    ///
    /// [`Error::ControlChar`], [`Error::SpaceByte`], [`Error::UnbalancedQuote`],
    /// [`Error::MisplacedQuote`], [`Error::EmptyKey`], [`Error::QuotedSeparator`]; each names the
    /// parameter and the byte offset in `s`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let tokens = lex::tokenize(s, 0)?;
        let mut cmdline = Self::new();
        let mut rest = tokens.iter();
        for &token in rest.by_ref() {
            match lex::classify(token)? {
                Lexeme::Param(p) => cmdline.params.push(p),
                Lexeme::Separator => {
                    cmdline.init_args = Some(init_args_text(rest.as_slice())?);
                    break;
                }
            }
        }
        Ok(cmdline)
    }

    /// Parses a list of strings joined with spaces, the way NixOS turns bootspec `kernelParams`
    /// (`boot.kernelParams`) into a command line. An element holding several parameters or `--`
    /// therefore means what it would on the joined line.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse); offsets count in the joined line.
    pub fn from_args<I, S>(args: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut line = String::new();
        for arg in args {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(arg.as_ref());
        }
        Self::parse(&line)
    }

    /// The kernel parameters, in order (init arguments excluded).
    #[must_use]
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Iterates over the kernel parameters in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Param> {
        self.params.iter()
    }

    /// The init arguments: `None` without `--`, `Some("")` for a trailing `--`.
    #[must_use]
    pub fn init_args(&self) -> Option<&str> {
        self.init_args.as_deref()
    }

    /// Sets or clears the init arguments. `Some("")` renders a bare trailing `--`.
    ///
    /// # Errors
    ///
    /// The lexical errors of [`parse`](Self::parse), with offsets in `args`.
    pub fn set_init_args(&mut self, args: Option<&str>) -> Result<(), Error> {
        self.init_args = match args {
            None => None,
            Some(a) => Some(init_args_text(&lex::tokenize(a, 0)?)?),
        };
        Ok(())
    }

    /// The last parameter named `key` (`-` and `_` alike), which is the one the kernel uses for
    /// most parameters: `__setup()` handlers and module parameters simply run again and overwrite.
    /// For parameters that accumulate, such as `console=`, use [`get_all`](Self::get_all).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Param> {
        self.params.iter().rev().find(|p| p.key_matches(key))
    }

    /// Every parameter named `key` (`-` and `_` alike), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Param> + 'a {
        self.params.iter().filter(move |p| p.key_matches(key))
    }

    /// Whether any parameter is named `key` (`-` and `_` alike).
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        self.params.iter().any(|p| p.key_matches(key))
    }

    /// Appends `param` at the end of the kernel parameters (before `--`), whatever is already
    /// there.
    pub fn append(&mut self, param: Param) {
        self.params.push(param);
    }

    /// Appends `param` unless an [`equivalent`](Param::equivalent) one is already present: same
    /// name under [`parameq`](crate::parameq), same value after quote stripping, and flag only matching flag. So
    /// with `console=tty0` present, `console=ttyS0` is appended and `console=tty0` is not; with
    /// `quiet` present, `quiet=1` is appended. Returns whether it appended.
    pub fn append_if_missing(&mut self, param: Param) -> bool {
        if self.params.iter().any(|p| p.equivalent(&param)) {
            return false;
        }
        self.params.push(param);
        true
    }

    /// Removes every parameter named `key` (`-` and `_` alike), whatever its value. Returns how
    /// many were removed.
    pub fn remove(&mut self, key: &str) -> usize {
        let before = self.params.len();
        self.params.retain(|p| !p.key_matches(key));
        before - self.params.len()
    }

    /// Removes every parameter [`equivalent`](Param::equivalent) to `param` (same name under
    /// [`parameq`](crate::parameq), same unquoted value; a flag only removes the flag). Returns how many were
    /// removed.
    pub fn remove_exact(&mut self, param: &Param) -> usize {
        let before = self.params.len();
        self.params.retain(|p| !p.equivalent(param));
        before - self.params.len()
    }

    /// Puts `new` in place of the first parameter named `key` (`-` and `_` alike) and removes the
    /// later ones, so `new` is the only one left. If there is none, appends `new`. Returns whether
    /// a parameter was replaced.
    ///
    /// `new` may have a different name; parameters already named like `new` are left alone.
    pub fn replace(&mut self, key: &str, new: Param) -> bool {
        let Some(first) = self.params.iter().position(|p| p.key_matches(key)) else {
            self.params.push(new);
            return false;
        };
        self.params[first] = new;
        let mut index = 0;
        self.params.retain(|p| {
            let keep = index <= first || !p.key_matches(key);
            index += 1;
            keep
        });
        true
    }

    /// The command line as text, in normal form (see [the type docs](Self#normal-form)).
    #[must_use]
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// Byte offsets of the parameters in [`render`](Self::render)'s output.
    pub(crate) fn rendered_offsets(&self) -> impl Iterator<Item = (usize, &Param)> {
        self.params.iter().scan(0, |offset, p| {
            let at = *offset;
            *offset += p.raw().len() + 1;
            Some((at, p))
        })
    }

    /// Length in bytes of [`render`](Self::render)'s output, without building it.
    #[must_use]
    pub fn rendered_len(&self) -> usize {
        let params: usize =
            self.params.iter().map(|p| p.raw().len()).sum::<usize>() + self.params.len().saturating_sub(1);
        match &self.init_args {
            None => params,
            Some(args) => {
                let sep = if self.params.is_empty() { 2 } else { 3 };
                let args = if args.is_empty() { 0 } else { args.len() + 1 };
                params + sep + args
            }
        }
    }
}

/// Checks the init-argument tokens and joins them with one space.
fn init_args_text(tokens: &[lex::Token<'_>]) -> Result<String, Error> {
    let mut text = String::new();
    for &token in tokens {
        // Same lexical rules; a `--` here is just text to us (the kernel would stop at it).
        lex::classify(token)?;
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(token.text);
    }
    Ok(text)
}

impl FromStr for Cmdline {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for p in &self.params {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(p.raw())?;
        }
        if let Some(args) = &self.init_args {
            f.write_str(if first { "--" } else { " --" })?;
            if !args.is_empty() {
                write!(f, " {args}")?;
            }
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Cmdline {
    type Item = &'a Param;
    type IntoIter = std::slice::Iter<'a, Param>;

    fn into_iter(self) -> Self::IntoIter {
        self.params.iter()
    }
}

impl FromIterator<Param> for Cmdline {
    fn from_iter<I: IntoIterator<Item = Param>>(iter: I) -> Self {
        Self { params: iter.into_iter().collect(), init_args: None }
    }
}

impl Extend<Param> for Cmdline {
    fn extend<I: IntoIterator<Item = Param>>(&mut self, iter: I) {
        self.params.extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse → (params as raw text, init args, rendering).
    struct Case {
        name: &'static str,
        input: &'static str,
        want: Result<(Vec<&'static str>, Option<&'static str>, &'static str), Error>,
    }

    #[test]
    fn parse_table() {
        let cases = [
            Case { name: "empty", input: "", want: Ok((vec![], None, "")) },
            Case {
                name: "typical",
                input: "init=/nix/store/abc-nixos-system/init console=ttyS0,115200 quiet loglevel=4",
                want: Ok((
                    vec!["init=/nix/store/abc-nixos-system/init", "console=ttyS0,115200", "quiet", "loglevel=4"],
                    None,
                    "init=/nix/store/abc-nixos-system/init console=ttyS0,115200 quiet loglevel=4",
                )),
            },
            Case {
                name: "whitespace normalised",
                input: "\t quiet \n\n splash\r\n",
                want: Ok((vec!["quiet", "splash"], None, "quiet splash")),
            },
            Case {
                name: "all three quote forms",
                input: "\"a b\" k=\"c d\" \"e=f g\"",
                want: Ok((vec!["\"a b\"", "k=\"c d\"", "\"e=f g\""], None, "\"a b\" k=\"c d\" \"e=f g\"")),
            },
            Case {
                name: "init args",
                input: "quiet -- single  \"x y\" --foo",
                want: Ok((vec!["quiet"], Some("single \"x y\" --foo"), "quiet -- single \"x y\" --foo")),
            },
            Case { name: "trailing separator", input: "quiet --", want: Ok((vec!["quiet"], Some(""), "quiet --")) },
            Case { name: "only separator", input: " -- ", want: Ok((vec![], Some(""), "--")) },
            Case {
                name: "second separator is init text",
                input: "a -- b -- c",
                want: Ok((vec!["a"], Some("b -- c"), "a -- b -- c")),
            },
            Case {
                name: "separator glued to text is a param",
                input: "--x --=y",
                want: Ok((vec!["--x", "--=y"], None, "--x --=y")),
            },
            Case {
                name: "dashes and underscores kept as written",
                input: "nvme-core.default_ps_max_latency_us=0",
                want: Ok((
                    vec!["nvme-core.default_ps_max_latency_us=0"],
                    None,
                    "nvme-core.default_ps_max_latency_us=0",
                )),
            },
            Case {
                name: "error offset counts from line start",
                input: "quiet root=\"/dev/a\"b",
                want: Err(Error::MisplacedQuote { offset: 18, param: "root=\"/dev/a\"b".to_owned() }),
            },
            Case {
                name: "newline inside quotes",
                input: "a k=\"x\ny\"",
                want: Err(Error::ControlChar { offset: 6, param: "k=\"x\ny\"".to_owned(), byte: b'\n' }),
            },
            Case {
                name: "unbalanced quote",
                input: "quiet k=\"a b",
                want: Err(Error::UnbalancedQuote { offset: 8, param: "k=\"a b".to_owned() }),
            },
            Case {
                name: "error in init args",
                input: "a -- \"--\"",
                want: Err(Error::QuotedSeparator { offset: 5, param: "\"--\"".to_owned() }),
            },
            Case {
                name: "nul ends nothing silently",
                input: "a\0",
                want: Err(Error::ControlChar { offset: 1, param: "a\0".to_owned(), byte: 0 }),
            },
        ];
        for case in cases {
            let got = Cmdline::parse(case.input).map(|c| {
                let rendered = c.render();
                assert_eq!(c.rendered_len(), rendered.len(), "{}: rendered_len", case.name);
                assert_eq!(Cmdline::parse(&rendered).as_ref(), Ok(&c), "{}: reparse", case.name);
                (c.iter().map(|p| p.raw().to_owned()).collect::<Vec<_>>(), c.init_args().map(str::to_owned), rendered)
            });
            let want = case.want.clone().map(|(params, init, rendered)| {
                (
                    params.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    init.map(str::to_owned),
                    rendered.to_owned(),
                )
            });
            assert_eq!(got, want, "{}", case.name);
        }
    }

    fn cmd(s: &str) -> Cmdline {
        Cmdline::parse(s).unwrap()
    }

    fn param(s: &str) -> Param {
        Param::parse(s).unwrap()
    }

    /// An edit applied to `input`, then the rendering wanted.
    struct EditCase {
        name: &'static str,
        input: &'static str,
        edit: fn(&mut Cmdline) -> usize,
        want: (&'static str, usize),
    }

    #[test]
    fn edit_table() {
        let cases = [
            EditCase {
                name: "append keeps init args last",
                input: "quiet -- single",
                edit: |c| {
                    c.append(param("console=ttyS0"));
                    0
                },
                want: ("quiet console=ttyS0 -- single", 0),
            },
            EditCase {
                name: "append_if_missing skips equivalent",
                input: "console=tty0 a-b=\"x\"",
                edit: |c| {
                    usize::from(c.append_if_missing(param("console=tty0")))
                        + usize::from(c.append_if_missing(param("a_b=x")))
                },
                want: ("console=tty0 a-b=\"x\"", 0),
            },
            EditCase {
                name: "append_if_missing adds another value",
                input: "console=tty0",
                edit: |c| usize::from(c.append_if_missing(param("console=ttyS0"))),
                want: ("console=tty0 console=ttyS0", 1),
            },
            EditCase {
                name: "append_if_missing: flag and empty value differ",
                input: "quiet",
                edit: |c| usize::from(c.append_if_missing(param("quiet="))),
                want: ("quiet quiet=", 1),
            },
            EditCase {
                name: "remove all occurrences, either spelling",
                input: "a_b=1 quiet a-b=2 a_b",
                edit: |c| c.remove("a-b"),
                want: ("quiet", 3),
            },
            EditCase { name: "remove missing", input: "quiet", edit: |c| c.remove("splash"), want: ("quiet", 0) },
            EditCase {
                name: "remove_exact only that value",
                input: "console=tty0 console=ttyS0 console=\"ttyS0\"",
                edit: |c| c.remove_exact(&param("console=ttyS0")),
                want: ("console=tty0", 2),
            },
            EditCase {
                name: "remove_exact flag leaves values",
                input: "rd.break rd.break=pre-mount",
                edit: |c| c.remove_exact(&param("rd.break")),
                want: ("rd.break=pre-mount", 1),
            },
            EditCase {
                name: "replace first in place, drop later",
                input: "loglevel=7 quiet log_level=3 splash loglevel=4",
                edit: |c| usize::from(c.replace("loglevel", param("loglevel=0"))),
                want: ("loglevel=0 quiet log_level=3 splash", 1),
            },
            EditCase {
                name: "replace matches either dash spelling",
                input: "a-b=1 x a_b=2",
                edit: |c| usize::from(c.replace("a_b", param("a_b=3"))),
                want: ("a_b=3 x", 1),
            },
            EditCase {
                name: "replace missing appends",
                input: "quiet -- x",
                edit: |c| usize::from(c.replace("root", param("root=/dev/vda"))),
                want: ("quiet root=/dev/vda -- x", 0),
            },
            EditCase {
                name: "replace with another name",
                input: "rhgb quiet",
                edit: |c| usize::from(c.replace("rhgb", param("splash"))),
                want: ("splash quiet", 1),
            },
        ];
        for case in cases {
            let mut c = cmd(case.input);
            let n = (case.edit)(&mut c);
            assert_eq!((c.render().as_str(), n), case.want, "{}", case.name);
        }
    }

    #[test]
    fn get_takes_last() {
        let c = cmd("console=tty0 loglevel=7 console=ttyS0 log-level=3");
        assert_eq!(c.get("console").and_then(Param::value), Some("ttyS0"));
        assert_eq!(c.get("log_level").map(Param::raw), Some("log-level=3"));
        assert_eq!(c.get("loglevel").map(Param::raw), Some("loglevel=7"));
        assert_eq!(c.get_all("console").map(Param::raw).collect::<Vec<_>>(), ["console=tty0", "console=ttyS0"]);
        assert!(c.contains("console") && !c.contains("quiet"));
        assert_eq!(c.get("quiet"), None);
    }

    #[test]
    fn init_args_roundtrip() {
        let mut c = cmd("quiet");
        c.set_init_args(Some("  emergency   \"a b\" ")).unwrap();
        assert_eq!(c.render(), "quiet -- emergency \"a b\"");
        c.set_init_args(Some("")).unwrap();
        assert_eq!(c.render(), "quiet --");
        c.set_init_args(None).unwrap();
        assert_eq!(c.render(), "quiet");
        assert_eq!(
            c.set_init_args(Some("a\tb \"c")),
            Err(Error::UnbalancedQuote { offset: 4, param: "\"c".to_owned() })
        );
    }

    #[test]
    fn from_args_joins_like_nixos() {
        let c = Cmdline::from_args(["loglevel=4", "quiet splash", "", "--", "single"]).unwrap();
        assert_eq!(c.render(), "loglevel=4 quiet splash -- single");
        assert_eq!(c.params().len(), 3);
        assert_eq!(
            Cmdline::from_args(["a", "k=\"x"]),
            Err(Error::UnbalancedQuote { offset: 4, param: "k=\"x".to_owned() })
        );
    }

    #[test]
    fn collect_and_extend() {
        let mut c: Cmdline = ["a", "b=c"].into_iter().map(param).collect();
        c.extend([param("d")]);
        assert_eq!(c.render(), "a b=c d");
        assert_eq!((&c).into_iter().count(), 3);
    }
}
