//! `moddep.lst` and the order grub-mkimage puts modules into core.img (GRUB 2.06, `util/resolve.c`).
//!
//! Each line of `moddep.lst` is `name: dep dep …`. grub-mkimage adds the requested modules in the order given;
//! adding a module first adds its dependencies (those of the *last* line naming it, taken from the end of that
//! line backwards), then the module itself, unless it is already there. So every module follows its
//! dependencies, and the order depends on the order of the lines' words — which is why it is reproduced here
//! exactly rather than sorted.

use super::Error;

/// The longest line grub-mkimage reads whole: it reads lines with `fgets` into a 1024-byte buffer, so a longer
/// line comes apart into pieces it misreads.
const MAX_LINE: usize = 1022;

/// The dependencies listed in `moddep.lst`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModDeps {
    /// `(module, its dependencies)` per line, in file order.
    lines: Vec<(String, Vec<String>)>,
}

/// Whitespace as GRUB's `grub_isspace` sees it.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

impl ModDeps {
    /// Parses `moddep.lst`; `file` says where it is, for messages.
    ///
    /// # Errors
    ///
    /// [`Error::ModDep`] for a line without `:`, one longer than grub-mkimage reads whole, or one that is not
    /// UTF-8.
    pub fn parse(text: &[u8], file: &str) -> Result<Self, Error> {
        let mut lines = Vec::new();
        if text.is_empty() {
            return Ok(Self { lines });
        }
        // As `fgets` reads it: a final newline ends the last line rather than starting an empty one.
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            let bad = |why: String| Error::ModDep { file: file.to_owned(), line: i + 1, why };
            if line.len() > MAX_LINE {
                return Err(bad(format!("{} bytes long; grub-mkimage reads at most {MAX_LINE}", line.len())));
            }
            let line = std::str::from_utf8(line).map_err(|e| bad(format!("not UTF-8: {e}")))?;
            let (name, deps) = line.split_once(':').ok_or_else(|| bad(format!("no ':' in {line:?}")))?;
            let deps = deps.split(|c: char| c.is_ascii() && is_space(c as u8)).filter(|d| !d.is_empty());
            lines.push((name.to_owned(), deps.map(str::to_owned).collect()));
        }
        Ok(Self { lines })
    }

    /// The dependencies of `module` as grub-mkimage finds them: those of the last line naming it.
    #[must_use]
    pub fn deps(&self, module: &str) -> Option<&[String]> {
        self.lines.iter().rev().find(|(name, _)| name == module).map(|(_, deps)| deps.as_slice())
    }

    /// The modules core.img holds for the `wanted` ones, in grub-mkimage's order: each after its
    /// dependencies, each once. A name may end in `.mod`, which is dropped, as grub-mkimage does.
    ///
    /// # Errors
    ///
    /// [`Error::ModuleName`] for a name grub-mkimage would take for a path (a `/`) or that names no file, and
    /// [`Error::DependencyCycle`] for modules that depend on each other in a circle (grub-mkimage recurses until
    /// it crashes).
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Vec<String>, Error> {
        let mut added = Vec::new();
        let mut path = Vec::new();
        for name in wanted {
            self.add(module_name(name.as_ref())?, &mut added, &mut path)?;
        }
        Ok(added)
    }

    fn add(&self, name: String, added: &mut Vec<String>, path: &mut Vec<String>) -> Result<(), Error> {
        if added.contains(&name) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|p| *p == name) {
            let mut chain = path[start..].to_vec();
            chain.push(name);
            return Err(Error::DependencyCycle { chain });
        }
        let deps = self.deps(&name).unwrap_or_default();
        path.push(name);
        for dep in deps.iter().rev() {
            self.add(module_name(dep)?, added, path)?;
        }
        added.push(path.pop().expect("pushed above"));
        Ok(())
    }
}

/// A module's name as grub-mkimage takes it: without a `.mod` suffix; never a path.
fn module_name(raw: &str) -> Result<String, Error> {
    let name = raw.strip_suffix(".mod").unwrap_or(raw);
    let why = if name.is_empty() {
        Some("empty")
    } else if name.contains('/') {
        Some("a path, not a module name (modules come from GRUB's i386-pc directory only)")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::ModuleName { name: raw.to_owned(), why: why.to_owned() }),
        None => Ok(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of Debian's GRUB 2.06 `moddep.lst` for kiln's modules.
    const DEBIAN: &str = "\
fshelp:
relocator: mmap
extcmd:
echo: extcmd
priority_queue:
search_fs_uuid:
video_fb:
verifiers:
datetime:
crypto:
normal: extcmd verifiers datetime crypto boot net bufio gettext terminal
boot:
net: priority_queue datetime boot bufio
bufio:
linux: relocator verifiers normal boot video mmap vbe
test:
part_msdos:
part_gpt:
search: extcmd search_fs_uuid search_fs_file search_label
video:
mmap: boot
search_fs_file:
gettext:
terminal:
ext2: fshelp
biosdisk:
search_label:
serial: extcmd terminfo
configfile: normal
vbe: video_fb video
";

    fn resolve(text: &str, wanted: &[&str]) -> Result<Vec<String>, Error> {
        ModDeps::parse(text.as_bytes(), "moddep.lst")?.resolve(wanted)
    }

    #[test]
    fn orders_as_grub_mkimage_does() {
        struct Case {
            name: &'static str,
            text: &'static str,
            wanted: &'static [&'static str],
            want: &'static str,
        }
        let cases = [
            Case {
                name: "kiln's modules with Debian's moddep.lst (grub-mkimage -v lists them in this order)",
                text: DEBIAN,
                wanted: &crate::grub::LINUX_EXT_MODULES,
                want: "biosdisk part_gpt part_msdos fshelp ext2 search_label search_fs_file search_fs_uuid extcmd \
                       search terminal gettext bufio boot datetime priority_queue net crypto verifiers normal video \
                       video_fb vbe mmap relocator linux configfile terminfo serial echo test",
            },
            Case { name: "dependencies from the end of the line", text: "a: b c d\n", wanted: &["a"], want: "d c b a" },
            Case { name: "each once", text: "a: c\nb: c\n", wanted: &["a", "b", "a", "c"], want: "c a b" },
            Case { name: "the last line wins", text: "a: b\na: c\n", wanted: &["a"], want: "c a" },
            Case { name: ".mod is dropped", text: "a: b\n", wanted: &["a.mod", "b.mod"], want: "b a" },
            Case { name: "unlisted modules have none", text: "", wanted: &["x", "y"], want: "x y" },
            Case { name: "no final newline", text: "a: b", wanted: &["a"], want: "b a" },
            Case { name: "tabs and CRs are spaces", text: "a:\tb\x0bc \r\n", wanted: &["a"], want: "c b a" },
            Case { name: "deep chains", text: "a: b\nb: c\nc: d\n", wanted: &["a"], want: "d c b a" },
        ];
        for c in cases {
            let got = resolve(c.text, c.wanted).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(got.join(" "), c.want.split_whitespace().collect::<Vec<_>>().join(" "), "{}", c.name);
        }
    }

    #[test]
    fn refusals_say_what_and_where() {
        let err = resolve("a: b\nb: c\nc: a\n", &["x", "a"]).unwrap_err();
        assert!(matches!(&err, Error::DependencyCycle { chain } if chain.join(" ") == "a b c a"), "{err}");
        assert!(err.to_string().contains("a -> b -> c -> a"), "{err}");

        let err = resolve("a: b\n\nc:\n", &["a"]).unwrap_err();
        assert!(matches!(err, Error::ModDep { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("line 2") && err.to_string().contains("no ':'"), "{err}");

        let long = format!("a: {}\n", "b ".repeat(600));
        assert!(matches!(resolve(&long, &["a"]), Err(Error::ModDep { line: 1, .. })));

        for name in ["", "../etc/passwd", "/x", ".mod"] {
            let err = resolve("", &[name]).unwrap_err();
            assert!(matches!(err, Error::ModuleName { .. }), "{name:?}: {err}");
        }
        let err = resolve("a: ../../x\n", &["a"]).unwrap_err();
        assert!(err.to_string().contains("../../x"), "{err}");
    }
}
