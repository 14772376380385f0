//! SIGTERM trips the shutdown token. In its own test binary because it signals the whole
//! process.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

#[tokio::test]
async fn sigterm_cancels_the_shutdown_token() {
    let token = ledgerline_service::shutdown::on_signal().unwrap();
    assert!(!token.is_cancelled());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("SIGTERM did not cancel the token within 5s");
}
