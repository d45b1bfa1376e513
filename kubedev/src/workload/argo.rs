//! What an Argo Rollout's own status says about a rollout that does not finish: a canary
//! waits at each pause step of its strategy until someone promotes it.

use serde_json::Value;

use super::{Workload, WorkloadKind};

/// Why `workload`, if it is an Argo Rollout, holds its pods back by its strategy, as its
/// status says now ("paused by its strategy (CanaryPauseStep)").
pub(super) async fn pause_of(client: &kube::Client, workload: &Workload) -> Option<String> {
    if workload.reference.kind != WorkloadKind::Rollout {
        return None;
    }
    let now = Workload::get(client, &workload.namespace, &workload.reference)
        .await
        .ok()?;
    pause_in(&now.object.data)
}

/// What to do about `pause` of Rollout `name` in `namespace`, to follow a timeout.
pub(super) fn promote_hint(pause: &str, name: &str, namespace: &str) -> String {
    format!(
        "; the rollout is {pause}: it goes on once promoted (`kubectl argo rollouts \
         promote {name} -n {namespace}`); a canary without pause steps does not wait"
    )
}

/// The pause in a Rollout's stored `data`, if its status has one.
fn pause_in(data: &Value) -> Option<String> {
    let reasons: Vec<&str> = (data.pointer("/status/pauseConditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|condition| condition.get("reason")?.as_str())
        .collect();
    (!reasons.is_empty()).then(|| format!("paused by its strategy ({})", reasons.join(", ")))
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
        let pause = pause_in(&paused).expect("paused");
        assert_eq!(pause, "paused by its strategy (CanaryPauseStep)");
        assert_eq!(
            promote_hint(&pause, "web", "shop"),
            "; the rollout is paused by its strategy (CanaryPauseStep): it goes on once \
             promoted (`kubectl argo rollouts promote web -n shop`); a canary without pause \
             steps does not wait"
        );
        assert_eq!(pause_in(&json!({"status": {"phase": "Healthy"}})), None);
    }
}
