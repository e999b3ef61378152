//! Pagination cursors: opaque to clients, signed so they cannot be forged,
//! and bound to the query they were issued for so they cannot be replayed
//! against another one.
//!
//! Format: `base64url(payload JSON) "." base64url(HMAC-SHA256(secret, payload JSON))`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use imagetag_shared::ports::{PostingHit, StatusCursor};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
/// Far above any cursor this service issues (ids and terms are bounded), low
/// enough that a hostile one costs nothing to refuse.
const MAX_CURSOR_LEN: usize = 2048;

/// Where a result page stopped: the phase (tag index for `match=any`, driver
/// index for `match=all`, 0 for status listings) and the last item consumed
/// in it (`None`: the phase has not started).
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub phase: usize,
    pub after: Option<After>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum After {
    Posting(PostingPosition),
    Status(StatusCursor),
}

/// A posting position. The confidence travels as its bit pattern: JSON
/// numbers go through f64 on the way back, and a position that is off by one
/// ulp would skip or repeat a posting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostingPosition {
    pub image_id: String,
    pub confidence_bits: u32,
}

impl From<&PostingHit> for After {
    fn from(hit: &PostingHit) -> Self {
        Self::Posting(PostingPosition {
            image_id: hit.image_id.clone(),
            confidence_bits: hit.confidence.to_bits(),
        })
    }
}

impl PostingPosition {
    pub fn hit(&self) -> PostingHit {
        PostingHit {
            image_id: self.image_id.clone(),
            confidence: f32::from_bits(self.confidence_bits),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    v: u8,
    /// Fingerprint of the normalized query the cursor belongs to.
    q: String,
    phase: usize,
    after: Option<After>,
}

/// Signs and checks cursors with the process's secret.
#[derive(Clone)]
pub struct CursorCodec {
    mac: Arc<HmacSha256>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec { .. }")
    }
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length (long ones are hashed), so this
        // cannot fail whatever the configuration says.
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Self { mac: Arc::new(mac) }
    }

    pub fn encode(&self, query: &str, position: &Position) -> String {
        let payload = Payload {
            v: VERSION,
            q: query.to_owned(),
            phase: position.phase,
            after: position.after.clone(),
        };
        // Plain strings and integers only: serializing cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let mut mac = (*self.mac).clone();
        mac.update(&json);
        let signature = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The position of a cursor issued by this service for `query`.
    pub fn decode(&self, cursor: &str, query: &str) -> Result<Position, ApiError> {
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(ApiError::invalid_cursor("cursor is too long"));
        }
        let malformed = || ApiError::invalid_cursor("cursor is malformed");
        let (payload, signature) = cursor.split_once('.').ok_or_else(malformed)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| malformed())?;
        let mut mac = (*self.mac).clone();
        mac.update(&json);
        // Constant-time comparison: no timing oracle for forging signatures.
        mac.verify_slice(&signature)
            .map_err(|_| ApiError::invalid_cursor("cursor signature does not match"))?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| malformed())?;
        if payload.v != VERSION {
            return Err(ApiError::invalid_cursor("cursor version is not supported"));
        }
        if payload.q != query {
            return Err(ApiError::invalid_cursor(
                "cursor belongs to a different query; repeat the original parameters",
            ));
        }
        Ok(Position {
            phase: payload.phase,
            after: payload.after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> Position {
        Position {
            phase: 2,
            after: Some(After::from(&PostingHit {
                image_id: "0123456789abcdef0123456789abcdef".into(),
                confidence: 0.1 + 0.2,
            })),
        }
    }

    #[test]
    fn round_trips_exactly() {
        let codec = CursorCodec::new(b"secret");
        let cursor = codec.encode("q1", &position());
        assert_eq!(codec.decode(&cursor, "q1").ok(), Some(position()));
        let status = Position {
            phase: 0,
            after: Some(After::Status(StatusCursor {
                updated_at: "2026-01-01T00:00:00.000000Z".into(),
                image_id: "ab".into(),
            })),
        };
        let cursor = codec.encode("q1", &status);
        assert_eq!(codec.decode(&cursor, "q1").ok(), Some(status));
    }

    #[test]
    fn refuses_other_queries_secrets_and_tampering() {
        let codec = CursorCodec::new(b"secret");
        let cursor = codec.encode("q1", &position());
        let code = |result: Result<Position, ApiError>| match result {
            Err(err) => err.code(),
            Ok(_) => "accepted",
        };
        assert_eq!(code(codec.decode(&cursor, "q2")), "invalid_cursor");
        assert_eq!(
            code(CursorCodec::new(b"other").decode(&cursor, "q1")),
            "invalid_cursor"
        );
        // Re-signing nothing: flip the payload and keep the old signature.
        let (payload, signature) = cursor.split_once('.').unwrap_or_default();
        let mut json = URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
        let text = String::from_utf8_lossy(&json).replace("\"phase\":2", "\"phase\":3");
        json = text.into_bytes();
        let forged = format!("{}.{signature}", URL_SAFE_NO_PAD.encode(json));
        assert_eq!(code(codec.decode(&forged, "q1")), "invalid_cursor");
        for garbage in ["", ".", "abc", "a.b", "!!!.???", &"x".repeat(5000)] {
            assert_eq!(
                code(codec.decode(garbage, "q1")),
                "invalid_cursor",
                "{garbage}"
            );
        }
    }
}
