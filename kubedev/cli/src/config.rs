//! The user's kubedev settings file: which agent image to use, for every kube context or
//! for one (clusters often pull from different registries).
//!
//! ```yaml
//! agentImage: registry.example.com/team/kubedev-agent:0.1.0   # every context without its own
//! contexts:
//!   prod-eu:
//!     agentImage: eu.registry.example.com/kubedev-agent:0.1.0
//!     pinnedImages:   # kept by the plugins: what each tag resolved to on first use
//!       eu.registry.example.com/kubedev-agent:0.1.0: eu.registry.example.com/kubedev-agent@sha256:…
//! ```
//!
//! An image named by tag (from this file or the default, not `--agent-image`) is pinned to
//! the digest the nodes pulled the first time it ran in a context: later sessions run that
//! very image, whatever the tag is moved to.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::args::{ConfigAction, DEFAULT_AGENT_IMAGE};
use super::command_of;
use kubedev::cluster::ClusterArgs;
use kubedev::mode::Mode;

/// The settings file's contents.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Settings {
    /// The agent image for every context without one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_image: Option<String>,
    /// Settings of single kube contexts, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    contexts: BTreeMap<String, ContextSettings>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ContextSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_image: Option<String>,
    /// Agent images by tag, and the digest each resolved to on first use here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pinned_images: BTreeMap<String, String>,
}

/// Where an agent image name came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ImageSource {
    /// `--agent-image` or `KUBEDEV_AGENT_IMAGE`.
    Given,
    /// The settings file, for this context.
    Context(PathBuf, String),
    /// The settings file, for every context.
    AllContexts(PathBuf),
    /// This release's default.
    Default,
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given => f.write_str("from --agent-image or KUBEDEV_AGENT_IMAGE"),
            Self::Context(path, context) => {
                write!(f, "from {} for context {context}", path.display())
            }
            Self::AllContexts(path) => write!(f, "from {}", path.display()),
            Self::Default => f.write_str("this release's default"),
        }
    }
}

/// The settings file: `$KUBEDEV_CONFIG`, else `$XDG_CONFIG_HOME/kubedev/config.yaml`, else
/// `~/.config/kubedev/config.yaml`; root's own for root through sudo, whose environment
/// may name the invoking user's.
pub(super) fn settings_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBEDEV_CONFIG") {
        return Ok(path.into());
    }
    #[cfg(unix)]
    if kubedev::run_as::through_sudo() {
        let root = kubedev::run_as::root_home().join(".config");
        return Ok(root.join("kubedev").join("config.yaml"));
    }
    // Windows keeps a user's settings in the roaming application data.
    #[cfg(windows)]
    if let Some(dir) = std::env::var_os("APPDATA").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("kubedev").join("config.yaml"));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context(
            "cannot find the settings file: set HOME, XDG_CONFIG_HOME or KUBEDEV_CONFIG",
        )?)
        .join(".config"),
    };
    Ok(base.join("kubedev").join("config.yaml"))
}

impl Settings {
    /// Reads `path`; a file that does not exist is empty settings.
    pub(super) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(&text).with_context(|| {
            format!(
                "{} is not a kubedev settings file (keys: agentImage, contexts.NAME.agentImage)",
                path.display()
            )
        })
    }

    /// Writes the settings to `path` whole (a new file renamed over the old one), creating
    /// its directory.
    pub(super) fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_saphyr::to_string(self)?;
        let new = path.with_extension("yaml.new");
        std::fs::write(&new, text)
            .and_then(|()| std::fs::rename(&new, path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The agent image for `context`: its own, else every context's.
    fn agent_image_for(&self, context: Option<&str>) -> Option<(&str, bool)> {
        let own = context
            .and_then(|name| self.contexts.get(name))
            .and_then(|settings| settings.agent_image.as_deref());
        own.map(|image| (image, true))
            .or_else(|| self.agent_image.as_deref().map(|image| (image, false)))
    }

    /// What `image` was pinned to in `context`, if it was.
    fn pinned(&self, context: &str, image: &str) -> Option<&str> {
        let pins = &self.contexts.get(context)?.pinned_images;
        pins.get(image).map(String::as_str)
    }

    /// Pins `image` to `digest` in `context`; whether that changed anything.
    fn pin(&mut self, context: &str, image: &str, digest: &str) -> bool {
        let pins = &mut self
            .contexts
            .entry(context.to_owned())
            .or_default()
            .pinned_images;
        pins.insert(image.to_owned(), digest.to_owned()).as_deref() != Some(digest)
    }

    /// Sets the agent image of `context`, or of every context without its own, and forgets
    /// what it was pinned to there (setting a tag again re-pins it on the next run, to what
    /// it names then); whether a pin was forgotten.
    pub(super) fn set_agent_image(&mut self, context: Option<&str>, image: String) -> bool {
        let mut forgot = false;
        for (name, settings) in &mut self.contexts {
            if context.is_none_or(|context| context == name) {
                forgot |= settings.pinned_images.remove(&image).is_some();
            }
        }
        match context {
            Some(name) => {
                self.contexts
                    .entry(name.to_owned())
                    .or_default()
                    .agent_image = Some(image);
            }
            None => self.agent_image = Some(image),
        }
        forgot
    }
}

/// `image` as pinned for `context` on an earlier run, if it was; an image given by digest,
/// or given explicitly (`source`), is used as it is.
pub(super) fn pinned(image: &str, source: &ImageSource, context: Option<&str>) -> Option<String> {
    if !is_pinnable(image, source) {
        return None;
    }
    let settings = Settings::load(&settings_path().ok()?).ok()?;
    settings.pinned(context?, image).map(str::to_owned)
}

/// Whether `image` (from `source`) is pinned: named by tag, and not given explicitly.
pub(super) fn is_pinnable(image: &str, source: &ImageSource) -> bool {
    !image.contains('@') && *source != ImageSource::Given
}

/// Keeps `digest` (`REPOSITORY@sha256:…`) as what `image` resolves to in `context`;
/// whether that is new.
pub(super) fn pin(image: &str, digest: &str, context: &str) -> anyhow::Result<bool> {
    let path = settings_path()?;
    let mut settings = Settings::load(&path)?;
    if !settings.pin(context, image, digest) {
        return Ok(false);
    }
    settings.save(&path)?;
    Ok(true)
}

/// The agent image to use: `given` (flag or environment), else the settings file's for
/// `context`, else this release's default; and where it came from.
pub(super) fn agent_image(
    given: Option<&str>,
    context: Option<&str>,
) -> anyhow::Result<(String, ImageSource)> {
    if let Some(image) = given {
        return Ok((image.to_owned(), ImageSource::Given));
    }
    let path = settings_path()?;
    let settings = Settings::load(&path)?;
    Ok(match settings.agent_image_for(context) {
        Some((image, true)) => (
            image.to_owned(),
            ImageSource::Context(path, context.unwrap_or_default().to_owned()),
        ),
        Some((image, false)) => (image.to_owned(), ImageSource::AllContexts(path)),
        None => (DEFAULT_AGENT_IMAGE.to_owned(), ImageSource::Default),
    })
}

/// The agent image a command without `--agent-image` runs for `context`:
/// `KUBEDEV_AGENT_IMAGE` (which the flag also reads), else as [`agent_image`] chooses.
pub(super) fn agent_image_from_env(context: Option<&str>) -> anyhow::Result<(String, ImageSource)> {
    let given = std::env::var("KUBEDEV_AGENT_IMAGE").ok();
    agent_image(given.as_deref(), context)
}

/// `config set-agent-image` and `config view`.
pub(super) async fn run_config(cluster: &ClusterArgs, action: ConfigAction) -> anyhow::Result<()> {
    let path = settings_path()?;
    match action {
        ConfigAction::SetAgentImage {
            image,
            all_contexts,
        } => {
            if image.is_empty() || image.contains(char::is_whitespace) {
                anyhow::bail!("{image:?} is not an image name (REGISTRY/REPOSITORY:TAG)");
            }
            let context = match all_contexts {
                true => None,
                false => Some(context_name(cluster).await?),
            };
            let mut settings = Settings::load(&path)?;
            let forgot_pin = settings.set_agent_image(context.as_deref(), image.clone());
            settings.save(&path)?;
            if forgot_pin {
                eprintln!(
                    "forgot the digest {image} was pinned to: the next session pins what it \
                     names then"
                );
            }
            match context {
                Some(context) => eprintln!("context {context} now uses the agent image {image}"),
                None => eprintln!("every context without its own now uses the agent image {image}"),
            }
            eprintln!("(saved in {})", path.display());
        }
        ConfigAction::View => {
            match std::fs::read_to_string(&path) {
                Ok(text) => print!("# {}\n{text}", path.display()),
                Err(_) => println!("# no settings file at {}", path.display()),
            }
            let context = context_name(cluster).await.ok();
            let (image, source) = agent_image_from_env(context.as_deref())?;
            let pin = pinned(&image, &source, context.as_deref())
                .map(|digest| format!(", pinned to {digest}"))
                .unwrap_or_default();
            println!(
                "# context {}: agent image {image} ({source}{pin})",
                context.as_deref().unwrap_or("(none)")
            );
        }
    }
    Ok(())
}

/// The kube context the plugins would use: `--context`, else the kubeconfig's current one.
async fn context_name(cluster: &ClusterArgs) -> anyhow::Result<String> {
    cluster.connect().await?.context.context(
        "the kubeconfig has no current context: say which with --context, or use --all-contexts",
    )
}

/// What to do when the nodes cannot pull the agent image.
pub(super) fn publish_hint(mode: Mode, image: &str, image_source: &ImageSource) -> String {
    let command = command_of(mode);
    let version = env!("CARGO_PKG_VERSION");
    format!(
        "The cluster's nodes cannot pull the agent image {image} ({image_source}). Publish it \
         to a registry they pull from and point kubedev at it:\n  \
         make push-agent REGISTRY=registry.example.com/team   # in kubedev's source tree; no Docker needed\n  \
         {command} config set-agent-image registry.example.com/team/kubedev-agent:{version}\n\
         or give --agent-image IMAGE (KUBEDEV_AGENT_IMAGE) for one run. A private registry also \
         needs an imagePullSecret on the pods' service account."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_s_own_image_wins_over_every_context_s() {
        let mut settings = Settings::default();
        settings.set_agent_image(None, "all:1".into());
        settings.set_agent_image(Some("eu"), "eu:1".into());
        assert_eq!(settings.agent_image_for(Some("eu")), Some(("eu:1", true)));
        assert_eq!(settings.agent_image_for(Some("us")), Some(("all:1", false)));
        assert_eq!(settings.agent_image_for(None), Some(("all:1", false)));
        assert_eq!(Settings::default().agent_image_for(Some("eu")), None);
    }

    #[test]
    fn an_image_is_pinned_in_its_context_only() {
        let mut settings = Settings::default();
        let digest = "reg/agent@sha256:abc";
        assert!(settings.pin("eu", "reg/agent:1", digest));
        assert!(!settings.pin("eu", "reg/agent:1", digest), "already pinned");
        assert_eq!(settings.pinned("eu", "reg/agent:1"), Some(digest));
        assert_eq!(settings.pinned("us", "reg/agent:1"), None);
        assert_eq!(settings.pinned("eu", "reg/agent:2"), None);
        assert!(settings.pin("us", "reg/agent:1", digest));
        assert!(settings.set_agent_image(Some("eu"), "reg/agent:1".into()));
        assert_eq!(
            settings.pinned("eu", "reg/agent:1"),
            None,
            "set again: re-pinned"
        );
        assert_eq!(
            settings.pinned("us", "reg/agent:1"),
            Some(digest),
            "elsewhere kept"
        );
    }

    #[test]
    fn settings_are_written_and_read_back() {
        let dir = std::env::temp_dir().join(format!("kubedev-settings-{}", std::process::id()));
        let path = dir.join("nested").join("config.yaml");
        assert_eq!(
            Settings::load(&path).expect("missing is empty"),
            Settings::default()
        );
        let mut settings = Settings::default();
        settings.set_agent_image(
            Some("kind-dev"),
            "localhost:5001/kubedev-agent:0.1.0".into(),
        );
        settings.save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("kind-dev:"), "{text}");
        assert!(
            text.contains("agentImage: localhost:5001/kubedev-agent:0.1.0"),
            "{text}"
        );
        assert_eq!(Settings::load(&path).expect("load"), settings);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_file_with_unknown_keys_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("kubedev-settings-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.yaml");
        std::fs::write(&path, "agent-image: x:1\n").expect("write");
        let err = Settings::load(&path).expect_err("unknown key");
        assert!(format!("{err:#}").contains("config.yaml is not a kubedev settings file"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
