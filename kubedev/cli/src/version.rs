//! `version`: this plugin's version, the tunneld it runs and that one's version, and the
//! agent image the kube context gets; a tunneld of another version is named as such.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::args::Output;
use super::config::agent_image_from_env;
use super::output::render;
use kubedev::cluster::ClusterArgs;
use kubedev::tunneld::tunneld_binary;

/// This release.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `version` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Versions {
    /// The plugin's.
    plugin: &'static str,
    /// The tunneld the plugin starts.
    tunneld: Tunneld,
    /// The kube context the agent image is for, if the kubeconfig names one.
    context: Option<String>,
    /// The agent image a session there runs.
    agent_image: String,
}

/// The tunneld the plugin starts.
#[derive(Debug, Serialize)]
pub(super) struct Tunneld {
    /// Where it is.
    pub(super) path: PathBuf,
    /// Its version, if it ran.
    pub(super) version: Option<String>,
    /// Why it did not, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

/// Prints the versions as text, or as `output` says.
pub(super) async fn version(
    plugin: &str,
    cluster: &ClusterArgs,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let context = cluster.connect().await.ok().and_then(|c| c.context);
    let (agent_image, _) = agent_image_from_env(context.as_deref())?;
    let versions = Versions {
        plugin: VERSION,
        tunneld: tunneld_version(),
        context,
        agent_image,
    };
    match output {
        Some(output) => print!("{}", render(&versions, output)?),
        None => print!("{}", describe(plugin, &versions)),
    }
    Ok(())
}

/// Runs `tunneld --version`.
pub(super) fn tunneld_version() -> Tunneld {
    let path = tunneld_binary();
    let ran = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let (version, error) = match ran {
        Ok(out) if out.status.success() => {
            let printed = String::from_utf8_lossy(&out.stdout);
            let version = printed.trim().trim_start_matches("tunneld").trim();
            (Some(version.to_owned()), None)
        }
        Ok(out) => (None, Some(format!("`--version` failed ({})", out.status))),
        Err(err) => (None, Some(err.to_string())),
    };
    Tunneld {
        path,
        version,
        error,
    }
}

/// The versions as lines of text, with what to do about a tunneld that differs.
fn describe(plugin: &str, versions: &Versions) -> String {
    let tunneld = &versions.tunneld;
    let path = tunneld.path.display();
    let tunneld_line = match (&tunneld.version, &tunneld.error) {
        (Some(version), _) if version == versions.plugin => format!("{version} ({path})"),
        (Some(version), _) => format!(
            "{version} ({path}): not the plugin's version; install the plugin's own again \
             (kubectl krew upgrade), or set KUBEDEV_TUNNELD"
        ),
        (None, error) => format!(
            "cannot run {path}: {}",
            error.as_deref().unwrap_or("no version")
        ),
    };
    let context = match &versions.context {
        Some(context) => format!("context {context}"),
        None => "no kube context".to_owned(),
    };
    format!(
        "plugin        {plugin} {}\ntunneld       {tunneld_line}\nagent image   {} ({context})\n",
        versions.plugin, versions.agent_image
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(tunneld: Option<&str>) -> Versions {
        Versions {
            plugin: "0.1.0",
            tunneld: Tunneld {
                path: PathBuf::from("/opt/kubedev/tunneld"),
                version: tunneld.map(str::to_owned),
                error: tunneld
                    .is_none()
                    .then(|| "No such file or directory".to_owned()),
            },
            context: Some("dev".into()),
            agent_image: "registry.example.com/kubedev-agent:0.1.0".into(),
        }
    }

    #[test]
    fn versions_are_lines_and_a_tunneld_of_another_version_says_what_to_do() {
        assert_eq!(
            describe("kubectl intercept", &versions(Some("0.1.0"))),
            "plugin        kubectl intercept 0.1.0\n\
             tunneld       0.1.0 (/opt/kubedev/tunneld)\n\
             agent image   registry.example.com/kubedev-agent:0.1.0 (context dev)\n"
        );
        assert!(describe("intercept", &versions(Some("0.0.9"))).contains("not the plugin's"));
        assert!(
            describe("intercept", &versions(None))
                .contains("cannot run /opt/kubedev/tunneld: No such file")
        );
    }

    #[test]
    fn json_keys_are_camel_case() {
        let json = serde_json::to_value(versions(Some("0.1.0"))).expect("json");
        assert_eq!(
            json["agentImage"],
            "registry.example.com/kubedev-agent:0.1.0"
        );
        assert_eq!(json["tunneld"]["version"], "0.1.0");
    }
}
