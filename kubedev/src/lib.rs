//! What the kubedev plugins (`kubectl intercept`, `kubectl replace-container`,
//! `kubectl ingest`) and tunneld share:
//!
//! - [`cluster`]: kubectl-style flags and client construction, through the proxy kubectl
//!   would use;
//! - [`workload`]: finding workloads, changing their pod template, waiting for rollouts;
//! - [`mode`]: intercept, replace or ingest: what a session does with the app container;
//! - [`inject`]: putting the agent into a pod template, and taking it out again;
//! - [`session`]: sessions, recorded on the workload, and their exact restoration;
//! - [`tunnel`]: reaching an agent through the Kubernetes API's port-forward;
//! - [`control`]: tunneld's control API: what the plugins ask and tunneld answers;
//! - [`tunneld`]: reaching this user's tunneld from a plugin, and starting it on demand;
//! - `fd_passing` (Linux): open files handed between processes over a Unix socket;
//! - [`duration`]: durations as kubectl's flags take them;
//! - [`cidr`]: address ranges of both families, as `--also-proxy` and tunneld's routes take them;
//! - [`env`](mod@env): the container's environment, as files and shells take it;
//! - [`mount`]: the container's volumes on this machine;
//! - [`private_files`]: directories and files only this user can have made;
//! - [`proxy_env`]: `-- CMD`'s variables for tunneld's proxy, where the machine-wide
//!   network is not up;
//! - [`run_as`]: the developer, never root through sudo;
//! - `fuzzing` (in tests and with the `fuzzing` feature): what the fuzz targets of the
//!   control socket run.
//!
//! The wire protocol with the agent is the `kubedev-protocol` crate; the plugins' command
//! line is `kubedev-cli`.

#![warn(missing_docs)]

pub mod cidr;
pub mod cluster;
pub mod control;
pub mod duration;
pub mod env;
#[cfg(target_os = "linux")]
pub mod fd_passing;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inject;
pub mod mode;
pub mod mount;
pub mod printable;
pub mod private_files;
pub mod proxy_env;
pub mod run_as;
pub mod session;
pub mod tunnel;
pub mod tunneld;
pub mod workload;
