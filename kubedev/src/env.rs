//! The app container's environment written for the workstation, in the syntax the user's
//! tools read (`--env-syntax`), and the files it goes to (`--env-file`, `--env-json`):
//! created with mode 0600, since they hold secrets. Only names that every syntax and shell
//! can carry are written ([`check_names`]); what `-- CMD` gets is [`for_command`].

mod command;

use std::collections::BTreeMap;
use std::path::Path;

pub use command::{WORKSTATION_OWNED, for_command};

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
    /// `$Env:KEY='value'` lines for PowerShell, UTF-8 with a byte order mark and CRLF
    /// (load it with `. .\FILE.ps1`; an execution policy of RemoteSigned or looser).
    Ps,
    /// `@set KEY=value` lines for a cmd.exe batch file (load it with `call FILE.cmd`),
    /// special characters escaped with `^` and `%` doubled; newlines become spaces. UTF-8:
    /// values beyond ASCII need the console's code page at 65001 (`chcp 65001`).
    Cmd,
}

/// Variables whose names not every shell and env file can carry.
#[derive(Debug, thiserror::Error)]
#[error(
    "the container's environment has variables named {}: kubedev passes on only names made \
     of letters, digits and _ (not starting with a digit), which every shell and env file \
     reads as written (bash would take BASH_FUNC_NAME%% for a function, say); rename them in \
     the workload",
    names.join(", ")
)]
pub struct BadNames {
    /// The names, quoted.
    names: Vec<String>,
}

/// Whether `name` is `[A-Za-z_][A-Za-z0-9_]*`.
fn is_portable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Refuses `variables` if any name is not `[A-Za-z_][A-Za-z0-9_]*`, naming them all.
pub fn check_names(variables: &BTreeMap<String, String>) -> Result<(), BadNames> {
    let names: Vec<String> = variables
        .keys()
        .filter(|name| !is_portable_name(name))
        .map(|name| format!("{name:?}"))
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(BadNames { names })
    }
}

/// `variables` in `syntax`; refused if a name is not portable ([`check_names`]).
pub fn format(variables: &BTreeMap<String, String>, syntax: EnvSyntax) -> Result<String, BadNames> {
    check_names(variables)?;
    if syntax == EnvSyntax::Json {
        let mut json = serde_json::to_string_pretty(variables).unwrap_or_default();
        json.push('\n');
        return Ok(json);
    }
    let mut out = String::new();
    for (key, value) in variables {
        let line = match syntax {
            // docker reads the rest of the line as it is: only a newline cannot be written.
            EnvSyntax::Docker => format!("{key}={}", value.replace('\n', "\\n")),
            EnvSyntax::Compose => format!("{key}={}", double_quoted(value)),
            EnvSyntax::Sh => format!("{key}={}", single_quoted(value)),
            EnvSyntax::ShExport => format!("export {key}={}", single_quoted(value)),
            EnvSyntax::Csh => format!("setenv {key} {}", csh_quoted(value)),
            EnvSyntax::Ps => format!("$Env:{key}={}", powershell_quoted(value)),
            // `@`: `call FILE` runs each line without echoing it.
            EnvSyntax::Cmd => format!("@set {key}={}", cmd_escaped(value)),
            EnvSyntax::Json => unreachable!("handled above"),
        };
        out.push_str(&line);
        out.push_str(line_end(syntax));
    }
    if syntax == EnvSyntax::Ps {
        // Windows PowerShell 5.1 reads a script without a byte order mark as ANSI.
        out.insert(0, '\u{feff}');
    }
    Ok(out)
}

/// Windows' shells' files end their lines as Windows does.
fn line_end(syntax: EnvSyntax) -> &'static str {
    match syntax {
        EnvSyntax::Ps | EnvSyntax::Cmd => "\r\n",
        _ => "\n",
    }
}

/// POSIX shells: nothing is special inside single quotes, and a quote is closed, escaped
/// and reopened.
fn single_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// csh and tcsh: as for POSIX shells, but history's `!` is special even inside single
/// quotes (escaped outside them), and a newline inside them needs a backslash.
fn csh_quoted(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str(r"'\''"),
            '!' => out.push_str(r"'\!'"),
            '\n' => out.push_str("\\\n"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// PowerShell: nothing is special inside single quotes but the quote itself, written
/// twice; PowerShell also takes the typographic single quotes (U+2018 to U+201B) for one.
fn powershell_quoted(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// cmd.exe batch files: `%` is written twice (percent expansion runs first), and `^`
/// escapes every character cmd would otherwise act on, `"` included (quoting cannot be
/// used: a `"` in the value would end it). Delayed expansion (`!`) is off in batch files
/// unless they turn it on. A newline or another control character cannot be written (cmd
/// ends a line at one, or the file at Ctrl-Z): each becomes a space; a tab stays.
fn cmd_escaped(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '%' => out.push_str("%%"),
            '^' | '&' | '|' | '<' | '>' | '(' | ')' | '"' => {
                out.push('^');
                out.push(c);
            }
            c if c.is_control() && c != '\t' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
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
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `content` to `path`, readable by this user only. Never through a symbolic link,
/// into a pipe or device, or over another user's file: a path in a shared directory may
/// have been planted.
pub fn write_private(
    path: &Path,
    content: &str,
) -> Result<(), crate::private_files::PrivateFileError> {
    crate::private_files::write_own(path, content)
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
            (
                EnvSyntax::Ps,
                "\u{feff}$Env:A='it''s $HOME'\r\n$Env:B='plain'\r\n",
            ),
            (EnvSyntax::Cmd, "@set A=it's $HOME\r\n@set B=plain\r\n"),
        ];
        for (syntax, expected) in cases {
            assert_eq!(
                format(&vars(), syntax).expect("format"),
                expected,
                "{syntax:?}"
            );
        }
        let json: BTreeMap<String, String> =
            serde_json::from_str(&format(&vars(), EnvSyntax::Json).expect("format")).expect("json");
        assert_eq!(json, vars());
    }

    /// A value that tries every reader's special characters: quotes of each kind, command
    /// substitution, history, percent and caret, redirections, a newline.
    const HOSTILE: &str = "a'b\"c`id`$(id)$HOME!%PATH%^&|<>()\u{2019}\\\nrm -rf ~";

    #[test]
    fn hostile_values_stay_values_in_every_syntax() {
        let hostile = BTreeMap::from([("V".to_owned(), HOSTILE.to_owned())]);
        let cases = [
            (
                EnvSyntax::Docker,
                "V=a'b\"c`id`$(id)$HOME!%PATH%^&|<>()\u{2019}\\\\nrm -rf ~\n",
            ),
            (
                EnvSyntax::Compose,
                "V=\"a'b\\\"c`id`\\$(id)\\$HOME!%PATH%^&|<>()\u{2019}\\\\\\nrm -rf ~\"\n",
            ),
            (
                EnvSyntax::Sh,
                "V='a'\\''b\"c`id`$(id)$HOME!%PATH%^&|<>()\u{2019}\\\nrm -rf ~'\n",
            ),
            (
                EnvSyntax::ShExport,
                "export V='a'\\''b\"c`id`$(id)$HOME!%PATH%^&|<>()\u{2019}\\\nrm -rf ~'\n",
            ),
            (
                EnvSyntax::Csh,
                "setenv V 'a'\\''b\"c`id`$(id)$HOME'\\!'%PATH%^&|<>()\u{2019}\\\\\nrm -rf ~'\n",
            ),
            (
                EnvSyntax::Ps,
                "\u{feff}$Env:V='a''b\"c`id`$(id)$HOME!%PATH%^&|<>()\u{2019}\u{2019}\\\nrm -rf ~'\r\n",
            ),
            (
                EnvSyntax::Cmd,
                "@set V=a'b^\"c`id`$^(id^)$HOME!%%PATH%%^^^&^|^<^>^(^)\u{2019}\\ rm -rf ~\r\n",
            ),
        ];
        for (syntax, expected) in cases {
            assert_eq!(
                format(&hostile, syntax).expect("format"),
                expected,
                "{syntax:?}"
            );
        }
        let json: BTreeMap<String, String> =
            serde_json::from_str(&format(&hostile, EnvSyntax::Json).expect("format"))
                .expect("json");
        assert_eq!(json, hostile);
    }

    #[cfg(unix)]
    #[test]
    fn a_posix_shell_reads_back_exactly_the_hostile_value() {
        let hostile = BTreeMap::from([("V".to_owned(), HOSTILE.to_owned())]);
        let script = format!(
            "{}printf %s \"$V\"",
            format(&hostile, EnvSyntax::ShExport).expect("format")
        );
        let output = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&output.stdout), HOSTILE);
    }

    #[test]
    fn names_no_syntax_can_carry_are_refused_by_name() {
        for name in ["BASH_FUNC_ls%%", "a.b", "1ST", "X-Y", "", "A B", "A\nB=1"] {
            let variables = BTreeMap::from([(name.to_owned(), "v".to_owned())]);
            let err = format(&variables, EnvSyntax::Sh).expect_err(name);
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
        let fine = BTreeMap::from([("_a1".to_owned(), String::new())]);
        assert!(format(&fine, EnvSyntax::Cmd).is_ok());
    }

    #[test]
    fn cmd_never_gets_a_control_character_that_ends_its_line_or_file() {
        let value = "a\u{1a}b\u{0}c\rd\te\u{1b}f".to_owned();
        let variables = BTreeMap::from([("V".to_owned(), value)]);
        assert_eq!(
            format(&variables, EnvSyntax::Cmd).expect("format"),
            "@set V=a b c d\te f\r\n"
        );
    }

    #[cfg(unix)]
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

    #[cfg(unix)]
    #[test]
    fn an_env_file_planted_as_a_link_is_refused_and_its_target_left_alone() {
        let dir = std::env::temp_dir().join(format!("kubedev-env-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let target = dir.join("authorized_keys");
        std::fs::write(&target, "kept\n").expect("target");
        let planted = dir.join("web.env");
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&target, &planted).expect("link");
        assert!(write_private(&planted, "A=1\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "kept\n");
        std::fs::remove_dir_all(&dir).ok();
    }
}
