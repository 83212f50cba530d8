//! The Twilio client against the fake Twilio: adding an account checks what a user could get
//! wrong and says which; sending maps Twilio's refusals to reasons; status callbacks arrive
//! signed and validate.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use whatsnap_testkit::{FakeTwilio, FakeTwilioAccount};
use whatsnap_twilio::webhook::{MessageStatus, parse_status};
use whatsnap_twilio::{Credentials, Outgoing, TwilioClient, TwilioError, signature};

/// What the callback receiver saw: whether the signature validated, and the parameters.
type Received = Arc<Mutex<Vec<(bool, Vec<(String, String)>)>>>;

const SID: &str = "AC00000000000000000000000000000001";
const TOKEN: &str = "token-of-account-one";
const NUMBER: &str = "+15005550006";

async fn twilio() -> (FakeTwilio, TwilioClient) {
    let fake = FakeTwilio::start().await.unwrap();
    fake.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: TOKEN.into(),
        status: "active".into(),
        numbers: vec![(NUMBER.into(), true), ("+15005550007".into(), false)],
    });
    fake.add_account(FakeTwilioAccount {
        sid: "AC00000000000000000000000000000002".into(),
        auth_token: "t2".into(),
        status: "suspended".into(),
        numbers: vec![],
    });
    let client = TwilioClient::new(&fake.base_url()).unwrap();
    (fake, client)
}

fn message<'a>(to: &'a str, callback: Option<&'a str>) -> Outgoing<'a> {
    Outgoing {
        from: NUMBER,
        to,
        body: "Yes, until 6pm",
        media_urls: &[],
        status_callback: callback,
    }
}

#[tokio::test]
async fn adding_an_account_checks_credentials_account_and_number() {
    let (_fake, client) = twilio().await;
    let good = Credentials::new(SID, TOKEN);
    client.verify(&good, NUMBER).await.unwrap();

    let err = client
        .verify(&Credentials::new(SID, "wrong"), NUMBER)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TwilioError::Rejected {
                code: Some(20003),
                http_status: 401,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("Account SID or Auth Token"),
        "{err}"
    );

    let err = client
        .verify(
            &Credentials::new("AC00000000000000000000000000000002", "t2"),
            NUMBER,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Twilio account AC00000000000000000000000000000002 is suspended, not active"
    );

    let err = client.verify(&good, "+15005550099").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Twilio account does not own the number +15005550099"
    );
    let err = client.verify(&good, "+15005550007").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Twilio number +15005550007 cannot send SMS"
    );
}

#[tokio::test]
async fn refusals_become_reasons_and_outages_are_retryable() {
    let (fake, client) = twilio().await;
    let credentials = Credentials::new(SID, TOKEN);
    fake.opt_out("+14155550100");
    let err = client
        .send(&credentials, &message("+14155550100", None))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the recipient replied STOP and unsubscribed from this number (Twilio 21610)"
    );
    assert!(!err.is_retryable());
    let err = client
        .send(&credentials, &message("12345", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TwilioError::Rejected {
                code: Some(21211),
                ..
            }
        ),
        "{err:?}"
    );

    fake.fail_next_sends(1);
    let err = client
        .send(&credentials, &message("+14155550101", None))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let sent = client
        .send(&credentials, &message("+14155550101", None))
        .await
        .unwrap();
    assert_eq!(sent.status, MessageStatus::Queued);
    let recorded = fake.sent();
    assert_eq!(recorded.len(), 1, "refused sends are not recorded as sent");
    assert_eq!(
        (recorded[0].from.as_str(), recorded[0].to.as_str()),
        (NUMBER, "+14155550101")
    );
}

#[tokio::test]
async fn a_status_callback_arrives_signed_with_the_accounts_token() {
    let (fake, client) = twilio().await;
    // A receiver that validates as whatsnap's gateway will.
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!(
        "http://{}/webhooks/twilio/status",
        listener.local_addr().unwrap()
    );
    let url = callback.clone();
    let app = Router::new()
        .route(
            "/webhooks/twilio/status",
            post(
                move |State(received): State<Received>,
                      headers: HeaderMap,
                      axum::Form(params): axum::Form<Vec<(String, String)>>| async move {
                    let header = headers
                        .get("x-twilio-signature")
                        .and_then(|v| v.to_str().ok());
                    let valid = signature::validate_form(TOKEN, &url, &params, header).is_ok();
                    received.lock().unwrap().push((valid, params));
                    ""
                },
            ),
        )
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sent = client
        .send(
            &Credentials::new(SID, TOKEN),
            &message("+14155550102", Some(&callback)),
        )
        .await
        .unwrap();
    assert_eq!(
        fake.report_status(&sent.sid, "undelivered", Some(30007))
            .await
            .unwrap(),
        200
    );
    let received = received.lock().unwrap();
    let (valid, params) = &received[0];
    assert!(valid, "the callback's signature does not validate");
    let update = parse_status(params).unwrap();
    assert_eq!(update.message_sid, sent.sid);
    assert_eq!(update.status, MessageStatus::Undelivered);
    assert_eq!(update.error_code, Some(30007));
}
