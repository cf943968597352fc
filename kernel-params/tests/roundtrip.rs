//! Property tests: rendering and parsing are inverse, and what this crate parses is what the kernel
//! would see, checked against an independent model of the kernel's `next_arg()`/`parse_args()`.

use kernel_params::{Changes, Cmdline, Param, Removal};
use proptest::prelude::*;

/// An independent model of how the kernel splits a command line, written from the documented
/// behaviour of `next_arg()` (lib/cmdline.c) and `parse_args()` (kernel/params.c). It works on bytes
/// and C-string semantics (a NUL written into the buffer ends a string), as the kernel does.
mod kernel {
    /// A parameter name and its value, as the kernel hands them over.
    pub type Arg = (Vec<u8>, Option<Vec<u8>>);
    pub type Parsed = Vec<Arg>;

    /// The kernel's `isspace`: its ctype table is Latin-1, so 0xa0 counts.
    fn isspace(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
    }

    fn skip_spaces(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|&&b| isspace(b)).count();
        &s[n..]
    }

    /// The bytes of `buf` from `start` up to the first NUL.
    fn c_str(buf: &[u8], start: usize) -> Vec<u8> {
        buf[start..].iter().take_while(|&&b| b != 0).copied().collect()
    }

    /// One parameter from the start of `args` (not at a space); returns it and the rest.
    fn next_arg(args: &[u8]) -> (Arg, &[u8]) {
        let quoted = args.first() == Some(&b'"');
        let body = if quoted { &args[1..] } else { args };
        let mut in_quote = quoted;
        let mut equals = 0;
        let mut i = 0;
        while i < body.len() && body[i] != 0 {
            if isspace(body[i]) && !in_quote {
                break;
            }
            if equals == 0 && body[i] == b'=' {
                equals = i;
            }
            if body[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let mut buf = body[..i].to_vec();
        let mut value_start = None;
        if equals != 0 {
            buf[equals] = 0;
            let mut v = equals + 1;
            if v < i && buf[v] == b'"' {
                v += 1;
                if buf[i - 1] == b'"' {
                    buf[i - 1] = 0;
                }
            }
            value_start = Some(v);
        }
        if quoted && i > 0 && buf[i - 1] == b'"' {
            buf[i - 1] = 0;
        }
        let param = c_str(&buf, 0);
        let value = value_start.map(|v| c_str(&buf, v));
        let rest = if i < body.len() { &body[i + 1..] } else { &body[i..] };
        ((param, value), skip_spaces(rest))
    }

    /// Kernel parameters up to a `--`, and the text after it if there is one.
    pub fn parse_args(line: &[u8]) -> (Parsed, Option<Vec<u8>>) {
        let line = &line[..line.iter().position(|&b| b == 0).unwrap_or(line.len())];
        let mut args = skip_spaces(line);
        let mut params = Vec::new();
        while !args.is_empty() {
            let (param, rest) = next_arg(args);
            if param.1.is_none() && param.0 == b"--" {
                return (params, Some(rest.to_vec()));
            }
            params.push(param);
            args = rest;
        }
        (params, None)
    }

    /// Every token, `--` included, as the kernel's splitting sees it.
    pub fn split_all(line: &[u8]) -> Parsed {
        let mut args = skip_spaces(line);
        let mut out = Vec::new();
        while !args.is_empty() {
            let (param, rest) = next_arg(args);
            out.push(param);
            args = rest;
        }
        out
    }
}

/// Checks everything that must hold for a command line that parsed.
fn check_parsed(input: &str, c: &Cmdline) -> Result<(), TestCaseError> {
    // The kernel's view agrees with ours.
    let (params, init) = kernel::parse_args(input.as_bytes());
    let ours: kernel::Parsed =
        c.iter().map(|p| (p.key().as_bytes().to_vec(), p.value().map(|v| v.as_bytes().to_vec()))).collect();
    prop_assert_eq!(&ours, &params, "kernel view of {:?}", input);
    prop_assert_eq!(init.is_some(), c.init_args().is_some());
    if let (Some(theirs), Some(ours)) = (init, c.init_args()) {
        prop_assert_eq!(kernel::split_all(ours.as_bytes()), kernel::split_all(&theirs), "init args of {:?}", input);
    }

    // parse ∘ render is the identity, render is a fixed point.
    let rendered = c.render();
    prop_assert_eq!(rendered.len(), c.rendered_len());
    let reparsed = Cmdline::parse(&rendered);
    prop_assert_eq!(reparsed.as_ref(), Ok(c), "reparse of {:?}", rendered);
    prop_assert_eq!(reparsed.map(|r| r.render()), Ok(rendered));
    Ok(())
}

/// Pieces that stress the lexer: quotes, `=`, separators, dashes, 0xa0 bytes, control bytes.
fn fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "k", "-", "_", ".", "=", "\"", " ", "  ", "\t", "\n", "\r", "--", "à", "\u{a0}", "é", "\0", "\x01",
        "x=y", "\"q r\"", ",", "/",
    ])
}

/// A parameter name: dashes and underscores in any mix, sometimes with a space or a character
/// containing byte 0xa0 (which force whole-parameter quoting).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9._-]{1,10}",
        1 => "[a-z_-]{1,3}[ à][a-z_-]{1,3}",
    ]
    .prop_filter("-- is the separator", |k| k != "--")
}

/// A value: anything but quotes and control bytes, sometimes empty, sometimes with spaces.
fn value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        4 => "[a-zA-Z0-9.,:/=_+-]{0,12}",
        1 => "[a-z= àé-]{0,8}",
    ])
}

/// How to write a parameter: 0 as `Param::new` chooses, 1 value quoted, 2 whole quoted.
fn spelled(key: &str, value: Option<&str>, style: u8) -> String {
    let plain = match value {
        Some(v) => format!("{key}={v}"),
        None => key.to_owned(),
    };
    let bare_ok = |s: &str| !s.contains([' ', 'à']);
    match (style, value) {
        (1, Some(v)) if bare_ok(key) => format!("{key}=\"{v}\""),
        (2, _) => format!("\"{plain}\""),
        _ => Param::new(key, value).expect("generated key and value are valid").to_string(),
    }
}

fn param() -> impl Strategy<Value = Param> {
    (key(), value(), 0u8..3).prop_map(|(k, v, style)| {
        let raw = spelled(&k, v.as_deref(), style);
        let p = Param::parse(&raw).unwrap_or_else(|e| panic!("{raw:?} should parse: {e}"));
        assert_eq!((p.key(), p.value()), (k.as_str(), v.as_deref()), "{raw:?}");
        assert_eq!(p.raw(), raw);
        p
    })
}

fn cmdline() -> impl Strategy<Value = Cmdline> {
    let init_token = prop_oneof![4 => param().prop_map(|p| p.to_string()), 1 => Just("--".to_owned())];
    (prop::collection::vec(param(), 0..8), prop::option::of(prop::collection::vec(init_token, 0..4))).prop_map(
        |(params, init)| {
            let mut c: Cmdline = params.into_iter().collect();
            c.set_init_args(init.map(|t| t.join(" ")).as_deref()).expect("generated init args are valid");
            c
        },
    )
}

/// Separators the kernel accepts between parameters.
fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![" ", "  ", "\t", "\n", "\r\n", " \x0b\x0c "])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary text: never panics; whatever parses agrees with the kernel model and round-trips.
    #[test]
    fn arbitrary_text(parts in prop::collection::vec(fragment(), 0..24)) {
        let input = parts.concat();
        if let Ok(c) = Cmdline::parse(&input) {
            check_parsed(&input, &c)?;
        }
    }

    /// Valid command lines with a few fragments spliced in, to probe the edge of what is
    /// accepted: never panics; whatever parses agrees with the kernel model and round-trips.
    #[test]
    fn mutated_text(
        c in cmdline(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), fragment()), 1..4),
    ) {
        let mut input = c.render();
        for (at, piece) in edits {
            let boundaries: Vec<usize> =
                (0..=input.len()).filter(|&i| input.is_char_boundary(i)).collect();
            input.insert_str(*at.get(&boundaries), piece);
        }
        if let Ok(c) = Cmdline::parse(&input) {
            check_parsed(&input, &c)?;
        }
    }

    /// Generated command lines: parse ∘ render is the identity and the kernel agrees.
    #[test]
    fn generated_roundtrip(c in cmdline()) {
        check_parsed(&c.render(), &c)?;
    }

    /// Any whitespace between parameters parses to the same value as the normal form.
    #[test]
    fn whitespace_is_normalised(
        c in cmdline(),
        seps in prop::collection::vec(separator(), 16),
        lead in separator(),
        trail in separator(),
    ) {
        let mut tokens: Vec<String> = c.iter().map(ToString::to_string).collect();
        if let Some(init) = c.init_args() {
            tokens.push("--".to_owned());
            if !init.is_empty() {
                tokens.push(init.to_owned());
            }
        }
        let mut input = lead.to_owned();
        for (i, t) in tokens.iter().enumerate() {
            if i > 0 {
                input.push_str(seps[i % seps.len()]);
            }
            input.push_str(t);
        }
        input.push_str(trail);
        let parsed = Cmdline::parse(&input);
        prop_assert_eq!(parsed.as_ref(), Ok(&c), "{:?}", input);
    }

    /// Edits keep the invariant: the result still round-trips.
    #[test]
    fn edits_roundtrip(
        mut c in cmdline(),
        add in prop::collection::vec(param(), 0..4),
        remove in prop::collection::vec(param(), 0..3),
    ) {
        let changes = Changes {
            remove: remove
                .iter()
                .map(|p| Removal::parse(p.raw()).expect("a param is a removal"))
                .collect(),
            add: add.clone(),
        };
        c.apply(&changes);
        // Later additions may replace earlier ones of the same name, so every name is there and
        // the last addition is there as given.
        for p in &add {
            prop_assert!(c.contains(p.key()), "{} merged", p);
        }
        if let Some(last) = add.last() {
            prop_assert!(c.iter().any(|q| q == last), "{} merged last", last);
        }
        check_parsed(&c.render(), &c)?;
    }
}
