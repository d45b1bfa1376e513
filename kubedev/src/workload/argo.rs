//! What an Argo Rollout's own status says about a rollout that does not finish: a canary
//! waits at each pause step of its strategy until someone promotes it.

use serde_json::Value;

use super::{Workload, WorkloadKind};

/// Why `workload`, if it is an Argo Rollout, holds its pods back by its strategy, with
/// what to do ("; ..." to append to a timeout), as its status says now.
pub(super) async fn paused_by_strategy(client: &kube::Client, workload: &Workload) -> String {
    if workload.reference.kind != WorkloadKind::Rollout {
        return String::new();
    }
    let Ok(now) = Workload::get(client, &workload.namespace, &workload.reference).await else {
        return String::new();
    };
    pause_note(
        &now.object.data,
        &workload.reference.name,
        &workload.namespace,
    )
}

/// The note for a Rollout whose status is `data`'s, named `name` in `namespace`.
fn pause_note(data: &Value, name: &str, namespace: &str) -> String {
    let reasons: Vec<&str> = (data.pointer("/status/pauseConditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|condition| condition.get("reason")?.as_str())
        .collect();
    if reasons.is_empty() {
        return String::new();
    }
    format!(
        "; the rollout is paused by its strategy ({}): promote it with `kubectl argo \
         rollouts promote {name} -n {namespace}` while the session starts, or give it \
         steps without pauses",
        reasons.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_paused_canary_says_how_to_promote_it() {
        let paused = json!({"status": {"phase": "Paused", "pauseConditions": [
            {"reason": "CanaryPauseStep", "startTime": "2026-12-06T08:00:00Z"}
        ]}});
        assert_eq!(
            pause_note(&paused, "web", "shop"),
            "; the rollout is paused by its strategy (CanaryPauseStep): promote it with \
             `kubectl argo rollouts promote web -n shop` while the session starts, or give \
             it steps without pauses"
        );
        let healthy = json!({"status": {"phase": "Healthy"}});
        assert_eq!(pause_note(&healthy, "web", "shop"), "");
    }
}
