//! Whatever parses renders to text that parses back to an equal value, rendering is a fixed point,
//! and nothing panics on any input.

#![no_main]

use kernel_params::{Cmdline, DEFAULT_COMMAND_LINE_SIZE, Param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };

    // A single parameter round-trips the same way.
    if let Ok(p) = Param::parse(input) {
        let again = Param::parse(p.raw()).expect("a parsed parameter re-parses");
        assert_eq!(again, p);
        if let Ok(built) = Param::new(p.key(), p.value()) {
            assert!(built.equivalent(&p), "{built} is not {p}");
        }
    }

    let Ok(mut cmdline) = Cmdline::parse(input) else {
        return;
    };
    let rendered = cmdline.render();
    assert_eq!(rendered.len(), cmdline.rendered_len());
    let reparsed = Cmdline::parse(&rendered).unwrap_or_else(|e| panic!("{rendered:?} does not re-parse: {e}"));
    assert_eq!(reparsed, cmdline, "{input:?} -> {rendered:?}");
    assert_eq!(reparsed.render(), rendered);
    let _ = cmdline.validate(DEFAULT_COMMAND_LINE_SIZE);

    // Edits with the command line's own parameters keep the invariant.
    let params: Vec<Param> = cmdline.params().to_vec();
    for p in params.iter().rev().take(4) {
        cmdline.merge_param(p.clone());
        cmdline.remove_exact(p);
        cmdline.append_if_missing(p.clone());
    }
    let rendered = cmdline.render();
    assert_eq!(Cmdline::parse(&rendered).as_ref(), Ok(&cmdline), "after edits: {rendered:?}");
});
