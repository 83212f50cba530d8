//! Who calls whatsnap's API, and what they may touch.
//!
//! Every gRPC call carries `authorization: Bearer <token>`. A token is an API token (issued by
//! `whatsnap tokens create`, shown once, kept only as its SHA-256 in its own stream of the log,
//! expiring, revocable) or the deployment's service token (internal traffic between services).
//! [`Authorization`] is the one tower layer every gRPC server runs: it finds the caller
//! ([`Caller`]: a role and the locations it may touch), looks the RPC up in one table
//! ([`policy::RULES`]: whether it reads or writes, and where its location is in the request), and
//! refuses what the caller may not do before any service sees the call. An RPC missing from the
//! table is refused, so a new RPC cannot slip through unchecked.

mod caller;
mod client;
mod layer;
pub mod policy;
mod token;
mod tokens;

pub use caller::{Access, Caller, Locations, Role};
pub use client::{AuthedChannel, Bearer, Transport, authed, authed_in_process};
pub use layer::{Authorization, Authorize};
pub use token::{ApiToken, TokenError, TokenHash, token_stream};
pub use tokens::{Authenticator, IssueError, TokenState, issue, revoke};
