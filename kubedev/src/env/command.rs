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
    // Windows: which extensions run as programs, the command interpreter, the system's and
    // the user's places (Windows reads these names in any letter case).
    "PATHEXT",
    "COMSPEC",
    "SYSTEMROOT",
    "WINDIR",
    "USERPROFILE",
    "APPDATA",
    "LOCALAPPDATA",
    "TEMP",
    "TMP",
    // Shells: files they run at start-up, code they run at each prompt or trace, and
    // settings that change what a script's words mean.
    "ENV",
    "BASH_ENV",
    "PROMPT_COMMAND",
    "PS0",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "ZDOTDIR",
    "INPUTRC",
    "HISTFILE",
    "HISTFILESIZE",
    "HISTSIZE",
    "TMPDIR",
    "TERMINFO",
    "TERMINFO_DIRS",
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
    "MAVEN_OPTS",
    "GRADLE_OPTS",
    "SBT_OPTS",
    // Programs that tools run for the user: editors, pagers, password prompts.
    "EDITOR",
    "VISUAL",
    "PAGER",
    "MANPAGER",
    "LESSOPEN",
    "LESSCLOSE",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "VIMINIT",
    "GVIMINIT",
    "EXINIT",
    "MYVIMRC",
    "BROWSER",
    "KUBE_EDITOR",
    // Where programs send their traffic, and whose certificates they trust: the
    // workstation's requests, and the credentials in them, must not be steered.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ftp_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "PYTHONHTTPSVERIFY",
    // Tools that log in somewhere or install code: where they send credentials and
    // fetch packages from, and helpers they run.
    "DOCKER_*",
    "PIP_*",
    "UV_*",
    "npm_config_*",
    "NPM_CONFIG_*",
    "YARN_*",
    "CARGO_*",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "GOFLAGS",
    "GOPROXY",
    "GOPRIVATE",
    "GONOPROXY",
    "GONOSUMDB",
    "GOINSECURE",
    "GOTOOLCHAIN",
    "GOENV",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "SSH_*",
    "GNUPGHOME",
    // git runs commands several of its variables name (GIT_SSH_COMMAND, GIT_EXTERNAL_DIFF,
    // GIT_CONFIG_* with core.fsmonitor), and reads dozens more.
    "GIT_*",
    // kubectl runs the credential plugins a kubeconfig names; kubedev's own settings, and
    // krew's root, choose the tunneld it starts.
    "KUBECONFIG",
    "KUBEDEV_*",
    "KREW_ROOT",
];

/// The variable kubedev itself sets for `-- CMD`: where the volumes are.
const KUBEDEV_ROOT: &str = "KUBEDEV_ROOT";

/// Whether `name` is one of [`WORKSTATION_OWNED`]; on Windows, whose variables are the
/// same in any letter case, whatever its case (`Path` is `PATH` there).
fn workstation_owned(name: &str) -> bool {
    let name = if cfg!(windows) {
        name.to_ascii_uppercase()
    } else {
        name.to_owned()
    };
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
    fn windows_names_and_krews_root_stay_the_workstations() {
        for name in [
            "PATHEXT",
            "COMSPEC",
            "SYSTEMROOT",
            "USERPROFILE",
            "TEMP",
            "KREW_ROOT",
        ] {
            assert!(workstation_owned(name), "{name}");
        }
        // Windows reads `Path` as PATH; elsewhere it is another variable.
        assert_eq!(workstation_owned("Path"), cfg!(windows));
        assert_eq!(workstation_owned("ComSpec"), cfg!(windows));
    }

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
    fn prompts_editors_proxies_certificates_and_package_indexes_stay_the_workstations() {
        let from_cluster: BTreeMap<String, String> = [
            "PS0",
            "PS1",
            "VIMINIT",
            "HISTFILE",
            "HTTPS_PROXY",
            "all_proxy",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "DOCKER_HOST",
            "PIP_INDEX_URL",
            "npm_config_registry",
            "SSH_AUTH_SOCK",
            "AWS_CONFIG_FILE",
        ]
        .into_iter()
        .map(|name| (name.to_owned(), "from the cluster".to_owned()))
        .chain([("AWS_REGION".to_owned(), "eu-west-1".to_owned())])
        .collect();
        let (given, skipped) = for_command(&from_cluster).expect("portable names");
        assert_eq!(given.keys().collect::<Vec<_>>(), ["AWS_REGION"]);
        assert_eq!(skipped.len(), from_cluster.len() - 1, "{skipped:?}");
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
