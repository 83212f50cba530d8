//! A text as Twilio delivers it to a number's webhook: a form, signed over the URL with the
//! account's Auth Token.

use std::net::SocketAddr;

use crate::http_post;

/// What Twilio posts for one inbound SMS.
pub struct TwilioText<'a> {
    pub account_sid: &'a str,
    pub message_sid: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub body: &'a str,
    /// More of Twilio's parameters (e.g. `ProfileName`), or replacements of the ones above.
    pub extra: &'a [(&'a str, &'a str)],
}

impl TwilioText<'_> {
    /// Posts the text to `http` at `path`, signed with `auth_token`; the status and body.
    pub async fn post(
        &self,
        http: SocketAddr,
        path: &str,
        auth_token: &str,
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{http}{path}");
        let params: Vec<(String, String)> = [
            ("MessageSid", self.message_sid),
            ("SmsSid", self.message_sid),
            ("AccountSid", self.account_sid),
            ("From", self.from),
            ("To", self.to),
            ("Body", self.body),
            ("NumMedia", "0"),
            ("ApiVersion", "2010-04-01"),
        ]
        .iter()
        .filter(|(k, _)| !self.extra.iter().any(|(e, _)| e == k))
        .chain(self.extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let signature = whatsnap_twilio::signature::sign(auth_token, &url, &params);
        let form = serde_urlencoded::to_string(&params)?;
        http_post(
            http,
            path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", &signature),
            ],
            Some(form.as_bytes()),
        )
        .await
    }
}
