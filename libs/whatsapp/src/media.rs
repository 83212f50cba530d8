//! A reply as WhatsApp messages: its text, or its attachments fetched from their URLs and
//! uploaded (encrypted) to WhatsApp's media servers with the crate's `upload`.

use base64::Engine as _;
use whatsapp_rust::Client;
use whatsapp_rust::download::MediaType;
use whatsapp_rust::media::{
    AudioOptions, DocumentOptions, ImageOptions, VideoOptions, audio_message, document_message,
    image_message, video_message,
};
use whatsapp_rust::proto_helpers::MessageBuilderExt as _;
use whatsapp_rust::upload::UploadOptions;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsnap_connector::{Outgoing, SendError};
use whatsnap_events::Attachment;

/// What kind of WhatsApp message carries an attachment, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

impl MediaKind {
    pub fn of(content_type: &str) -> Self {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.split_once('/') {
            // WhatsApp shows these inline; anything else goes as a document.
            Some(("image", "jpeg" | "png" | "jpg")) => Self::Image,
            Some(("video", "mp4" | "3gpp")) => Self::Video,
            Some(("audio", _)) => Self::Audio,
            _ => Self::Document,
        }
    }

    /// Whether WhatsApp shows a caption under this kind of message.
    pub fn has_caption(self) -> bool {
        !matches!(self, Self::Audio)
    }

    fn media_type(self) -> MediaType {
        match self {
            Self::Image => MediaType::Image,
            Self::Video => MediaType::Video,
            Self::Audio => MediaType::Audio,
            Self::Document => MediaType::Document,
        }
    }
}

/// The file name an attachment is shown under: its own, or the last segment of its URL.
pub fn file_name(attachment: &Attachment) -> String {
    attachment
        .file_name
        .clone()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            url::Url::parse(&attachment.url).ok().and_then(|url| {
                url.path_segments()
                    .and_then(|mut segments| segments.next_back().map(str::to_owned))
                    .filter(|name| !name.is_empty())
            })
        })
        .unwrap_or_else(|| "attachment".to_owned())
}

/// The HTTP client that fetches attachments.
pub(crate) fn http_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).build()
}

/// The bytes and content type of a `data:` URL (`data:<type>;base64,<data>`), as engines and
/// whatsnap's media store hand files over.
fn data_url(url: &str) -> Option<(Vec<u8>, Option<String>)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let content_type = meta.strip_suffix(";base64")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    Some((
        bytes,
        (!content_type.is_empty()).then(|| content_type.to_owned()),
    ))
}

/// An attachment's bytes and content type.
async fn fetch(
    http: &reqwest::Client,
    max_bytes: usize,
    attachment: &Attachment,
) -> Result<(Vec<u8>, String), SendError> {
    let shown = match &attachment.file_name {
        Some(name) => name.as_str(),
        None if attachment.url.starts_with("data:") => "(data)",
        None => attachment.url.as_str(),
    };
    let unavailable = |detail: String| SendError::Refused {
        reason: format!("the attachment {shown} could not be fetched: {detail}"),
        code: Some("attachment_unavailable".into()),
    };
    if attachment.url.starts_with("data:") {
        let (bytes, content_type) = data_url(&attachment.url)
            .ok_or_else(|| unavailable("not a base64 data: URL".into()))?;
        if bytes.len() > max_bytes {
            return Err(unavailable(format!("larger than {max_bytes} bytes")));
        }
        let content_type = attachment
            .content_type
            .clone()
            .or(content_type)
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        return Ok((bytes, content_type));
    }
    let response = http
        .get(&attachment.url)
        .send()
        .await
        .map_err(|err| SendError::NotConnected(format!("fetching the attachment: {err}")))?;
    let status = response.status();
    if status.is_server_error() {
        return Err(SendError::NotConnected(format!(
            "fetching the attachment: status {status}"
        )));
    }
    if !status.is_success() {
        return Err(unavailable(format!("status {status}")));
    }
    if response
        .content_length()
        .is_some_and(|length| length > max_bytes as u64)
    {
        return Err(unavailable(format!("larger than {max_bytes} bytes")));
    }
    let content_type = attachment
        .content_type
        .clone()
        .or_else(|| {
            response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let bytes = response
        .bytes()
        .await
        .map_err(|err| SendError::NotConnected(format!("fetching the attachment: {err}")))?;
    if bytes.len() > max_bytes {
        return Err(unavailable(format!("larger than {max_bytes} bytes")));
    }
    Ok((bytes.to_vec(), content_type))
}

/// The messages that carry `outgoing`, in order; every attachment is uploaded before this
/// returns, so nothing has been sent if it fails.
pub(crate) async fn messages(
    client: &Client,
    http: &reqwest::Client,
    max_bytes: usize,
    outgoing: &Outgoing,
) -> Result<Vec<wa::Message>, SendError> {
    let body = outgoing.body.trim();
    let mut caption = (!body.is_empty()).then(|| body.to_owned());
    if outgoing.attachments.is_empty() {
        return Ok(caption.map(wa::Message::text).into_iter().collect());
    }
    let mut media = Vec::new();
    for attachment in &outgoing.attachments {
        let (bytes, content_type) = fetch(http, max_bytes, attachment).await?;
        let kind = MediaKind::of(&content_type);
        let upload = client
            .upload(bytes, kind.media_type(), UploadOptions::default())
            .await
            .map_err(|err| SendError::NotConnected(format!("uploading the attachment: {err}")))?;
        let mimetype = Some(content_type);
        let message = match kind {
            MediaKind::Image => image_message(
                upload,
                ImageOptions {
                    caption: caption.take(),
                    mimetype,
                    ..ImageOptions::default()
                },
            ),
            MediaKind::Video => video_message(
                upload,
                VideoOptions {
                    caption: caption.take(),
                    mimetype,
                    ..VideoOptions::default()
                },
            ),
            MediaKind::Audio => audio_message(
                upload,
                AudioOptions {
                    mimetype,
                    ..AudioOptions::default()
                },
            ),
            MediaKind::Document => document_message(
                upload,
                DocumentOptions {
                    caption: caption.take(),
                    mimetype,
                    file_name: Some(file_name(attachment)),
                    ..DocumentOptions::default()
                },
            ),
        };
        media.push(message);
    }
    // Text no attachment could carry (only audio came) goes first, on its own.
    let mut messages: Vec<wa::Message> = caption.map(wa::Message::text).into_iter().collect();
    messages.extend(media);
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    use super::*;

    /// A file server: `/menu.pdf`, `/photo` (no content type given by the reply), `/big`,
    /// `/gone` (404) and `/down` (503).
    async fn files() -> String {
        let app = Router::new()
            .route(
                "/menu.pdf",
                get(|| async { ([(header::CONTENT_TYPE, "application/pdf")], "%PDF-1.7") }),
            )
            .route(
                "/photo",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "image/jpeg")],
                        vec![0xFFu8, 0xD8, 0xFF],
                    )
                }),
            )
            .route("/big", get(|| async { vec![0u8; 2048] }))
            .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
            .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn attachment(url: String) -> Attachment {
        Attachment {
            url,
            content_type: None,
            file_name: None,
        }
    }

    #[tokio::test]
    async fn an_attachment_is_fetched_with_its_content_type() {
        let base = files().await;
        let http = http_client(std::time::Duration::from_secs(10)).unwrap();
        let (bytes, content_type) = fetch(&http, 1024, &attachment(format!("{base}/photo")))
            .await
            .unwrap();
        assert_eq!(bytes, vec![0xFF, 0xD8, 0xFF]);
        assert_eq!(MediaKind::of(&content_type), MediaKind::Image);
        let given = Attachment {
            content_type: Some("application/x-custom".into()),
            ..attachment(format!("{base}/menu.pdf"))
        };
        let (_, content_type) = fetch(&http, 1024, &given).await.unwrap();
        assert_eq!(
            content_type, "application/x-custom",
            "the reply's own type wins"
        );
    }

    #[tokio::test]
    async fn a_file_handed_over_as_data_needs_no_fetching() {
        let http = http_client(std::time::Duration::from_secs(10)).unwrap();
        let pdf = Attachment {
            url: "data:application/pdf;base64,JVBERi0=".into(),
            content_type: None,
            file_name: Some("menu.pdf".into()),
        };
        let (bytes, content_type) = fetch(&http, 1024, &pdf).await.unwrap();
        assert_eq!(bytes, b"%PDF-");
        assert_eq!(content_type, "application/pdf");
        let garbled = Attachment {
            url: "data:application/pdf;base64,%%%".into(),
            ..pdf.clone()
        };
        assert!(matches!(
            fetch(&http, 1024, &garbled).await,
            Err(SendError::Refused { .. })
        ));
        assert!(matches!(
            fetch(&http, 2, &pdf).await,
            Err(SendError::Refused { .. })
        ));
    }

    #[tokio::test]
    async fn an_attachment_that_cannot_be_fetched_sends_nothing_and_says_whether_to_retry() {
        let base = files().await;
        let http = http_client(std::time::Duration::from_secs(10)).unwrap();
        let gone = fetch(&http, 1024, &attachment(format!("{base}/gone")))
            .await
            .unwrap_err();
        assert!(
            matches!(&gone, SendError::Refused { code: Some(code), .. } if code == "attachment_unavailable"),
            "{gone:?}"
        );
        let big = fetch(&http, 1024, &attachment(format!("{base}/big")))
            .await
            .unwrap_err();
        assert!(matches!(big, SendError::Refused { .. }), "{big:?}");
        let down = fetch(&http, 1024, &attachment(format!("{base}/down")))
            .await
            .unwrap_err();
        assert!(matches!(down, SendError::NotConnected(_)), "{down:?}");
        assert!(down.is_retryable() && down.certainly_unsent());
    }

    #[test]
    fn content_types_pick_the_message_kind() {
        assert_eq!(MediaKind::of("image/jpeg"), MediaKind::Image);
        assert_eq!(MediaKind::of("IMAGE/PNG; q=1"), MediaKind::Image);
        assert_eq!(MediaKind::of("image/svg+xml"), MediaKind::Document);
        assert_eq!(MediaKind::of("video/mp4"), MediaKind::Video);
        assert_eq!(MediaKind::of("audio/ogg; codecs=opus"), MediaKind::Audio);
        assert_eq!(MediaKind::of("application/pdf"), MediaKind::Document);
        assert_eq!(MediaKind::of(""), MediaKind::Document);
        assert!(!MediaKind::Audio.has_caption());
    }

    #[test]
    fn a_document_is_named_by_its_file_name_or_url() {
        let named = Attachment {
            url: "https://cdn.example/x/invoice.pdf?sig=1".into(),
            content_type: None,
            file_name: None,
        };
        assert_eq!(file_name(&named), "invoice.pdf");
        let given = Attachment {
            file_name: Some("Quote.pdf".into()),
            ..named
        };
        assert_eq!(file_name(&given), "Quote.pdf");
    }
}
