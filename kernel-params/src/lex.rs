//! Splitting text into parameters the way the kernel's `next_arg()` (lib/cmdline.c) does, and checking
//! each piece against the rules this crate accepts.
//!
//! The kernel's rules, restated:
//!
//! * Parameters are separated by runs of `isspace` bytes: space, `\t`, `\n`, `\v`, `\f`, `\r` and,
//!   because the kernel's ctype table is Latin-1, 0xa0.
//! * A double quote toggles "inside quotes"; separators inside quotes do not split. A parameter that
//!   starts with a quote is inside quotes from its first byte.
//! * The name ends at the first `=` (an `=` as the very first byte does not count: `=x` is a name).
//! * If the value starts with a quote, that quote is dropped and so is a quote at the very end of the
//!   parameter. If the whole parameter started with a quote, a quote at the very end is dropped too.
//!   No other quote is ever removed, and a quote can never be escaped.
//! * A parameter that is exactly `--` after quote stripping, with no `=`, ends the kernel's parameters;
//!   what follows goes to init.
//!
//! This crate accepts the subset where stripping gives back exactly what was meant, and rejects the
//! rest with an [`Error`] naming the parameter and byte offset.

use crate::error::Error;
use crate::param::{Param, Quoting};

/// The ASCII part of the kernel's `isspace`. Byte 0xa0 is the non-ASCII rest; it only occurs inside
/// multi-byte UTF-8 characters and is handled in [`classify`].
pub(crate) const fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// One parameter's text as the kernel would delimit it, with its offset in the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token<'a> {
    pub(crate) text: &'a str,
    pub(crate) offset: usize,
}

/// What a token turned out to be.
#[derive(Debug)]
pub(crate) enum Lexeme {
    /// A kernel parameter.
    Param(Param),
    /// The unquoted `--` that ends kernel parameters.
    Separator,
}

/// Splits `s` into tokens at separators outside double quotes. `base` is added to every offset.
pub(crate) fn tokenize(s: &str, base: usize) -> Result<Vec<Token<'_>>, Error> {
    let bytes = s.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && is_separator(bytes[i]) {
            i += 1;
        }
        if i == bytes.len() {
            return Ok(tokens);
        }
        let start = i;
        let mut in_quote = false;
        let mut opened = start;
        while i < bytes.len() {
            let b = bytes[i];
            if !in_quote && is_separator(b) {
                break;
            }
            if b == b'"' {
                in_quote = !in_quote;
                if in_quote {
                    opened = i;
                }
            }
            i += 1;
        }
        if in_quote {
            return Err(Error::UnbalancedQuote { offset: base + opened, param: s[start..].to_owned() });
        }
        // `i` is at an ASCII separator or the end, so both slice ends are char boundaries.
        tokens.push(Token { text: &s[start..i], offset: base + start });
    }
}

/// Checks one token and turns it into a [`Param`] or the `--` separator.
pub(crate) fn classify(token: Token<'_>) -> Result<Lexeme, Error> {
    let Token { text, offset } = token;
    let bytes = text.as_bytes();
    let param = || text.to_owned();

    let mut in_quote = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' {
            in_quote = !in_quote;
        } else if b < 0x20 || b == 0x7f {
            return Err(Error::ControlChar { offset: offset + i, param: param(), byte: b });
        } else if b == 0xa0 && !in_quote {
            let start = char_start(text, i);
            return Err(Error::SpaceByte {
                offset: offset + start,
                param: param(),
                ch: text[start..].chars().next().unwrap_or('\u{a0}'),
            });
        }
    }
    if in_quote {
        // `tokenize` never hands out such a token; keep the check so `classify` stands on its own.
        return Err(Error::UnbalancedQuote { offset, param: param() });
    }

    if text == "--" {
        return Ok(Lexeme::Separator);
    }
    let misplaced = |at: usize| Error::MisplacedQuote { offset: offset + at, param: param() };
    let last = bytes.len().saturating_sub(1);
    let (quoting, eq) = if bytes.first() == Some(&b'"') {
        // "key" or "key=value": no other quote but the closing one at the very end.
        if let Some(at) = find_quote(bytes, 1, last) {
            return Err(misplaced(at));
        }
        if last == 0 || bytes[last] != b'"' {
            return Err(Error::UnbalancedQuote { offset, param: param() });
        }
        let inner = &text[1..last];
        if inner == "--" {
            return Err(Error::QuotedSeparator { offset, param: param() });
        }
        (Quoting::Whole, inner.find('=').map(|e| e + 1))
    } else if let Some(quote) = text.find('"') {
        // key="value": the quote right after the first '=' and one at the very end, nothing else.
        match text.find('=') {
            Some(eq) if quote == eq + 1 => {
                if let Some(at) = find_quote(bytes, quote + 1, last) {
                    return Err(misplaced(at));
                }
                if last <= quote {
                    return Err(Error::UnbalancedQuote { offset: offset + quote, param: param() });
                }
                (Quoting::Value, Some(eq))
            }
            _ => return Err(misplaced(quote)),
        }
    } else {
        (Quoting::Bare, text.find('='))
    };

    let p = Param::from_lexer(text.to_owned(), quoting, eq);
    if p.key().is_empty() {
        return Err(Error::EmptyKey { offset, param: param() });
    }
    Ok(Lexeme::Param(p))
}

/// Position of the first `"` in `bytes[from..to]`.
fn find_quote(bytes: &[u8], from: usize, to: usize) -> Option<usize> {
    bytes.get(from..to)?.iter().position(|&b| b == b'"').map(|i| i + from)
}

/// The start of the character that contains byte `i`.
fn char_start(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a token should classify as.
    #[derive(Debug)]
    enum Want {
        Param(&'static str, Option<&'static str>, Quoting),
        Sep,
        Err(Error),
    }

    struct Case {
        name: &'static str,
        input: &'static str,
        want: Want,
    }

    fn err_param(input: &str) -> String {
        input.to_owned()
    }

    #[test]
    fn classify_table() {
        use Quoting::{Bare, Value, Whole};
        let cases = [
            Case { name: "flag", input: "quiet", want: Want::Param("quiet", None, Bare) },
            Case { name: "key value", input: "root=/dev/vda1", want: Want::Param("root", Some("/dev/vda1"), Bare) },
            Case {
                name: "value with equals",
                input: "root=PARTUUID=ab-cd",
                want: Want::Param("root", Some("PARTUUID=ab-cd"), Bare),
            },
            Case { name: "empty value", input: "init=", want: Want::Param("init", Some(""), Bare) },
            Case { name: "quoted value", input: "opts=\"a b\"", want: Want::Param("opts", Some("a b"), Value) },
            Case { name: "quoted empty value", input: "opts=\"\"", want: Want::Param("opts", Some(""), Value) },
            Case {
                name: "quoted value with equals",
                input: "k=\"a=b c\"",
                want: Want::Param("k", Some("a=b c"), Value),
            },
            Case { name: "whole quoted", input: "\"key=a b\"", want: Want::Param("key", Some("a b"), Whole) },
            Case { name: "whole quoted flag", input: "\"a b\"", want: Want::Param("a b", None, Whole) },
            Case { name: "whole quoted empty value", input: "\"key=\"", want: Want::Param("key", Some(""), Whole) },
            Case {
                name: "quoted 0xa0 char",
                input: "k=\"caf\u{e0}\"",
                want: Want::Param("k", Some("caf\u{e0}"), Value),
            },
            Case { name: "utf-8 without 0xa0", input: "k=caf\u{e9}", want: Want::Param("k", Some("caf\u{e9}"), Bare) },
            Case { name: "separator", input: "--", want: Want::Sep },
            Case { name: "dashes with value are a param", input: "--=x", want: Want::Param("--", Some("x"), Bare) },
            Case {
                name: "quoted separator",
                input: "\"--\"",
                want: Want::Err(Error::QuotedSeparator { offset: 0, param: err_param("\"--\"") }),
            },
            Case {
                name: "quote inside name",
                input: "a\"b\"",
                want: Want::Err(Error::MisplacedQuote { offset: 1, param: err_param("a\"b\"") }),
            },
            Case {
                name: "quote in middle of value",
                input: "k=a\"b c\"",
                want: Want::Err(Error::MisplacedQuote { offset: 3, param: err_param("k=a\"b c\"") }),
            },
            Case {
                name: "text after quoted value",
                input: "k=\"a\"b",
                want: Want::Err(Error::MisplacedQuote { offset: 4, param: err_param("k=\"a\"b") }),
            },
            Case {
                name: "quote closes before end of whole-quoted",
                input: "\"key\"=v",
                want: Want::Err(Error::MisplacedQuote { offset: 4, param: err_param("\"key\"=v") }),
            },
            Case {
                name: "extra quotes in whole-quoted",
                input: "\"k=\"v\"\"",
                want: Want::Err(Error::MisplacedQuote { offset: 3, param: err_param("\"k=\"v\"\"") }),
            },
            Case {
                name: "empty name",
                input: "=x",
                want: Want::Err(Error::EmptyKey { offset: 0, param: err_param("=x") }),
            },
            Case {
                name: "empty quoted",
                input: "\"\"",
                want: Want::Err(Error::EmptyKey { offset: 0, param: err_param("\"\"") }),
            },
            Case {
                name: "nul",
                input: "a\0b",
                want: Want::Err(Error::ControlChar { offset: 1, param: err_param("a\0b"), byte: 0 }),
            },
            Case {
                name: "unquoted 0xa0 char",
                input: "k=\u{e0}",
                want: Want::Err(Error::SpaceByte { offset: 2, param: err_param("k=\u{e0}"), ch: '\u{e0}' }),
            },
            Case {
                name: "unquoted no-break space",
                input: "a\u{a0}b",
                want: Want::Err(Error::SpaceByte { offset: 1, param: err_param("a\u{a0}b"), ch: '\u{a0}' }),
            },
        ];
        for case in cases {
            let token = Token { text: case.input, offset: 0 };
            match (classify(token), &case.want) {
                (Ok(Lexeme::Param(p)), Want::Param(key, value, quoting)) => assert_eq!(
                    (p.key(), p.value(), p.quoting(), p.raw()),
                    (*key, *value, *quoting, case.input),
                    "{}",
                    case.name
                ),
                (Ok(Lexeme::Separator), Want::Sep) => {}
                (Err(got), Want::Err(want)) => assert_eq!(&got, want, "{}", case.name),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
            }
        }
    }

    #[test]
    fn tokenize_table() {
        struct Case {
            name: &'static str,
            input: &'static str,
            want: Result<Vec<(&'static str, usize)>, Error>,
        }
        let cases = [
            Case { name: "empty", input: "", want: Ok(vec![]) },
            Case { name: "only separators", input: " \t\n\r\x0b\x0c ", want: Ok(vec![]) },
            Case { name: "runs of separators", input: "  a\tb\n\nc ", want: Ok(vec![("a", 2), ("b", 4), ("c", 7)]) },
            Case {
                name: "quotes keep spaces",
                input: "k=\"a b\" \"c d\" e",
                want: Ok(vec![("k=\"a b\"", 0), ("\"c d\"", 8), ("e", 14)]),
            },
            Case {
                name: "quote in the middle still groups",
                input: "a\"b c\"d e",
                want: Ok(vec![("a\"b c\"d", 0), ("e", 8)]),
            },
            Case {
                name: "unbalanced swallows the rest",
                input: "x k=\"a b c",
                want: Err(Error::UnbalancedQuote { offset: 4, param: "k=\"a b c".to_owned() }),
            },
        ];
        for case in cases {
            let got = tokenize(case.input, 0).map(|ts| ts.iter().map(|t| (t.text, t.offset)).collect::<Vec<_>>());
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn offsets_include_base() {
        let err = tokenize("a \"b", 100).unwrap_err();
        assert_eq!(err, Error::UnbalancedQuote { offset: 102, param: "\"b".to_owned() });
    }
}
