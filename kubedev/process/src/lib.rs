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
            eprintln!("error: {}", said(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its causes, as `{err:#}` prints them, but a cause that its error's own message
/// already ends with is said once (many errors print their source in their message).
fn said(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_an_error_already_says_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let read = anyhow::Error::new(io)
            .context("failed to read kubeconfig from 'x': No such file or directory")
            .context("cannot read a kubeconfig");
        assert_eq!(
            said(&read),
            "cannot read a kubeconfig: failed to read kubeconfig from 'x': No such file or \
             directory"
        );
        let plain = anyhow::anyhow!("refused").context("starting");
        assert_eq!(said(&plain), "starting: refused");
    }
}
