//! Twilio Programmable Messaging for whatsnap: validating the signatures of Twilio's webhooks
//! ([`signature`]), reading them ([`webhook`]), and the REST calls an account needs — checking
//! its credentials and number, sending a message ([`client`]).

pub mod client;
pub mod connector;
pub mod signature;
pub mod webhook;

pub use client::{Credentials, DEFAULT_BASE_URL, Outgoing, SentMessage, TwilioClient, TwilioError};
pub use connector::TwilioConnector;
