use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};

use super::classify;
use crate::error::{PortError, PortResult};
use crate::ports::{Queue, QueueMessage};

/// SQS takes at most ten entries per batch call.
const SQS_BATCH: usize = 10;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

fn seconds(duration: Duration) -> i32 {
    duration.as_secs().min(i32::MAX as u64) as i32
}

#[async_trait]
impl Queue for SqsQueue {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<QueueMessage>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH as u32) as i32)
            .wait_time_seconds(seconds(wait).min(20))
            .visibility_timeout(seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let receive_count = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let attributes = message
                    .message_attributes()
                    .map(|attrs| {
                        attrs
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(QueueMessage {
                    id: message.message_id?,
                    receipt: message.receipt_handle?,
                    body: message.body.unwrap_or_default(),
                    attributes,
                    receive_count,
                })
            })
            .collect())
    }

    async fn send(&self, body: &str, attributes: &HashMap<String, String>) -> PortResult<()> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body);
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(PortError::invalid)?;
            request = request.message_attributes(name, value);
        }
        request.send().await.map_err(classify)?;
        Ok(())
    }

    async fn delete(&self, receipts: &[String]) -> PortResult<()> {
        for chunk in receipts.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .map_err(PortError::invalid)
                })
                .collect::<PortResult<Vec<_>>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(classify)?;
            if let Some(failure) = out.failed().first() {
                // A receipt that expired means the message is visible again
                // and will be redelivered; the handlers are idempotent.
                return Err(PortError::Unavailable(format!(
                    "delete failed for {} message(s): {}",
                    out.failed().len(),
                    failure.message().unwrap_or(failure.code())
                )));
            }
        }
        Ok(())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(timeout))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn ping(&self) -> PortResult<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}
