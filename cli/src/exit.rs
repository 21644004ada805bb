//! The exit codes of `weir`, and the error that carries one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | error: connection, broker error, unknown topic, subscription ended by the broker, bench target missed, interrupted publish |
//! | 2 | refused: the broker refused a publish or request at one of its bounds, or because the key may not do that to that topic (`Forbidden`) |
//! | 64 | usage: a flag or argument is invalid (also one the broker finds invalid, `InvalidArgument`, and a value past a broker limit, such as `--credit` above `max_credit`) |

use std::process::ExitCode;

use weir_client::{ClientError, ErrorCode};

/// Done.
pub const DONE: u8 = 0;
/// An error.
pub const ERROR: u8 = 1;
/// The broker refused (a bound fired).
pub const REFUSED: u8 = 2;
/// A usage error (the BSD `EX_USAGE`).
pub const USAGE: u8 = 64;

/// The exit codes as `weir --help` prints them after the commands.
pub const HELP: &str = "Exit codes: 0 done, 1 error, 2 refused by the broker (a bound fired, or \
                        the key lacks the permission), \
                        64 usage error (invalid flag or argument, or a value past a broker limit).";

/// An error that ends the command with a chosen exit code instead of [`ERROR`].
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub code: u8,
    /// What went wrong, printed on stderr.
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// A usage error (exit [`USAGE`]) saying `message`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Coded {
        code: USAGE,
        message: message.into(),
    }
    .into()
}

/// The exit code of a command that failed with `error`: the code of a [`Coded`] error,
/// [`REFUSED`] when the broker refused at a bound (or because the target is in use, or the key
/// lacks the permission), else
/// [`ERROR`].
pub fn code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.code;
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Rejected { .. } | ClientError::ConnectionRejected { .. } => REFUSED,
                ClientError::Broker {
                    code: ErrorCode::InUse | ErrorCode::Forbidden,
                    ..
                } => REFUSED,
                ClientError::Broker {
                    code: ErrorCode::InvalidArgument,
                    ..
                } => USAGE,
                _ => ERROR,
            };
        }
    }
    ERROR
}

/// `code` as a process exit code.
pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use weir_client::{Limit, RejectReason};

    use super::*;

    #[test]
    fn refusals_usage_and_other_errors_get_their_codes() {
        let refused: anyhow::Error = ClientError::Rejected {
            reason: RejectReason::TooManyTopics,
            limit: Limit::new("max_topics", 1),
            retry_after_ms: None,
        }
        .into();
        assert_eq!(code_of(&refused), REFUSED);
        assert_eq!(code_of(&refused.context("creating topic t")), REFUSED);
        assert_eq!(code_of(&usage("credit 5000 exceeds")), USAGE);
        let invalid: anyhow::Error = ClientError::Broker {
            code: ErrorCode::InvalidArgument,
            message: "topic bounds must be at least 1".into(),
        }
        .into();
        assert_eq!(code_of(&invalid), USAGE);
        let forbidden: anyhow::Error = ClientError::Broker {
            code: ErrorCode::Forbidden,
            message: "forbidden: key audit may not publish to orders".into(),
        }
        .into();
        assert_eq!(code_of(&forbidden.context("publishing")), REFUSED);
        assert_eq!(code_of(&ClientError::ConnectionLost.into()), ERROR);
        assert_eq!(code_of(&anyhow::anyhow!("anything else")), ERROR);
    }
}
