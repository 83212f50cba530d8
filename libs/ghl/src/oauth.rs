//! GHL's OAuth 2.0 for marketplace apps (`ghl-api.md` §5): the page where a user installs the
//! app on a location, the code exchange, refreshes (each one returns a new refresh token,
//! which replaces the old), and location tokens made from an agency token. A Private
//! Integration Token needs none of this: it is used as an access token as it is.

use std::fmt;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use url::Url;
use whatsnap_events::LocationId;

use crate::client::{Api, Call, GhlClient, GhlError, number, parse};

/// Whose token to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserType {
    /// A sub-account (location) token.
    Location,
    /// An agency token.
    Company,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Location => "Location",
            Self::Company => "Company",
        }
    }
}

impl fmt::Display for UserType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What GHL's token endpoints grant. `Debug` shows neither token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: String,
    /// After a refresh, the new refresh token: the old one is spent, store this one.
    pub refresh_token: Option<String>,
    /// Seconds (about a day).
    pub expires_in: Option<u64>,
    /// Space separated.
    pub scope: Option<String>,
    /// `Location` or `Company`.
    pub user_type: Option<String>,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    /// Who installed the app.
    pub user_id: Option<String>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"********")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "********"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("user_type", &self.user_type)
            .field("location_id", &self.location_id)
            .field("company_id", &self.company_id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawGrant {
    #[serde(rename = "access_token")]
    access_token: Option<String>,
    #[serde(rename = "refresh_token")]
    refresh_token: Option<String>,
    #[serde(rename = "expires_in", default, deserialize_with = "number")]
    expires_in: Option<u64>,
    scope: Option<String>,
    user_type: Option<String>,
    location_id: Option<String>,
    company_id: Option<String>,
    user_id: Option<String>,
}

impl RawGrant {
    fn into_grant(self) -> Result<TokenGrant, GhlError> {
        let access_token = self
            .access_token
            .filter(|token| !token.is_empty())
            .ok_or_else(|| GhlError::Protocol("the token grant has no access_token".into()))?;
        Ok(TokenGrant {
            access_token,
            refresh_token: self.refresh_token.filter(|token| !token.is_empty()),
            expires_in: self.expires_in,
            scope: self.scope,
            user_type: self.user_type,
            location_id: self.location_id,
            company_id: self.company_id,
            user_id: self.user_id,
        })
    }
}

impl GhlClient {
    /// The page where a user picks the location to install the app on:
    /// `<marketplace_base>/v2/oauth/chooselocation?response_type=code&redirect_uri=..&client_id=..&scope=..[&state=..]`.
    pub fn authorize_url(&self, state: Option<&str>) -> Result<String, GhlError> {
        let config = self.config();
        let client_id = configured(config.client_id.as_deref(), "the OAuth client id")?;
        let redirect_uri = configured(config.redirect_uri.as_deref(), "the OAuth redirect uri")?;
        let base = &config.marketplace_base;
        let mut url = Url::parse(base)
            .map_err(|e| GhlError::NotConfigured(format!("the marketplace base {base:?}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| {
                GhlError::NotConfigured(format!("the marketplace base {base:?} has no path"))
            })?
            .pop_if_empty()
            .extend(["v2", "oauth", "chooselocation"]);
        let scope = config.scopes.join(" ");
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", client_id)
            .append_pair("scope", &scope);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        // Form encoding writes a space as `+` (and a `+` as `%2B`); `%20` reads as a space
        // to every server, `+` only to those that decode forms.
        url.set_query(Some(&query.finish().replace('+', "%20")));
        Ok(url.into())
    }

    /// Trades the code GHL sent to the redirect uri for a location's tokens.
    #[tracing::instrument(skip_all)]
    pub async fn exchange_code(&self, code: &str) -> Result<TokenGrant, GhlError> {
        let (client_id, client_secret) = self.client_credentials()?;
        let mut form = vec![
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("grant_type", "authorization_code"),
            ("code", code),
            ("user_type", UserType::Location.as_str()),
        ];
        if let Some(redirect_uri) = self.config().redirect_uri.as_deref() {
            form.push(("redirect_uri", redirect_uri));
        }
        self.token(&form).await
    }

    /// New tokens for a refresh token. The grant carries the new refresh token; the one passed
    /// in must not be used again.
    #[tracing::instrument(skip_all, fields(user_type = %user_type))]
    pub async fn refresh(
        &self,
        refresh_token: &str,
        user_type: UserType,
    ) -> Result<TokenGrant, GhlError> {
        let (client_id, client_secret) = self.client_credentials()?;
        self.token(&[
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("user_type", user_type.as_str()),
        ])
        .await
    }

    /// A location's token made from an agency token (`POST /oauth/locationToken`).
    #[tracing::instrument(skip_all, fields(location_id = %location))]
    pub async fn location_token(
        &self,
        agency_token: &str,
        company_id: &str,
        location: &LocationId,
    ) -> Result<TokenGrant, GhlError> {
        let body = self
            .send(
                Call::new(
                    "location token",
                    Api::LocationToken,
                    Method::POST,
                    &["oauth", "locationToken"],
                )
                .bearer(agency_token)
                .form(&[("companyId", company_id), ("locationId", location.as_str())]),
            )
            .await?;
        parse::<RawGrant>(&body)?.into_grant()
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<TokenGrant, GhlError> {
        let body = self
            // A code or a refresh token is spent by the first request GHL acts on: never sent
            // twice blindly.
            .send(
                Call::new("token", Api::Token, Method::POST, &["oauth", "token"])
                    .once()
                    .form(form),
            )
            .await?;
        parse::<RawGrant>(&body)?.into_grant()
    }

    fn client_credentials(&self) -> Result<(&str, &str), GhlError> {
        let config = self.config();
        Ok((
            configured(config.client_id.as_deref(), "the OAuth client id")?,
            configured(config.client_secret.as_deref(), "the OAuth client secret")?,
        ))
    }
}

fn configured<'a>(value: Option<&'a str>, what: &str) -> Result<&'a str, GhlError> {
    value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| GhlError::NotConfigured(format!("{what} is not set")))
}
