//! A location's connection to GHL, from its own stream `<location>.ghl.install`: whether the app
//! is installed, and the newest tokens. Pure `evolve`; the tokens stay sealed here.

use chrono::{DateTime, Utc};
use whatsnap_events::{AggregateKind, Event, GhlTokenKind, GhlTokensIssued, LocationId, StreamId};
use whatsnap_eventstore::{Aggregate, Aggregates, EventStore};
use whatsnap_rpc::ServiceError;

/// The stream of a location's GHL connection.
pub fn stream(location: &LocationId) -> StreamId {
    StreamId::new(location.clone(), AggregateKind::Ghl, "install").expect("a valid token")
}

/// The stream of an agency's (company's) OAuth tokens, from which its locations' tokens are
/// made as they install the app; `None` for a company id that cannot name a stream.
pub fn company_stream(company_id: &str) -> Option<StreamId> {
    let company = LocationId::parse(format!("company-{company_id}")).ok()?;
    StreamId::new(company, AggregateKind::Ghl, "agency").ok()
}

/// The connection as the events of `stream` (a location's or an agency's) leave it.
pub async fn load(store: &dyn EventStore, stream: &StreamId) -> Result<Connection, ServiceError> {
    Ok(Aggregates::new(store)
        .load::<Connection>(stream)
        .await
        .map_err(|e| ServiceError::unloadable(stream, e))?
        .state)
}

#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub installed: bool,
    /// The agency the location was installed from, as GHL's INSTALL said.
    pub company_id: Option<String>,
    /// The newest tokens, unless the app was uninstalled after they were issued.
    pub tokens: Option<GhlTokensIssued>,
    pub version: u64,
}

impl Aggregate for Connection {
    fn evolve(self, event: &Event, version: u64) -> Self {
        Connection::evolve(self, event, version)
    }
}

impl Connection {
    pub fn evolve(mut self, event: &Event, version: u64) -> Self {
        self.version = version;
        match event {
            Event::GhlInstalled(e) => {
                self.installed = true;
                if e.company_id.is_some() {
                    self.company_id = e.company_id.clone();
                }
            }
            Event::GhlUninstalled(_) => {
                self.installed = false;
                self.tokens = None;
            }
            Event::GhlTokensIssued(tokens) => self.tokens = Some(tokens.clone()),
            _ => {}
        }
        self
    }

    /// Whether the access token must be refreshed before use: it is an OAuth token that expires
    /// within `margin`.
    pub fn needs_refresh(&self, now: DateTime<Utc>, margin: chrono::Duration) -> bool {
        self.tokens.as_ref().is_some_and(|t| {
            t.kind == GhlTokenKind::Oauth && t.expires_at.is_some_and(|at| at - margin <= now)
        })
    }

    /// How the location is connected, in words for `SyncStatus`.
    pub fn describe(&self) -> String {
        match (&self.tokens, self.installed) {
            (Some(t), _) if t.kind == GhlTokenKind::Oauth => "oauth".into(),
            (Some(_), _) => "private_integration".into(),
            (None, true) => "installed, but no token yet (complete the OAuth flow)".into(),
            (None, false) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsnap_events::{GhlInstalled, GhlUninstalled};

    fn tokens(kind: GhlTokenKind, expires_at: Option<DateTime<Utc>>) -> Event {
        let key = whatsnap_secrets::SecretKey::from_base64(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .expect("a 32-byte key");
        Event::from(GhlTokensIssued {
            kind,
            access_token: key.seal("a"),
            refresh_token: Some(key.seal("r")),
            expires_at,
            user_type: "Location".into(),
            company_id: None,
            scope: None,
        })
    }

    #[test]
    fn an_uninstall_drops_the_tokens_and_a_new_install_does_not_bring_them_back() {
        let installed = Event::from(GhlInstalled {
            company_id: None,
            install_type: "Location".into(),
            scopes: vec![],
        });
        let c = Connection::default()
            .evolve(&installed, 1)
            .evolve(&tokens(GhlTokenKind::Oauth, None), 2)
            .evolve(&Event::from(GhlUninstalled { app_id: None }), 3);
        assert!(c.tokens.is_none() && !c.installed);
        let c = c.evolve(&installed, 4);
        assert!(c.installed && c.tokens.is_none());
        assert_eq!(c.version, 4);
    }

    #[test]
    fn only_oauth_tokens_near_expiry_need_a_refresh() {
        let now = Utc::now();
        let margin = chrono::Duration::minutes(5);
        let soon = Connection::default().evolve(
            &tokens(
                GhlTokenKind::Oauth,
                Some(now + chrono::Duration::minutes(2)),
            ),
            1,
        );
        assert!(soon.needs_refresh(now, margin));
        let later = Connection::default().evolve(
            &tokens(GhlTokenKind::Oauth, Some(now + chrono::Duration::hours(20))),
            1,
        );
        assert!(!later.needs_refresh(now, margin));
        let pit = Connection::default().evolve(&tokens(GhlTokenKind::PrivateIntegration, None), 1);
        assert!(!pit.needs_refresh(now, margin));
    }
}
