//! Graceful shutdown: SIGTERM (what orchestrators send) and SIGINT (Ctrl-C) trip one
//! [`CancellationToken`]. Components watch the token, stop taking new work, finish what they
//! hold (flush the batch, commit) and return; `main` then exits.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as ShutdownToken;

/// Returns a token that is cancelled on the first SIGTERM or SIGINT. A second signal is left to
/// the default handler only once the token is dropped, so an operator's repeated Ctrl-C does not
/// cut a flush short; use SIGKILL to stop a stuck process.
///
/// Must be called inside a tokio runtime.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            // Someone else (a test, a fatal error) started the shutdown.
            () = trigger.cancelled() => return,
        };
        tracing::info!(signal = name, "shutdown requested");
        trigger.cancel();
    });
    Ok(token)
}
