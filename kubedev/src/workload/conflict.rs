//! Optimistic concurrency: kubedev's writes name their field manager, and a
//! read-change-write that lost a race with another writer is redone from a fresh read.

use std::future::Future;

use kube::api::PostParams;

use super::WorkloadError;

/// How many times a read-change-write of a workload is redone after the workload changed
/// under it (its controller writes its status often, which bumps the resource version).
const CONFLICT_ATTEMPTS: usize = 5;

/// The field manager of kubedev's writes to workloads and Services, so that their
/// `managedFields` tell kubedev's changes from everyone else's.
pub const FIELD_MANAGER: &str = "kubedev";

/// The parameters of kubedev's writes: under [`FIELD_MANAGER`].
pub fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// An error that may be an object changing between its read and its write.
pub trait MayConflict {
    /// Whether redoing the read-change-write may succeed.
    fn is_conflict(&self) -> bool;
}

impl MayConflict for WorkloadError {
    fn is_conflict(&self) -> bool {
        WorkloadError::is_conflict(self)
    }
}

/// Runs `change` (which reads a workload, decides and writes it) again from the start while
/// its write fails because the workload changed since it was read, as kubectl's own
/// read-modify-write commands do.
pub async fn retry_on_conflict<T, E, F, Fut>(mut change: F) -> Result<T, E>
where
    E: MayConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match change().await {
            Err(err) if attempt < CONFLICT_ATTEMPTS && err.is_conflict() => attempt += 1,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn conflict() -> WorkloadError {
        let mut status = kube::core::Status::failure("the object has been modified", "Conflict");
        status.code = 409;
        WorkloadError::from_api(
            kube::Error::Api(status.boxed()),
            "update",
            "deployments",
            "shop",
        )
    }

    #[tokio::test]
    async fn a_conflict_is_retried_until_the_write_goes_through() {
        let calls = Cell::new(0);
        let result = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(conflict())
            } else {
                Ok("written")
            }
        })
        .await;
        assert_eq!(result.expect("written"), "written");
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn other_errors_and_endless_conflicts_are_returned() {
        let calls = Cell::new(0);
        let result: Result<(), WorkloadError> = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            Err(WorkloadError::NotFound {
                what: "deployment/x".into(),
                namespace: "shop".into(),
            })
        })
        .await;
        assert!(matches!(
            result.expect_err("fails"),
            WorkloadError::NotFound { .. }
        ));
        assert_eq!(calls.get(), 1);

        let calls = Cell::new(0);
        let result: Result<(), WorkloadError> = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            Err(conflict())
        })
        .await;
        assert!(result.expect_err("fails").is_conflict());
        assert_eq!(calls.get(), CONFLICT_ATTEMPTS);
    }
}
