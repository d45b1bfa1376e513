//! What every kubedev program does alike: how its daemons log ([`logging`]), the signals
//! that stop it cleanly ([`signals`]), the limits its daemons raise ([`limits`]), and how
//! a failure ends it ([`exit_status`]).

#![warn(missing_docs)]

pub mod limits;
pub mod logging;
pub mod signals;

use std::process::ExitCode;

/// Turns a command's result into its exit status, printing a failure as
/// `error: what failed: why` on stderr (no backtrace, whatever RUST_BACKTRACE says).
pub fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
