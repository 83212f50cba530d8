//! GoHighLevel API v2 for whatsnap: everything the GHL side of the round trip needs.
//! [`client`] makes the calls for a location (contacts, tags, users, inbound messages and
//! delivery statuses), each paced by [`ratelimit`], the per-location budget GHL allows, and
//! retried where GHL's failure is passing; [`oauth`] installs the app and keeps its tokens
//! fresh; [`signature`] checks that what arrives from GHL was signed by GHL, and [`webhook`]
//! reads it.

pub mod client;
pub mod oauth;
pub mod ratelimit;
pub mod signature;
pub mod sso;
pub mod webhook;

pub use client::{
    ContactUpdate, ContactUpsert, DeliveryStatus, GhlClient, GhlConfig, GhlContact, GhlError,
    GhlUser, InboundMessage, MessageDirection, PostedMessage, RetryPolicy, StatusError,
    StatusUpdate, UpsertedContact,
};
pub use oauth::{TokenGrant, UserType};
pub use ratelimit::RateLimiter;
