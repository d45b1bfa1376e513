//! What `-- CMD` gets of the container's environment. The command runs on the
//! workstation, so the variables that decide how the workstation's own programs find
//! commands, load code, start shells or run helpers stay the workstation's: whoever can
//! edit the workload's environment must not choose what runs here. Everything else comes
//! from the container; the env files carry every variable, since there they are data.

use std::collections::BTreeMap;

use super::{BadNames, check_names};

/// The variables `-- CMD` never takes from the container (see [`for_command`]), by name or,
/// ending in `*`, by prefix.
pub const WORKSTATION_OWNED: &[&str] = &[
    // The dynamic loader: libraries loaded into every program (glibc, macOS).
    "LD_*",
    "DYLD_*",
    // Where commands are found, the user's home (shells and tools read their start-up
    // files and settings there) and the user's shell.
    "PATH",
    "HOME",
    "SHELL",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_HOME",
    "XDG_DATA_DIRS",
    "XDG_RUNTIME_DIR",
    // Shells: files they run at start-up, code they run at each prompt or trace, and
    // settings that change what a script's words mean.
    "ENV",
    "BASH_ENV",
    "PROMPT_COMMAND",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "ZDOTDIR",
    // Interpreters: code they load before the program, and where they look for modules.
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    // Programs that tools run for the user: editors, pagers, password prompts.
    "EDITOR",
    "VISUAL",
    "PAGER",
    "MANPAGER",
    "LESSOPEN",
    "LESSCLOSE",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    // git runs commands several of its variables name (GIT_SSH_COMMAND, GIT_EXTERNAL_DIFF,
    // GIT_CONFIG_* with core.fsmonitor), and reads dozens more.
    "GIT_*",
    // kubectl runs the credential plugins a kubeconfig names; kubedev's own settings
    // choose the tunneld it starts.
    "KUBECONFIG",
    "KUBEDEV_*",
];

/// The variable kubedev itself sets for `-- CMD`: where the volumes are.
const KUBEDEV_ROOT: &str = "KUBEDEV_ROOT";

/// Whether `name` is one of [`WORKSTATION_OWNED`].
fn workstation_owned(name: &str) -> bool {
    name != KUBEDEV_ROOT
        && WORKSTATION_OWNED
            .iter()
            .any(|owned| match owned.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *owned,
            })
}

/// What `-- CMD` is given on top of the workstation's environment: `variables` but the
/// [`WORKSTATION_OWNED`] ones, which are returned by name (to be reported); refused if a
/// name is not portable.
pub fn for_command(
    variables: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Vec<String>), BadNames> {
    check_names(variables)?;
    let (skipped, given): (BTreeMap<_, _>, BTreeMap<_, _>) = variables
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .partition(|(name, _)| workstation_owned(name));
    Ok((given, skipped.into_keys().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workstations_loader_path_and_shells_stay_its_own() {
        let from_cluster = BTreeMap::from(
            [
                ("LD_PRELOAD", "/tmp/evil.so"),
                ("LD_AUDIT", "/tmp/evil.so"),
                ("DYLD_INSERT_LIBRARIES", "/tmp/evil.dylib"),
                ("PATH", "/tmp/evil:/usr/bin"),
                ("HOME", "/tmp/evil"),
                ("BASH_ENV", "/tmp/evil.sh"),
                ("NODE_OPTIONS", "--require /tmp/evil.js"),
                ("GIT_SSH_COMMAND", "sh /tmp/evil.sh"),
                ("KUBEDEV_TUNNELD", "/tmp/evil"),
                ("KUBEDEV_ROOT", "/tmp/kubedev-web-1-abcdef"),
                ("DATABASE_URL", "postgres://db/shop"),
                ("PATHLIKE", "kept"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        let (given, skipped) = for_command(&from_cluster).expect("portable names");
        assert_eq!(
            given.keys().map(String::as_str).collect::<Vec<_>>(),
            ["DATABASE_URL", "KUBEDEV_ROOT", "PATHLIKE"]
        );
        assert_eq!(
            skipped,
            [
                "BASH_ENV",
                "DYLD_INSERT_LIBRARIES",
                "GIT_SSH_COMMAND",
                "HOME",
                "KUBEDEV_TUNNELD",
                "LD_AUDIT",
                "LD_PRELOAD",
                "NODE_OPTIONS",
                "PATH"
            ]
        );
    }

    #[test]
    fn a_name_bash_would_take_for_a_function_is_refused() {
        let hostile = BTreeMap::from([
            ("BASH_FUNC_ls%%".to_owned(), "() { rm -rf ~; }".to_owned()),
            ("OK".to_owned(), "1".to_owned()),
        ]);
        let err = for_command(&hostile).expect_err("refused");
        assert!(err.to_string().contains("\"BASH_FUNC_ls%%\""), "{err}");
    }
}
