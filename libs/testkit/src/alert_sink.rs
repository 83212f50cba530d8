//! An alert webhook for tests: takes Slack's `{"text": …}` as whatsnap's alerts post it, and
//! keeps the texts.

use std::sync::{Arc, Mutex};

/// What an alert webhook received.
#[derive(Clone, Default)]
pub struct AlertSink(Arc<Mutex<Vec<String>>>);

impl AlertSink {
    /// Serves the sink on a loopback port; its URL, for `--alert-webhook-url`.
    pub async fn start(&self) -> String {
        let sink = self.clone();
        let app = axum::Router::new().route(
            "/alert",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| async move {
                let text = body["text"].as_str().unwrap_or_default().to_owned();
                sink.0.lock().expect("alert sink lock").push(text);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/alert")
    }

    /// Every alert text received, in order.
    pub fn texts(&self) -> Vec<String> {
        self.0.lock().expect("alert sink lock").clone()
    }
}
