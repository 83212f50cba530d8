//! The official WhatsApp Cloud API (Meta's Graph API) behind whatsnap's connector seam: a
//! WhatsApp Business number reached without a QR code, a phone or a ban risk. An account is one
//! phone number id of a WhatsApp Business Account with an access token that may send from it,
//! and the Meta app's secret, which signs the webhooks Meta posts.
//!
//! - [`client`] speaks the Graph API: the number's own record (checked when an account is
//!   added), sends, and the media a customer sends (a media id resolved to a short-lived URL,
//!   then downloaded with the token).
//! - [`webhook`] checks `X-Hub-Signature-256` and reads what Meta posts: `messages[]` received,
//!   `statuses[]` of what the number sent, and `message_echoes[]` (messages typed in the
//!   WhatsApp Business app on a number that also runs on the Cloud API).
//! - [`template`] reads the `/template name language [params…]` form a GHL user types to send
//!   one of the number's approved templates: outside the 24-hour customer service window it is
//!   the only thing WhatsApp delivers.
//! - [`CloudConnector`] is the seam itself: engine `cloud` of the WhatsApp platform.
//!
//! Facts follow `shared/reference/connectors.md` §2.3 and Meta's Cloud API reference. The
//! Cloud API has no way to search what a number sent: a send whose answer was lost is reported
//! failed (it may or may not have left) rather than sent a second time.

pub mod client;
mod connector;
pub mod template;
pub mod webhook;

pub use client::{CloudClient, CloudConfig, GraphError, PhoneNumberInfo};
pub use connector::{CloudConnector, CloudSettings, ENGINE, SEND, webhook_url};
pub use webhook::{SIGNATURE_HEADER, sign};
