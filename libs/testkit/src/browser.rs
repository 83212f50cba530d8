//! A real browser for the dashboard's tests: Debian's headless Chromium, driven over WebDriver
//! by chromedriver on a free port, and the folder its screenshots go to.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

use crate::{ChildGuard, free_port};

/// Where the dashboard's screenshots go: `target/tmp/dashboard/` (copied into
/// `docs/screenshots/` for the README).
pub fn screenshot_dir() -> PathBuf {
    // A test runs from `<target>/<profile>/deps/`; cargo gives integration tests
    // `<target>/tmp` as CARGO_TARGET_TMPDIR at build time, which a library cannot see.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("tmp").join("dashboard");
    std::fs::create_dir_all(&dir).expect("the screenshots' folder");
    dir
}

/// chromedriver on a free port, with Debian's Chromium (1000×760, headless). Keep the guard for
/// as long as the client is used.
pub async fn browser() -> (ChildGuard, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver is not installed: `apt-get install chromium chromium-driver` (.ci/run does)",
        );
    let driver = ChildGuard::new(driver);
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,760"],
        }
    });
    let capabilities = capabilities
        .as_object()
        .expect("capabilities are an object")
        .clone();
    let mut builder = ClientBuilder::rustls().expect("TLS roots for the WebDriver client");
    builder.capabilities(capabilities);
    let mut last_error = None;
    for _ in 0..100 {
        match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return (driver, client),
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start: {last_error:?}");
}
