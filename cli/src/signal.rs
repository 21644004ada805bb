//! The signals that stop a command: SIGINT (Ctrl-C) and SIGTERM.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM received after this call. The handlers are
/// installed by the call itself, not when the future is first polled, so a signal that comes
/// before then is caught too; from then on these signals no longer end the process by
/// themselves: the command must. A signal whose handler cannot be installed keeps its default
/// action. Call it from within the runtime.
pub fn interrupted() -> impl Future<Output = ()> {
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let terminate = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let interrupt = async {
            match int.as_mut() {
                Some(int) => {
                    int.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = terminate => {}
            () = interrupt => {}
        }
    }
}
