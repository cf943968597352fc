//! Reading a filesystem through `debugfs` (e2fsprogs), in a few processes per tree.
//!
//! How names get through: debugfs splits a command line at spaces and tabs, `"` quotes, and `""` inside
//! quotes is one `"`; every other byte (newline and non-UTF-8 included) passes through as is. A path is
//! therefore sent once, quoted, with `-R` ([`quote`]; `-f` command files are read with `fgets` and would
//! cut it at a newline). Everything else addresses inodes by number, `<N>`, so the bulk commands in `-f`
//! files are plain ASCII. Names come back from `ls -l`, which escapes every byte outside `0x20..0x7f`
//! and the backslash itself as `\xNN`, so its lines can be split at newlines and decoded exactly.
//!
//! debugfs exits 0 even when a command fails; it reports on stderr, so any stderr line other than its
//! version banner is an error here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::host::join_rel;
use super::{InodeInfo, device_spec, show};
use crate::tools;

/// A filesystem as debugfs opens it (read-only).
pub(super) struct Debugfs {
    bin: PathBuf,
    device: OsString,
}

impl Debugfs {
    pub(super) fn new(image: &Path, offset: u64) -> Debugfs {
        Debugfs { bin: tools::require("debugfs", "e2fsprogs"), device: device_spec(image, offset) }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        // debugfs pipes long output through a pager when stdout is a terminal.
        cmd.env("DEBUGFS_PAGER", "__none__").env("PAGER", "__none__").stdin(Stdio::null());
        cmd
    }

    /// Runs one request (`-R`, not echoed) and returns its stdout.
    fn request(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let out = tools::run(self.command().arg("-R").arg(OsString::from_vec(request.to_vec())).arg(&self.device));
        check_stderr(&out.stderr, &format!("debugfs -R {:?}", show(request)), out.status.success())?;
        Ok(out.stdout)
    }

    /// Runs many commands from a `-f` file (each echoed as `debugfs: <command>` before its output) and
    /// returns stdout.
    fn batch(&self, commands: &[String]) -> Result<Vec<u8>, String> {
        let file = command_file(commands)?;
        let out = tools::run(self.command().arg("-f").arg(file.path()).arg(&self.device));
        check_stderr(&out.stderr, &batch_name(commands), out.status.success())?;
        Ok(out.stdout)
    }
}

fn batch_name(commands: &[String]) -> String {
    format!("debugfs -f with {} commands ({}, …)", commands.len(), commands.first().map_or("", String::as_str))
}

fn command_file(commands: &[String]) -> Result<tempfile::NamedTempFile, String> {
    let mut file = tempfile::NamedTempFile::new().map_err(|e| format!("creating a debugfs command file: {e}"))?;
    let mut text = String::new();
    for c in commands {
        assert!(!c.contains(['\n', '\r']), "debugfs command with a line break: {c:?}");
        text.push_str(c);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(|e| format!("writing a debugfs command file: {e}"))?;
    Ok(file)
}

/// Err unless stderr holds nothing but the version banner (`debugfs 1.47.0 (5-Feb-2023)`).
fn check_stderr(stderr: &[u8], what: &str, exit_ok: bool) -> Result<(), String> {
    let text = String::from_utf8_lossy(stderr);
    let banner = |l: &str| l.starts_with("debugfs ") && l.ends_with(')');
    let complaints: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !banner(l)).collect();
    if complaints.is_empty() && exit_ok { Ok(()) } else { Err(format!("{what} failed (exit ok: {exit_ok}):\n{text}")) }
}

/// `arg` as one debugfs argument: in double quotes, with `"` doubled.
pub(super) fn quote(arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'"');
    for &b in arg {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// The inode at `path_in_fs` (absolute, any bytes but NUL), from `debugfs -R 'stat "<path>"'`.
/// Symlinks in the last component are not followed; those in earlier components are.
pub fn inode_info(image: &Path, offset: u64, path_in_fs: &[u8]) -> Result<InodeInfo, String> {
    Debugfs::new(image, offset).stat_path(path_in_fs)
}

impl Debugfs {
    pub(super) fn stat_path(&self, path: &[u8]) -> Result<InodeInfo, String> {
        // An absolute path also keeps debugfs from reading a name like `<12>` as an inode number.
        if !path.starts_with(b"/") || path.contains(&0) {
            return Err(format!("{}: not an absolute path without NUL", show(path)));
        }
        let mut request = b"stat ".to_vec();
        request.extend(quote(path));
        let out = self.request(&request)?;
        parse_stat(&out).map_err(|e| format!("stat {}: {e}", show(path)))
    }

    /// `stat <N>` for every inode in `inos`, in one process.
    pub(super) fn stat_many(&self, inos: &[u32]) -> Result<HashMap<u32, InodeInfo>, String> {
        if inos.is_empty() {
            return Ok(HashMap::new());
        }
        let commands: Vec<String> = inos.iter().map(|i| format!("stat <{i}>")).collect();
        let out = self.batch(&commands)?;
        let mut infos = HashMap::new();
        for (&ino, block) in inos.iter().zip(echoed_blocks(&out, &commands)?) {
            let info = parse_stat(block).map_err(|e| format!("stat <{ino}>: {e}"))?;
            if info.ino != ino {
                return Err(format!("stat <{ino}> printed inode {}", info.ino));
            }
            infos.insert(ino, info);
        }
        match inos.iter().find(|i| !infos.contains_key(i)) {
            Some(missing) => Err(format!("debugfs printed no stat for inode {missing}")),
            None => Ok(infos),
        }
    }
}

/// Splits `-f` output into the output of each command, found by its echo line `debugfs: <command>`,
/// searched in order (so bytes a command prints, like a fast symlink's raw target, would have to repeat the
/// *next* echo line exactly to mislead it).
fn echoed_blocks<'a>(out: &'a [u8], commands: &[String]) -> Result<Vec<&'a [u8]>, String> {
    let mut marks = Vec::with_capacity(commands.len());
    let mut pos = 0;
    for c in commands {
        let echo = format!("debugfs: {c}\n");
        let at = if pos == 0 {
            out.starts_with(echo.as_bytes()).then_some(0)
        } else {
            let needle = format!("\n{echo}");
            out[pos - 1..].windows(needle.len()).position(|w| w == needle.as_bytes()).map(|i| pos + i)
        };
        let at = at.ok_or_else(|| format!("debugfs output lacks the echo of {c:?}"))?;
        marks.push((at, at + echo.len()));
        pos = at + echo.len();
    }
    let ends = marks.iter().skip(1).map(|m| m.0).chain([out.len()]);
    Ok(marks.iter().zip(ends).map(|(m, end)| &out[m.1..end]).collect())
}

/// Parses one `stat` output. Only the first occurrence of each field counts: a fast symlink's target is
/// printed raw at the end and could contain anything.
fn parse_stat(out: &[u8]) -> Result<InodeInfo, String> {
    let text = String::from_utf8_lossy(out);
    let first = |key: &str| text.lines().find(|l| l.trim_start().starts_with(key)).map(str::trim_start);
    let word_after = |line: &str, key: &str| -> Option<String> {
        let at = line.find(key)? + key.len();
        line[at..].split_whitespace().next().map(str::to_owned)
    };
    let bad = || format!("cannot parse debugfs stat output:\n{text}");

    let inode_line = first("Inode:").ok_or_else(bad)?;
    let ino = word_after(inode_line, "Inode:").and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let type_name = {
        let start = inode_line.find("Type:").ok_or_else(bad)? + "Type:".len();
        let end = inode_line.find("Mode:").ok_or_else(bad)?;
        inode_line.get(start..end).ok_or_else(bad)?.trim()
    };
    let type_bits = match type_name {
        "regular" => 0o100000,
        "directory" => 0o040000,
        "symlink" => 0o120000,
        "block special" => 0o060000,
        "character special" => 0o020000,
        "FIFO" => 0o010000,
        "socket" => 0o140000,
        _ => 0,
    };
    let perm = word_after(inode_line, "Mode:").and_then(|w| u32::from_str_radix(&w, 8).ok()).ok_or_else(bad)?;
    let flags = word_after(inode_line, "Flags:")
        .and_then(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .ok_or_else(bad)?;

    // `%d` of unsigned ids: values above 2^31 print negative.
    let id = |key: &str| -> Result<u32, String> {
        let line = first("User:").ok_or_else(bad)?;
        word_after(line, key).and_then(|w| w.parse::<i64>().ok()).map(|v| v as u32).ok_or_else(bad)
    };
    let (uid, gid) = (id("User:")?, id("Group:")?);
    let size = first("User:").and_then(|l| word_after(l, "Size:")).and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let links = first("Links:").and_then(|l| word_after(l, "Links:")).and_then(|w| w.parse().ok()).ok_or_else(bad)?;

    // ` mtime: 0x%08x:%08x -- …` (large inodes) or `mtime: 0x%08x -- …`.
    let mtime_field = first("mtime:").and_then(|l| word_after(l, "mtime:")).ok_or_else(bad)?;
    let (lo, extra) = match mtime_field.trim_start_matches("0x").split_once(':') {
        Some((lo, extra)) => (lo.to_owned(), u32::from_str_radix(extra, 16).map_err(|_| bad())?),
        None => (mtime_field.trim_start_matches("0x").to_owned(), 0),
    };
    let lo = u32::from_str_radix(&lo, 16).map_err(|_| bad())?;
    let mtime = i64::from(lo as i32) + (i64::from(extra & 3) << 32);

    Ok(InodeInfo { ino, links, mode: type_bits | perm, uid, gid, size, mtime, mtime_nsec: extra >> 2, flags })
}

/// One directory entry as `ls -l` prints it.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    /// Path relative to the listed root, `/` between components.
    pub rel: Vec<u8>,
    pub ino: u32,
    /// The inode's full mode.
    pub mode: u32,
    /// The file type stored in the directory entry (1 file, 2 dir, 7 symlink, …).
    pub dirent_type: u8,
}

impl Debugfs {
    /// Every entry below the directory inode `root`, breadth first: one debugfs process per level, one
    /// `ls -l <N>` per directory. A directory inode reached twice is an error (and is not descended twice,
    /// so a looping filesystem ends).
    pub(super) fn list_tree(&self, root: u32) -> Result<Vec<Listed>, String> {
        let mut all = Vec::new();
        let mut seen = HashSet::from([root]);
        let mut level: HashMap<u32, Vec<u8>> = HashMap::from([(root, Vec::new())]);
        while !level.is_empty() {
            let mut dirs: Vec<u32> = level.keys().copied().collect();
            dirs.sort_unstable();
            let commands: Vec<String> = dirs.iter().map(|d| format!("ls -l <{d}>")).collect();
            let out = self.batch(&commands)?;
            let mut next = HashMap::new();
            for (dir, block) in dirs.iter().zip(echoed_blocks(&out, &commands)?) {
                let parent = &level[dir];
                for line in block.split(|&b| b == b'\n') {
                    let Some(LsLine { ino, mode, dirent_type, name }) = parse_ls_line(line)? else { continue };
                    if name == b"." || name == b".." {
                        continue;
                    }
                    let rel = join_rel(parent, &name);
                    if mode & 0o170000 == 0o040000 {
                        if !seen.insert(ino) {
                            return Err(format!("directory inode {ino} is reachable twice (again at {})", show(&rel)));
                        }
                        next.insert(ino, rel.clone());
                    }
                    all.push(Listed { rel, ino, mode, dirent_type });
                }
            }
            level = next;
        }
        Ok(all)
    }
}

/// One `ls -l` line: `%c%6u%c %6o (%d)  %5d  %5d   %5llu dd-Mon-yyyy hh:mm name`. None for blank lines and
/// unused entries (inode 0).
fn parse_ls_line(line: &[u8]) -> Result<Option<LsLine>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let bad = || format!("cannot parse debugfs ls -l line {:?}", show(line));
    let mut pos = 0;
    let mut tokens = Vec::with_capacity(8);
    while tokens.len() < 8 {
        while pos < line.len() && line[pos] == b' ' {
            pos += 1;
        }
        let start = pos;
        while pos < line.len() && line[pos] != b' ' {
            pos += 1;
        }
        if start == pos {
            break;
        }
        tokens.push(std::str::from_utf8(&line[start..pos]).map_err(|_| bad())?);
        if tokens.len() == 1 && tokens[0] == "0" {
            return Ok(None);
        }
    }
    if tokens.len() < 8 || line.get(pos) != Some(&b' ') {
        return Err(bad());
    }
    let ino = tokens[0].parse().map_err(|_| bad())?;
    let mode = u32::from_str_radix(tokens[1], 8).map_err(|_| bad())?;
    let dirent_type =
        tokens[2].strip_prefix('(').and_then(|t| t.strip_suffix(')')).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    let name = unescape(&line[pos + 1..]).ok_or_else(bad)?;
    Ok(Some(LsLine { ino, mode, dirent_type, name }))
}

/// The fields of one `ls -l` line that matter here.
#[derive(Debug, PartialEq, Eq)]
struct LsLine {
    ino: u32,
    mode: u32,
    dirent_type: u8,
    name: Vec<u8>,
}

/// Undoes debugfs's `print_filename`: `\xNN` is one byte (a literal backslash is always escaped).
fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 4)?).ok()?;
            out.push(u8::from_str_radix(hex.strip_prefix('x')?, 16).ok()?);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Every inode under `fs_prefix` (absolute; `b"/"` for the whole filesystem), keyed by path relative to
/// it with `/` between components; the prefix directory itself is the key `b""`. One debugfs process per
/// directory level plus one for all the `stat`s, so trees of tens of thousands of entries take seconds.
/// Hard links show up as several keys with the same `ino`.
pub fn tree_inodes(image: &Path, offset: u64, fs_prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, InodeInfo>, String> {
    let Scan { root, listed, infos } = Debugfs::new(image, offset).scan(fs_prefix)?;
    let mut map = BTreeMap::from([(Vec::new(), root)]);
    for l in listed {
        map.insert(l.rel, infos[&l.ino]);
    }
    Ok(map)
}

/// A subtree as debugfs sees it.
pub(super) struct Scan {
    /// The prefix directory's inode.
    pub root: InodeInfo,
    /// Every entry below it.
    pub listed: Vec<Listed>,
    /// The `stat` of every inode listed.
    pub infos: HashMap<u32, InodeInfo>,
}

impl Debugfs {
    /// Lists the subtree at `fs_prefix` and `stat`s every inode in it.
    pub(super) fn scan(&self, fs_prefix: &[u8]) -> Result<Scan, String> {
        let root = self.stat_path(fs_prefix)?;
        if root.file_type() != InodeInfo::S_IFDIR {
            return Err(format!("{} is not a directory in the image (mode {:o})", show(fs_prefix), root.mode));
        }
        let listed = self.list_tree(root.ino)?;
        let mut inos: Vec<u32> = listed.iter().map(|l| l.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        let infos = self.stat_many(&inos)?;
        Ok(Scan { root, listed, infos })
    }

    /// The targets of the symlink inodes `inos`: `rdump <N> <dir>` writes each as a real symlink named
    /// `<N>` (rdump handles fast, slow and inline symlinks), then `readlink` gives its bytes.
    pub(super) fn symlink_targets(&self, inos: &[u32]) -> Result<HashMap<u32, Vec<u8>>, String> {
        if inos.is_empty() {
            return Ok(HashMap::new());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
        let dest = String::from_utf8(quote(dir.path().as_os_str().as_bytes()))
            .map_err(|_| format!("temporary directory {} is not UTF-8", dir.path().display()))?;
        let commands: Vec<String> = inos.iter().map(|i| format!("rdump <{i}> {dest}")).collect();
        self.batch(&commands)?;
        inos.iter()
            .map(|&i| {
                let link = dir.path().join(format!("<{i}>"));
                let target = std::fs::read_link(&link).map_err(|e| format!("readlink of rdump'd symlink {i}: {e}"))?;
                Ok((i, target.into_os_string().into_vec()))
            })
            .collect()
    }

    /// Streams the bytes of the regular-file inodes `files` (inode, size) through one `debugfs -f` of
    /// `cat <N>` commands, handing each file's bytes to `each(index, reader)`; what `each` leaves unread
    /// is skipped. Nothing touches the disk, and a 5 GiB sparse file is 5 GiB through a pipe (~3 s).
    pub(super) fn cat_files(
        &self,
        files: &[(u32, u64)],
        mut each: impl FnMut(usize, &mut dyn Read) -> Result<(), String>,
    ) -> Result<(), String> {
        if files.is_empty() {
            return Ok(());
        }
        let commands: Vec<String> = files.iter().map(|(i, _)| format!("cat <{i}>")).collect();
        let cmd_file = command_file(&commands)?;
        let stderr = tempfile::tempfile().map_err(|e| format!("creating a temporary file: {e}"))?;
        let stderr_copy = stderr.try_clone().map_err(|e| format!("duplicating a file handle: {e}"))?;
        let mut child = self
            .command()
            .arg("-f")
            .arg(cmd_file.path())
            .arg(&self.device)
            .stdout(Stdio::piped())
            .stderr(stderr_copy)
            .spawn()
            .map_err(|e| format!("cannot start debugfs: {e}"))?;
        let result = stream_cat(&mut child, files, &mut each);
        if result.is_err() {
            // Ours, by handle: stop it rather than wait for the rest of its output.
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| format!("waiting for debugfs: {e}"))?;
        let stderr_text = read_back(stderr).map_err(|e| format!("reading debugfs's stderr: {e}"))?;
        let checked = check_stderr(&stderr_text, &batch_name(&commands), status.success());
        match (result, checked) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) => Err(e),
            (_, Err(e)) => Err(e),
        }
    }
}

fn stream_cat(
    child: &mut Child,
    files: &[(u32, u64)],
    each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<(), String>,
) -> Result<(), String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = BufReader::with_capacity(1 << 16, stdout);
    let mut line = Vec::new();
    for (index, &(ino, size)) in files.iter().enumerate() {
        line.clear();
        out.read_until(b'\n', &mut line).map_err(|e| format!("reading debugfs output: {e}"))?;
        if line != format!("debugfs: cat <{ino}>\n").as_bytes() {
            return Err(format!(
                "debugfs cat output out of step before inode {ino}: got {:?} (an earlier file gave fewer bytes than \
                 its size?)",
                show(&line[..line.len().min(200)])
            ));
        }
        let mut body = (&mut out).take(size);
        each(index, &mut body)?;
        io::copy(&mut body, &mut io::sink()).map_err(|e| format!("reading debugfs output: {e}"))?;
        if body.limit() != 0 {
            return Err(format!("debugfs output ended inside inode {ino}"));
        }
    }
    let mut rest = Vec::new();
    out.take(200).read_to_end(&mut rest).map_err(|e| format!("reading debugfs output: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("debugfs printed more than the files' sizes: {:?}", show(&rest)));
    }
    Ok(())
}

fn read_back(mut file: File) -> io::Result<Vec<u8>> {
    use std::io::Seek;
    file.rewind()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Dumps the whole filesystem into the existing or new directory `dest` with `debugfs -R 'rdump / dest'`.
///
/// What rdump (e2fsprogs 1.47) preserves: names as raw bytes (non-UTF-8 fine), regular file bytes, symlink
/// targets (fast and slow); permission bits 0777 of files and directories, owner and group (when run as
/// root), atime and mtime in whole seconds. What it loses: setuid, setgid and sticky bits (its mode
/// table has only the 9 rwx bits); hard links (every name becomes its own file); symlink owner and mtime
/// (the symlink belongs to the caller, mtime now); nanoseconds; holes (a sparse file is written out in
/// full); devices, FIFOs and sockets (skipped silently); xattrs. `dest` itself gets the root directory's
/// mode, owner and times. [`compare_tree`](super::compare_tree) therefore takes metadata and link identity
/// from `ls -l`/`stat`, not from an extracted copy.
pub fn extract(image: &Path, offset: u64, dest: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut request = b"rdump / ".to_vec();
    request.extend(quote(dest.as_os_str().as_bytes()));
    Debugfs::new(image, offset).request(&request).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_doubles_quotes() {
        struct Case {
            input: &'static [u8],
            want: &'static [u8],
        }
        let cases = [
            Case { input: b"/a b", want: b"\"/a b\"" },
            Case { input: b"/a\"b", want: b"\"/a\"\"b\"" },
            Case { input: b"/\xff\n", want: b"\"/\xff\n\"" },
        ];
        for c in cases {
            assert_eq!(quote(c.input), c.want, "{:?}", show(c.input));
        }
    }

    #[test]
    fn ls_lines() {
        let line = b"     12  104755 (1)      0      0       5 24-Nov-2026 18:57  lead\\x5cing\\xff";
        let got = parse_ls_line(line).unwrap().unwrap();
        assert_eq!(got, LsLine { ino: 12, mode: 0o104755, dirent_type: 1, name: b" lead\\ing\xff".to_vec() });
        assert!(parse_ls_line(b"      0       0 (0)      0      0       0                   ").unwrap().is_none());
        assert!(parse_ls_line(b"").unwrap().is_none());
        assert!(parse_ls_line(b" 12 garbage").is_err());
    }

    #[test]
    fn stat_output() {
        let out = b"Inode: 21   Type: regular    Mode:  04644   Flags: 0x80000\n\
Generation: 0    Version: 0x00000000:00000000\n\
User: -294967296   Group:  5678   Project:     0   Size: 11\n\
File ACL: 0\n\
Links: 3   Blockcount: 8\n\
 ctime: 0x6b05de31:00000000 -- Tue Nov 24 18:57:53 2026\n\
 atime: 0x3a7b8372:00000000 -- Sat Feb  3 04:05:06 2001\n\
 mtime: 0xed300880:00000005 -- Fri Jan  1 00:00:00 1960\n\
Fast link dest: \"x\nLinks: 9\"\n";
        let info = parse_stat(out).unwrap();
        assert_eq!(
            info,
            InodeInfo {
                ino: 21,
                links: 3,
                mode: 0o104644,
                uid: 4_000_000_000,
                gid: 5678,
                size: 11,
                mtime: -315_619_200 + (1 << 32),
                mtime_nsec: 1,
                flags: 0x80000
            }
        );
    }
}
