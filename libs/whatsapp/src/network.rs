//! Where the clients connect: WhatsApp's servers, or what a test gives instead.

use std::sync::Arc;

use async_trait::async_trait;
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};

/// Where the client connects and makes HTTP requests (media, its version): WhatsApp's servers
/// unless [`EmbeddedConnector::with_network`](crate::EmbeddedConnector::with_network) says
/// otherwise.
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<dyn TransportFactory>,
    pub http: Arc<dyn HttpClient>,
}

/// A shared factory as the builder takes one (by value).
pub(crate) struct SharedTransport(pub(crate) Arc<dyn TransportFactory>);

#[async_trait]
impl TransportFactory for SharedTransport {
    async fn create_transport(
        &self,
    ) -> whatsapp_rust::anyhow::Result<(
        Arc<dyn Transport>,
        whatsapp_rust::async_channel::Receiver<TransportEvent>,
    )> {
        self.0.create_transport().await
    }
}

/// A shared HTTP client as the builder takes one (by value).
pub(crate) struct SharedHttp(pub(crate) Arc<dyn HttpClient>);

#[async_trait]
impl HttpClient for SharedHttp {
    async fn execute(&self, request: HttpRequest) -> whatsapp_rust::anyhow::Result<HttpResponse> {
        self.0.execute(request).await
    }
}
