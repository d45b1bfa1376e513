//! Which GitOps controller applies a workload, as the labels and annotations it leaves on
//! the objects it applies say: a sync of theirs takes a session's changes back (see
//! [`super::routing_of`]), so the plugins say so before they start.

use std::fmt;

use crate::printable::printable;
use crate::workload::Workload;

/// A GitOps controller that applies a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciler {
    /// Flux, from a Kustomization (`NAMESPACE/NAME`) or a HelmRelease.
    Flux {
        /// What applies it, e.g. `kustomization flux-system/apps`.
        source: String,
    },
    /// Argo CD, from an Application.
    ArgoCd {
        /// The Application's name.
        application: String,
    },
}

impl fmt::Display for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flux { source } => write!(f, "Flux ({})", printable(source)),
            Self::ArgoCd { application } => {
                write!(f, "Argo CD (application {})", printable(application))
            }
        }
    }
}

/// The controller that applies `workload`, if its labels or annotations name one.
pub fn reconciler_of(workload: &Workload) -> Option<Reconciler> {
    reconciler_from(|key| workload.label(key), |key| workload.annotation(key))
}

fn reconciler_from<'a>(
    label: impl Fn(&str) -> Option<&'a str>,
    annotation: impl Fn(&str) -> Option<&'a str>,
) -> Option<Reconciler> {
    for (kind, prefix) in [
        ("kustomization", "kustomize.toolkit.fluxcd.io"),
        ("helmrelease", "helm.toolkit.fluxcd.io"),
    ] {
        if let Some(name) = label(&format!("{prefix}/name")) {
            let source = match label(&format!("{prefix}/namespace")) {
                Some(namespace) => format!("{kind} {namespace}/{name}"),
                None => format!("{kind} {name}"),
            };
            return Some(Reconciler::Flux { source });
        }
    }
    // `APP:GROUP/KIND:NAMESPACE/NAME`, or the instance label where Argo CD tracks by label.
    let application = annotation("argocd.argoproj.io/tracking-id")
        .and_then(|id| id.split(':').next())
        .or_else(|| label("argocd.argoproj.io/instance"))?;
    Some(Reconciler::ArgoCd {
        application: application.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(
        labels: &[(&'static str, &'static str)],
        annotations: &[(&'static str, &'static str)],
    ) -> Option<Reconciler> {
        fn find(list: &[(&'static str, &'static str)], key: &str) -> Option<&'static str> {
            list.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        }
        reconciler_from(|k| find(labels, k), |k| find(annotations, k))
    }

    #[test]
    fn flux_and_argo_cd_are_told_by_what_they_leave_on_objects() {
        let flux = found(
            &[
                ("kustomize.toolkit.fluxcd.io/name", "apps"),
                ("kustomize.toolkit.fluxcd.io/namespace", "flux-system"),
            ],
            &[],
        );
        assert_eq!(
            flux.map(|r| r.to_string()).as_deref(),
            Some("Flux (kustomization flux-system/apps)")
        );
        let argo = found(
            &[],
            &[(
                "argocd.argoproj.io/tracking-id",
                "shop:apps/Deployment:shop/web",
            )],
        );
        assert_eq!(
            argo.map(|r| r.to_string()).as_deref(),
            Some("Argo CD (application shop)")
        );
        assert_eq!(found(&[("app.kubernetes.io/instance", "web")], &[]), None);
    }
}
