//! Pixels and uploads: the original image, its thumbnail, and the way in for
//! new images. On AWS a client uploads straight to S3 through a presigned
//! PUT; in one-process mode the API takes the bytes itself, through a URL
//! signed the same way, so browsers follow one flow either way.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use hmac::{Hmac, Mac};
use imagetag_shared::model::{ImageStatus, image_id};
use imagetag_shared::ports::{ObjectStore, SearchStore, UploadSigner};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use crate::error::ApiError;

/// Formats the tagger decodes, by content type, with their usual extension.
const UPLOAD_TYPES: &[(&str, &str)] = &[
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
    ("image/bmp", "bmp"),
    ("image/tiff", "tif"),
];

/// Where originals and thumbnails live, and how uploads get there.
pub struct Media {
    pub objects: Arc<dyn ObjectStore>,
    pub bucket: String,
    /// Key prefix of uploaded images.
    pub upload_prefix: String,
    pub thumbnails: Arc<dyn ObjectStore>,
    pub thumbnail_bucket: String,
    pub thumbnail_prefix: String,
    /// Presigns uploads straight to storage; without it the API takes them.
    pub signer: Option<Arc<dyn UploadSigner>>,
    pub max_upload_bytes: u64,
    pub upload_ttl: Duration,
    /// Signs API upload tokens (never shared with clients).
    pub secret: Vec<u8>,
}

/// An announced upload: what the client is about to send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The file's name; only a tidied stem of it is kept in the key.
    pub filename: String,
    /// One of the image types imagetag decodes (`image/jpeg`, `image/png`, …).
    pub content_type: String,
    /// Exact size in bytes; the upload must match it.
    pub size: u64,
}

/// Where and how to send the bytes of an announced upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadTicket {
    /// The id the image will have once it is ingested.
    pub image_id: String,
    pub key: String,
    pub upload: UploadInstructions,
    /// RFC 3339; the URL is refused after this.
    pub expires_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadInstructions {
    /// Always `PUT`.
    pub method: &'static str,
    /// A presigned storage URL, or an API path in one-process mode.
    pub url: String,
    /// Headers the PUT must carry exactly as given (they are signed).
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub headers: serde_json::Map<String, serde_json::Value>,
}

/// Totals by status and the most used terms.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub images: StatusTotals,
    pub top_tags: Vec<TermTotal>,
    pub top_categories: Vec<TermTotal>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusTotals {
    /// Every image that is not deleted.
    pub total: u64,
    pub tagged: u64,
    pub pending: u64,
    pub rejected: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TermTotal {
    pub name: String,
    pub image_count: u64,
}

/// What an API upload token allows: one PUT of one announced object.
#[derive(Debug, Serialize, Deserialize)]
struct UploadGrant {
    key: String,
    content_type: String,
    size: u64,
    expires: i64,
}

impl Media {
    pub async fn start_upload(&self, request: UploadRequest) -> Result<UploadTicket, ApiError> {
        let content_type = request
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some((_, extension)) = UPLOAD_TYPES.iter().find(|(t, _)| *t == content_type) else {
            return Err(ApiError::bad_request(
                "unsupported_media_type",
                format!(
                    "content type {content_type:?} is not an image type imagetag tags; use one of {}",
                    UPLOAD_TYPES
                        .iter()
                        .map(|(t, _)| *t)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if request.size == 0 {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "size must be at least 1 byte",
            ));
        }
        if request.size > self.max_upload_bytes {
            return Err(ApiError::bad_request(
                "too_large",
                format!(
                    "size {} is over the {}-byte limit",
                    request.size, self.max_upload_bytes
                ),
            ));
        }
        let key = upload_key(&self.upload_prefix, &request.filename, extension);
        let expires = Utc::now() + self.upload_ttl;
        let (url, headers) = match &self.signer {
            Some(signer) => {
                let presigned = signer
                    .presign_put(
                        &self.bucket,
                        &key,
                        &content_type,
                        request.size,
                        self.upload_ttl,
                    )
                    .await?;
                (presigned.url, presigned.headers)
            }
            None => {
                let grant = UploadGrant {
                    key: key.clone(),
                    content_type: content_type.clone(),
                    size: request.size,
                    expires: expires.timestamp(),
                };
                (
                    format!("/v1/uploads/{}", self.sign(&grant)?),
                    vec![("content-type".to_owned(), content_type.clone())],
                )
            }
        };
        Ok(UploadTicket {
            image_id: image_id(&self.bucket, &key),
            key,
            upload: UploadInstructions {
                method: "PUT",
                url,
                headers: headers
                    .into_iter()
                    .map(|(name, value)| (name, json!(value)))
                    .collect(),
            },
            expires_at: expires.to_rfc3339(),
        })
    }

    /// Stores the body of an API upload, if its token allows exactly it.
    pub async fn finish_upload(
        &self,
        token: &str,
        content_type: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<(), ApiError> {
        let grant = self.verify(token)?;
        if Utc::now().timestamp() > grant.expires {
            return Err(ApiError::bad_request(
                "upload_expired",
                "the upload URL has expired; ask for a new one",
            ));
        }
        let sent_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
        if sent_type.split(';').next().unwrap_or("").trim() != grant.content_type {
            return Err(ApiError::bad_request(
                "content_type_mismatch",
                format!("the upload was announced as {}", grant.content_type),
            ));
        }
        if body.len() as u64 != grant.size {
            return Err(ApiError::bad_request(
                "size_mismatch",
                format!(
                    "the upload was announced as {} bytes, got {}",
                    grant.size,
                    body.len()
                ),
            ));
        }
        self.objects
            .put(&self.bucket, &grant.key, body, &grant.content_type)
            .await?;
        tracing::info!(key = %grant.key, bytes = grant.size, "upload stored");
        Ok(())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"imagetag-upload-v1\0");
        mac
    }

    fn sign(&self, grant: &UploadGrant) -> Result<String, ApiError> {
        let payload = serde_json::to_vec(grant).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut mac = self.mac();
        mac.update(&payload);
        let signature = mac.finalize().into_bytes();
        Ok(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    fn verify(&self, token: &str) -> Result<UploadGrant, ApiError> {
        let invalid =
            || ApiError::bad_request("invalid_upload_token", "the upload URL is not valid");
        let (payload, signature) = token.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&signature).map_err(|_| invalid())?;
        serde_json::from_slice(&payload).map_err(|_| invalid())
    }

    /// The original bytes of a stored image, served so a browser can show it
    /// but never run it.
    pub async fn content(&self, store: &dyn SearchStore, id: &str) -> Result<Response, ApiError> {
        let record = store
            .get_image(id)
            .await?
            .filter(|r| r.status != ImageStatus::Deleted)
            .ok_or_else(|| ApiError::not_found(format!("no image {id}")))?;
        let bytes = self
            .objects
            .get(
                &record.bucket,
                &record.key,
                None,
                self.max_upload_bytes.max(record.size),
            )
            .await?;
        let declared = record.content_type.as_deref().unwrap_or("");
        let raster = UPLOAD_TYPES.iter().any(|(t, _)| declared.starts_with(t));
        let content_type = if raster {
            declared
        } else {
            "application/octet-stream"
        };
        let mut response = (StatusCode::OK, Body::from(bytes)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, header_value(content_type));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=60"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; sandbox"),
        );
        if !raster {
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment"),
            );
        }
        Ok(response)
    }

    pub async fn thumbnail(&self, id: &str) -> Result<Response, ApiError> {
        let key = format!("{}{id}.jpg", self.thumbnail_prefix);
        let bytes = self
            .thumbnails
            .get(&self.thumbnail_bucket, &key, None, 4 * 1024 * 1024)
            .await?;
        let mut response = (StatusCode::OK, Body::from(bytes)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=300"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        Ok(response)
    }
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// `uploads/2026/11/<random>-<tidy name>.<ext>`: dated for browsing, a
/// random part so names never collide, and the name kept readable but
/// stripped of anything that could mean something in a path or a shell.
pub fn upload_key(prefix: &str, filename: &str, extension: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or("");
    let stem = base.rsplit_once('.').map_or(base, |(stem, _)| stem);
    let mut tidy: String = stem
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    tidy = tidy.trim_matches('-').chars().take(60).collect();
    if tidy.is_empty() {
        tidy = "image".into();
    }
    format!(
        "{prefix}{}/{:08x}-{tidy}.{extension}",
        Utc::now().format("%Y/%m"),
        rand::random::<u32>()
    )
}

pub async fn stats(store: &dyn SearchStore) -> Result<Stats, ApiError> {
    use imagetag_shared::ports::TermKind;
    let (counts, tags, categories) = tokio::try_join!(
        store.status_counts(),
        store.list_terms(TermKind::Tag, None, 20),
        store.list_terms(TermKind::Category, None, 20),
    )?;
    let count = |status| counts.get(&status).copied().unwrap_or(0);
    let images = StatusTotals {
        total: [
            ImageStatus::Tagged,
            ImageStatus::Pending,
            ImageStatus::Rejected,
            ImageStatus::Failed,
        ]
        .into_iter()
        .map(count)
        .sum(),
        tagged: count(ImageStatus::Tagged),
        pending: count(ImageStatus::Pending),
        rejected: count(ImageStatus::Rejected),
        failed: count(ImageStatus::Failed),
    };
    let terms = |list: Vec<imagetag_shared::ports::TermCount>| {
        list.into_iter()
            .map(|t| TermTotal {
                name: t.name,
                image_count: t.image_count,
            })
            .collect()
    };
    Ok(Stats {
        images,
        top_tags: terms(tags),
        top_categories: terms(categories),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_keys_are_tidy_dated_and_unique() {
        let a = upload_key("uploads/", "../../etc/pass wd;rm -rf.JPG", "jpg");
        assert!(a.starts_with("uploads/"), "{a}");
        assert!(a.ends_with("-pass-wd-rm--rf.jpg"), "{a}");
        assert!(!a.contains(".."), "{a}");
        let b = upload_key("uploads/", "<script>.png", "png");
        assert!(b.ends_with("-script.png"), "{b}");
        assert_ne!(
            upload_key("", "x.png", "png"),
            upload_key("", "x.png", "png")
        );
        assert!(upload_key("", "", "png").ends_with("-image.png"));
    }
}
