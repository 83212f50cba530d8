//! Files that arrive with messages — a WhatsApp photo, a voice note, a PDF — as an engine hands
//! them over (`data:` URLs), kept in whatsnap's read database sealed under the deployment's
//! personal data key, and served by the gateway at `/media/<id>`: an unguessable URL (a random
//! 128-bit id) that GHL fetches to show the attachment in the conversation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::{Any, Pool, Row};
use uuid::Uuid;
use whatsnap_events::{Attachment, LocationId};
use whatsnap_secrets::{Sealed, SecretKey};

/// The largest file kept: WhatsApp's own limit for photos and videos is 16 MB.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS whatsnap_media (media_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, content_type TEXT NOT NULL, file_name TEXT, data TEXT NOT NULL, created_at TEXT NOT NULL)",
];

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the file is {size} bytes, more than the {MAX_BYTES} whatsnap keeps")]
    TooLarge { size: usize },
    #[error("not a base64 data: URL")]
    NotDataUrl,
    #[error("the stored file cannot be opened: {0}")]
    Sealed(String),
    #[error("media store: {0}")]
    Database(#[from] sqlx::Error),
}

/// A file as it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub content_type: String,
    pub file_name: Option<String>,
    pub bytes: Vec<u8>,
}

/// The files of every location, in the read database.
#[derive(Clone, Debug)]
pub struct MediaStore {
    db: Pool<Any>,
    key: SecretKey,
}

impl MediaStore {
    /// Opens the store, creating its table when it is not there.
    pub async fn open(db: Pool<Any>, key: SecretKey) -> Result<Self, MediaError> {
        for migration in MIGRATIONS {
            sqlx::query(migration).execute(&db).await?;
        }
        Ok(Self { db, key })
    }

    /// Re-seals under this store's key the files that `legacy` (the secret key) sealed before
    /// whatsnap had a personal data key; how many.
    pub async fn reseal_from(
        &self,
        legacy: &SecretKey,
    ) -> Result<u64, whatsnap_pii::reseal::ResealError> {
        let column = whatsnap_pii::reseal::SealedColumn {
            table: "whatsnap_media",
            keys: &["media_id"],
            column: "data",
        };
        whatsnap_pii::reseal::reseal_column(&self.db, column, legacy, &self.key).await
    }

    /// Keeps `media` for `location`; its id.
    pub async fn put(&self, location: &LocationId, media: &Media) -> Result<Uuid, MediaError> {
        if media.bytes.len() > MAX_BYTES {
            return Err(MediaError::TooLarge {
                size: media.bytes.len(),
            });
        }
        let id = Uuid::new_v4();
        let sealed = self.key.seal(&STANDARD.encode(&media.bytes));
        sqlx::query(
            "INSERT INTO whatsnap_media (media_id, location_id, content_type, file_name, data, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(location.to_string())
        .bind(&media.content_type)
        .bind(&media.file_name)
        .bind(sealed.as_str())
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&self.db)
        .await?;
        Ok(id)
    }

    /// The file with this id, if it is kept.
    pub async fn get(&self, id: Uuid) -> Result<Option<Media>, MediaError> {
        let Some(row) = sqlx::query(
            "SELECT content_type, file_name, data FROM whatsnap_media WHERE media_id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(None);
        };
        let sealed = Sealed::from_stored(row.get::<String, _>("data"));
        let opened = self
            .key
            .open(&sealed)
            .map_err(|e| MediaError::Sealed(e.to_string()))?;
        let bytes = STANDARD
            .decode(opened.expose())
            .map_err(|e| MediaError::Sealed(e.to_string()))?;
        Ok(Some(Media {
            content_type: row.get("content_type"),
            file_name: row.get("file_name"),
            bytes,
        }))
    }

    /// `attachment` with a `data:` URL kept here and replaced by its URL under `public_base`;
    /// any other attachment as it is.
    pub async fn host(
        &self,
        location: &LocationId,
        public_base: &str,
        attachment: Attachment,
    ) -> Result<Attachment, MediaError> {
        if !attachment.url.starts_with("data:") {
            return Ok(attachment);
        }
        let (content_type, bytes) = parse_data_url(&attachment.url)?;
        let content_type = attachment.content_type.clone().unwrap_or(content_type);
        let id = self
            .put(
                location,
                &Media {
                    content_type: content_type.clone(),
                    file_name: attachment.file_name.clone(),
                    bytes,
                },
            )
            .await?;
        Ok(Attachment {
            url: url(public_base, id),
            content_type: Some(content_type),
            file_name: attachment.file_name,
        })
    }
}

/// The URL the gateway serves a file at.
pub fn url(public_base: &str, id: Uuid) -> String {
    format!("{}/media/{id}", public_base.trim_end_matches('/'))
}

/// The content type and bytes of a `data:<type>;base64,<data>` URL.
pub fn parse_data_url(url: &str) -> Result<(String, Vec<u8>), MediaError> {
    let rest = url.strip_prefix("data:").ok_or(MediaError::NotDataUrl)?;
    let (meta, data) = rest.split_once(',').ok_or(MediaError::NotDataUrl)?;
    let content_type = meta.strip_suffix(";base64").ok_or(MediaError::NotDataUrl)?;
    // Base64 grows a file by a third: refuse a huge one before decoding it.
    if data.len() / 4 * 3 > MAX_BYTES + 3 {
        return Err(MediaError::TooLarge {
            size: data.len() / 4 * 3,
        });
    }
    let bytes = STANDARD
        .decode(data.trim())
        .map_err(|_| MediaError::NotDataUrl)?;
    let content_type = match content_type {
        "" => "application/octet-stream",
        given => given,
    };
    Ok((content_type.to_owned(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> MediaStore {
        sqlx::any::install_default_drivers();
        let db = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let key = SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        MediaStore::open(db, key).await.unwrap()
    }

    #[tokio::test]
    async fn a_data_url_is_kept_sealed_and_served_back_at_its_url() {
        let store = store().await;
        let location = LocationId::parse("loc1").unwrap();
        let photo = b"\x89PNG a photo of a receipt".to_vec();
        let given = Attachment {
            url: format!("data:image/png;base64,{}", STANDARD.encode(&photo)),
            content_type: None,
            file_name: Some("receipt.png".into()),
        };
        let hosted = store
            .host(&location, "https://whatsnap.example.com/", given)
            .await
            .unwrap();
        let id: Uuid = hosted
            .url
            .strip_prefix("https://whatsnap.example.com/media/")
            .expect("served by the gateway")
            .parse()
            .unwrap();
        assert_eq!(hosted.content_type.as_deref(), Some("image/png"));
        let stored: String = sqlx::query_scalar("SELECT data FROM whatsnap_media")
            .fetch_one(&store.db)
            .await
            .unwrap();
        assert!(!stored.contains(&STANDARD.encode(&photo)), "sealed at rest");
        let served = store.get(id).await.unwrap().unwrap();
        assert_eq!(served.bytes, photo);
        assert_eq!(served.file_name.as_deref(), Some("receipt.png"));
        assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_link_is_left_as_it_is_and_a_bad_data_url_is_refused() {
        let store = store().await;
        let location = LocationId::parse("loc1").unwrap();
        let link = Attachment {
            url: "https://cdn.example.com/a.jpg".into(),
            content_type: None,
            file_name: None,
        };
        assert_eq!(
            store
                .host(&location, "https://w", link.clone())
                .await
                .unwrap(),
            link
        );
        let bad = Attachment {
            url: "data:image/png,not-base64".into(),
            ..link
        };
        assert!(matches!(
            store.host(&location, "https://w", bad).await,
            Err(MediaError::NotDataUrl)
        ));
    }

    #[tokio::test]
    async fn files_sealed_under_the_secret_key_are_served_once_resealed() {
        let older = store().await;
        let location = LocationId::parse("loc1").unwrap();
        let voice = Media {
            content_type: "audio/ogg".into(),
            file_name: None,
            bytes: b"OggS a voice note".to_vec(),
        };
        let id = older.put(&location, &voice).await.unwrap();
        let secret = older.key.clone();
        let gateway = MediaStore::open(older.db.clone(), secret.personal_data())
            .await
            .unwrap();
        let refused = gateway.get(id).await.unwrap_err().to_string();
        assert!(refused.contains("WHATSNAP_SECRET_KEY"), "{refused}");
        assert_eq!(gateway.reseal_from(&secret).await.unwrap(), 1);
        assert_eq!(gateway.get(id).await.unwrap(), Some(voice));
        assert_eq!(gateway.reseal_from(&secret).await.unwrap(), 0);
    }
}
