use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};

use super::{classify, service_code, service_status};
use crate::error::{PortError, PortResult};
use crate::ports::{ObjectMeta, ObjectRemover, ObjectStore};

#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
}

impl S3ObjectStore {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                content_type: out.content_type().map(str::to_owned),
                etag: out.e_tag().map(str::to_owned),
                version_id: out.version_id().map(str::to_owned),
            })),
            // HEAD responses carry no body, so "not found" shows only as 404.
            Err(err) if service_status(&err) == Some(404) => Ok(None),
            Err(err) => Err(classify(err)),
        }
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        expected_etag: Option<&str>,
        max_bytes: u64,
    ) -> PortResult<Bytes> {
        let mut request = self.client.get_object().bucket(bucket).key(key);
        if let Some(etag) = expected_etag {
            request = request.if_match(etag);
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(err) if service_status(&err) == Some(412) => {
                return Err(PortError::Conflict(format!(
                    "s3://{bucket}/{key} changed since the event"
                )));
            }
            Err(err)
                if service_status(&err) == Some(404) || service_code(&err) == Some("NoSuchKey") =>
            {
                return Err(PortError::NotFound(format!("s3://{bucket}/{key}")));
            }
            Err(err) => return Err(classify(err)),
        };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > max_bytes {
            return Err(PortError::Invalid(format!(
                "object is {declared} bytes, over the {max_bytes}-byte limit"
            )));
        }
        // The declared length is checked above, but the stream is bounded too
        // so a lying server cannot make us buffer without limit.
        let mut body = out.body;
        let mut buffer = BytesMut::with_capacity(declared as usize);
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|err| PortError::unavailable(format!("reading s3://{bucket}/{key}: {err}")))?
        {
            if (buffer.len() + chunk.len()) as u64 > max_bytes {
                return Err(PortError::Invalid(format!(
                    "object is over the {max_bytes}-byte limit"
                )));
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl crate::ports::UploadSigner for S3ObjectStore {
    async fn presign_put(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        size: u64,
        expires_in: std::time::Duration,
    ) -> PortResult<crate::ports::PresignedUpload> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(PortError::invalid)?;
        // Content type and length are signed: the URL accepts exactly the
        // object that was announced, nothing bigger and nothing else.
        let request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .content_length(i64::try_from(size).map_err(PortError::invalid)?)
            .presigned(config)
            .await
            .map_err(classify)?;
        Ok(crate::ports::PresignedUpload {
            url: request.uri().to_owned(),
            headers: request
                .headers()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        })
    }
}

#[async_trait]
impl ObjectRemover for S3ObjectStore {
    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()> {
        // S3 answers 204 for a key that does not exist, so this is
        // idempotent without a HEAD first.
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}
