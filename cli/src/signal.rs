//! The signals that stop a command: SIGINT (Ctrl-C) and SIGTERM.

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM received after it is first polled. Once
/// polled, these signals no longer end the process by themselves: the command must.
pub async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // No SIGTERM handler could be installed: SIGTERM keeps its default action.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
