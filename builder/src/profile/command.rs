//! `kiln profiles`: lists the built-in profiles, or shows one with its `extends` chain resolved.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{BUILTINS, Profile};
use crate::cli::{ProfilesArgs, ProfilesCommand};

/// The `v` of `kiln profiles --json`; raised when a field changes meaning or goes away.
pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct ListEntry<'a> {
    name: &'a str,
    description: String,
    file: String,
}

#[derive(Serialize)]
struct Json<'a, T: Serialize> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// Runs `kiln profiles`.
///
/// # Errors
/// A profile that does not load, or stdout closed.
pub fn command(args: ProfilesArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match args.command {
        None => {
            let list = BUILTINS
                .iter()
                .map(|b| {
                    let p = Profile::load(b.name)?;
                    Ok(ListEntry { name: b.name, description: p.description.unwrap_or_default(), file: b.file() })
                })
                .collect::<Result<Vec<_>>>()?;
            if args.json {
                #[derive(Serialize)]
                struct Body<'a> {
                    profiles: &'a [ListEntry<'a>],
                }
                let json = Json { v: VERSION, kind: "profiles", body: &Body { profiles: &list } };
                writeln!(out, "{}", serde_json::to_string(&json).context("serialising the list")?)?;
            } else {
                let width = list.iter().map(|e| e.name.len()).max().unwrap_or(0);
                for e in &list {
                    writeln!(out, "{:<width$}  {}", e.name, e.description)?;
                }
            }
        }
        Some(ProfilesCommand::Show { profile: name }) => {
            let profile = Profile::load(&name)?;
            let files: Vec<&str> = profile.files().iter().map(|f| &**f).collect();
            if args.json {
                #[derive(Serialize)]
                struct Body<'a> {
                    name: &'a str,
                    files: &'a [&'a str],
                    profile: &'a Profile,
                }
                let json =
                    Json { v: VERSION, kind: "profile", body: &Body { name: &name, files: &files, profile: &profile } };
                writeln!(out, "{}", serde_json::to_string(&json).context("serialising the profile")?)?;
            } else {
                writeln!(out, "# kiln profile {name}, resolved from {}", files.join(", "))?;
                let text = profile.to_toml()?;
                write!(out, "{text}")?;
                if !text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
    }
    out.flush().context("writing to stdout")
}
