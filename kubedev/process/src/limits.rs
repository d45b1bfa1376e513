//! Limits a daemon raises for itself at start.

/// Lets the process open as many files as the system allows it: the soft limit is often
/// 1,024, and every flow, link and client of a daemon takes one or two. Windows has no
/// such limit on sockets.
#[cfg(unix)]
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!("keeping the open files limit at {soft}: {err}");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::debug!("the open files limit: {err}"),
    }
}

/// Windows has no per-process limit on sockets to raise.
#[cfg(windows)]
pub fn raise_open_files_limit() {}
