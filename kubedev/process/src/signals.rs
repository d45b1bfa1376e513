//! The signals that stop a kubedev process cleanly. On Unix: Ctrl-C (SIGINT), SIGTERM,
//! and SIGHUP (a closed terminal). On Windows: Ctrl-C, Ctrl-Break, and the console's
//! close, logoff and shutdown events. The plugins end their session on them, tunneld
//! undoes what it changed on the machine, and the agent exits at once (as PID 1 of its
//! container it gets no default handling: without this, SIGTERM would be ignored and every
//! pod would wait out its grace period).

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::StopSignals;
#[cfg(windows)]
pub use windows::StopSignals;
