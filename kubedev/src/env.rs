//! The app container's environment written for the workstation, in the syntax the user's
//! tools read (`--env-syntax`), and the files it goes to (`--env-file`, `--env-json`):
//! created with mode 0600, since they hold secrets.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The syntaxes `--env-syntax` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EnvSyntax {
    /// `KEY=value` lines, as `docker run --env-file` reads them (values unquoted, one line).
    #[default]
    Docker,
    /// `KEY="value"` lines for a Compose `.env` file.
    Compose,
    /// `KEY='value'` lines for a POSIX shell.
    Sh,
    /// `export KEY='value'` lines for a POSIX shell.
    #[value(name = "sh:export")]
    ShExport,
    /// `setenv KEY 'value'` lines for csh and tcsh.
    Csh,
    /// One JSON object.
    Json,
    /// `$Env:KEY='value'` lines for PowerShell.
    Ps,
    /// `set KEY=value` lines for cmd.exe.
    Cmd,
}

/// `variables` in `syntax`.
pub fn format(variables: &BTreeMap<String, String>, syntax: EnvSyntax) -> String {
    if syntax == EnvSyntax::Json {
        let mut json = serde_json::to_string_pretty(variables).unwrap_or_default();
        json.push('\n');
        return json;
    }
    let mut out = String::new();
    for (key, value) in variables {
        let line = match syntax {
            EnvSyntax::Docker => format!("{key}={}", value.replace('\n', "\\n")),
            EnvSyntax::Compose => format!("{key}={}", double_quoted(value)),
            EnvSyntax::Sh => format!("{key}={}", single_quoted(value)),
            EnvSyntax::ShExport => format!("export {key}={}", single_quoted(value)),
            EnvSyntax::Csh => format!("setenv {key} {}", single_quoted(value)),
            EnvSyntax::Ps => format!("$Env:{key}='{}'", value.replace('\'', "''")),
            EnvSyntax::Cmd => format!("set {key}={}", value.replace('\n', " ")),
            EnvSyntax::Json => unreachable!("handled above"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn single_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn double_quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct WriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes `content` to `path`, readable by this user only.
pub fn write_private(path: &Path, content: &str) -> Result<(), WriteError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            // An existing file keeps its mode on open: tighten it.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(content.as_bytes())
        });
    written.map_err(|source| WriteError {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("A".to_owned(), "it's $HOME".to_owned()),
            ("B".to_owned(), "plain".to_owned()),
        ])
    }

    #[test]
    fn every_syntax_quotes_what_its_reader_would_expand() {
        let cases = [
            (EnvSyntax::Docker, "A=it's $HOME\nB=plain\n"),
            (EnvSyntax::Compose, "A=\"it's \\$HOME\"\nB=\"plain\"\n"),
            (EnvSyntax::Sh, "A='it'\\''s $HOME'\nB='plain'\n"),
            (
                EnvSyntax::ShExport,
                "export A='it'\\''s $HOME'\nexport B='plain'\n",
            ),
            (
                EnvSyntax::Csh,
                "setenv A 'it'\\''s $HOME'\nsetenv B 'plain'\n",
            ),
            (EnvSyntax::Ps, "$Env:A='it''s $HOME'\n$Env:B='plain'\n"),
            (EnvSyntax::Cmd, "set A=it's $HOME\nset B=plain\n"),
        ];
        for (syntax, expected) in cases {
            assert_eq!(format(&vars(), syntax), expected, "{syntax:?}");
        }
        let json: BTreeMap<String, String> =
            serde_json::from_str(&format(&vars(), EnvSyntax::Json)).expect("json");
        assert_eq!(json, vars());
    }

    #[test]
    fn env_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("kubedev-env-{}", std::process::id()));
        std::fs::write(&path, "old").expect("existing file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, "A=1\n").expect("written");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "A=1\n");
        std::fs::remove_file(&path).ok();
    }
}
