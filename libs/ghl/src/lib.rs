//! GoHighLevel API v2 for whatsnap. So far: [`ratelimit`], the per-location pacing every GHL
//! call goes through, and [`signature`], the check of what GHL sends us. The client itself (OAuth and Private Integration Tokens, contacts,
//! conversations, users) is the next part of the GHL round trip (issue #4).

pub mod ratelimit;
pub mod signature;
