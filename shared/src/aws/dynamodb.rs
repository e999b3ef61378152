use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use serde_dynamo::{from_item, to_item};

use super::{classify, service_code};
use crate::config::TableNames;
use crate::error::{PortError, PortResult};
use crate::model::{ImageRecord, ImageStatus, timestamp};
use crate::ports::{
    GenerationUpdate, ImageStore, IndexCommit, IndexStore, PostingHit, Recorded, SearchStore,
    StatusCursor, TermCount, TermKind,
};

/// BatchGetItem takes at most 100 keys per call.
const BATCH_GET_MAX: usize = 100;
/// TransactWriteItems takes at most 100 actions.
const TRANSACTION_MAX: usize = 100;
const STATUS_INDEX: &str = "by-status";
const CONFIDENCE_INDEX: &str = "by-confidence";
const NAME_INDEX: &str = "by-name";
const COUNT_INDEX: &str = "by-count";

type Item = HashMap<String, AttributeValue>;

/// The three tables behind the metadata ports: image records, postings
/// (term → image, with confidence) and per-term image counts.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tables: TableNames,
}

impl DynamoStore {
    pub fn new(client: Client, tables: TableNames) -> Self {
        Self { client, tables }
    }

    async fn get_record(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.images)
            .key("image_id", s(image_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.item.map(decode_record).transpose()
    }

    /// BatchGetItem over any number of keys: chunks of 100, and unprocessed
    /// keys (throttling) retried with backoff until done.
    async fn batch_get(&self, table: &str, keys: Vec<Item>) -> PortResult<Vec<Item>> {
        let mut items = Vec::with_capacity(keys.len());
        for chunk in chunked(keys, BATCH_GET_MAX) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk))
                    .build()
                    .map_err(PortError::invalid)?,
            );
            let mut attempt = 0u32;
            while let Some(request) = pending.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(classify)?;
                if let Some(mut found) = out.responses {
                    items.extend(found.remove(table).unwrap_or_default());
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut unprocessed| unprocessed.remove(table))
                    .filter(|rest| !rest.keys().is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(PortError::Unavailable(format!(
                            "{table}: keys still unprocessed after {attempt} attempts"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(25 << attempt.min(6))).await;
                }
            }
        }
        Ok(items)
    }

    async fn ping_table(&self) -> PortResult<()> {
        self.client
            .get_item()
            .table_name(&self.tables.images)
            .key("image_id", s("readiness-probe"))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Splits into groups of at most `size` (DynamoDB's per-call limits).
pub(crate) fn chunked<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut iter = items.into_iter().peekable();
    while iter.peek().is_some() {
        chunks.push(iter.by_ref().take(size).collect());
    }
    chunks
}

fn decode_record(item: Item) -> PortResult<ImageRecord> {
    from_item(item).map_err(|err| PortError::Invalid(format!("stored image record: {err}")))
}

fn get_s<'a>(item: &'a Item, name: &str) -> PortResult<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(PortError::Invalid(format!(
            "item lacks string attribute {name}"
        ))),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> PortResult<T> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value
            .parse()
            .map_err(|_| PortError::Invalid(format!("attribute {name} is not a number: {value}"))),
        _ => Err(PortError::Invalid(format!(
            "item lacks number attribute {name}"
        ))),
    }
}

fn posting_key(term: &str, image_id: &str) -> Item {
    HashMap::from([
        ("term".to_owned(), s(term)),
        ("image_id".to_owned(), s(image_id)),
    ])
}

fn decode_term_count(item: &Item) -> PortResult<TermCount> {
    let term = get_s(item, "term")?.to_owned();
    let (kind, name) = TermKind::split(&term);
    let name = name.to_owned();
    Ok(TermCount {
        image_count: get_n::<i64>(item, "image_count")?.max(0) as u64,
        kind,
        name,
        term,
    })
}

#[async_trait]
impl ImageStore for DynamoStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.get_record(image_id).await
    }

    async fn record_generation(&self, update: &GenerationUpdate) -> PortResult<Recorded> {
        let now = timestamp::format(&update.at);
        // Every attribute goes through a `#name` placeholder: several of
        // ours (bucket, key, status, size …) are DynamoDB reserved words.
        let mut sets = vec![
            "#bucket = :bucket".to_owned(),
            "#key = :key".to_owned(),
            "#status = :status".to_owned(),
            "#sequence = :sequence".to_owned(),
            "#updated_at = :now".to_owned(),
            "#created_at = if_not_exists(#created_at, :now)".to_owned(),
            "#labels = if_not_exists(#labels, :empty)".to_owned(),
            "#indexed_terms = if_not_exists(#indexed_terms, :empty)".to_owned(),
            "#revision = if_not_exists(#revision, :zero)".to_owned(),
            "#size = :size".to_owned(),
        ];
        let mut names: HashMap<String, String> = [
            "bucket",
            "key",
            "status",
            "sequence",
            "updated_at",
            "created_at",
            "labels",
            "indexed_terms",
            "revision",
            "size",
        ]
        .into_iter()
        .map(|name| (format!("#{name}"), name.to_owned()))
        .collect();
        let mut removes = Vec::new();
        let mut values: Item = HashMap::from([
            (":bucket".to_owned(), s(&update.bucket)),
            (":key".to_owned(), s(&update.key)),
            (":status".to_owned(), s(update.status.as_str())),
            (":sequence".to_owned(), s(&update.sequence)),
            (":now".to_owned(), s(&now)),
            (":empty".to_owned(), AttributeValue::L(vec![])),
            (":zero".to_owned(), n(0)),
            (
                ":size".to_owned(),
                n(update.meta.as_ref().map(|m| m.size).unwrap_or(0)),
            ),
        ]);
        let optional = [
            ("reason", update.reason.clone()),
            (
                "content_type",
                update.meta.as_ref().and_then(|m| m.content_type.clone()),
            ),
            ("etag", update.meta.as_ref().and_then(|m| m.etag.clone())),
            (
                "version_id",
                update.meta.as_ref().and_then(|m| m.version_id.clone()),
            ),
        ];
        for (attribute, value) in optional {
            names.insert(format!("#{attribute}"), attribute.to_owned());
            match value {
                Some(value) => {
                    sets.push(format!("#{attribute} = :{attribute}"));
                    values.insert(format!(":{attribute}"), s(value));
                }
                None => removes.push(format!("#{attribute}")),
            }
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.images)
            .key("image_id", s(&update.image_id))
            .update_expression(expression)
            .condition_expression("attribute_not_exists(image_id) OR #sequence < :sequence")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Recorded::Applied),
            Err(err) if service_code(&err) == Some("ConditionalCheckFailedException") => {
                let existing = self.get_record(&update.image_id).await?.ok_or_else(|| {
                    PortError::Conflict("record vanished during a conditional write".into())
                })?;
                if existing.sequence == update.sequence {
                    Ok(Recorded::Duplicate(Box::new(existing)))
                } else {
                    Ok(Recorded::Stale(Box::new(existing)))
                }
            }
            Err(err) => Err(classify(err)),
        }
    }

    async fn ping(&self) -> PortResult<()> {
        self.ping_table().await
    }
}

#[async_trait]
impl IndexStore for DynamoStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.get_record(image_id).await
    }

    async fn commit(&self, commit: &IndexCommit) -> PortResult<()> {
        if commit.item_count() > TRANSACTION_MAX {
            return Err(PortError::Invalid(format!(
                "commit of {} items exceeds the transaction limit",
                commit.item_count()
            )));
        }
        let record = &commit.record;
        let item: Item = to_item(record).map_err(PortError::invalid)?;
        let mut actions = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.tables.images)
                        .set_item(Some(item))
                        .condition_expression("#revision = :revision AND #sequence = :sequence")
                        .expression_attribute_names("#revision", "revision")
                        .expression_attribute_names("#sequence", "sequence")
                        .expression_attribute_values(":revision", n(commit.expected_revision))
                        .expression_attribute_values(":sequence", s(&record.sequence))
                        .build()
                        .map_err(PortError::invalid)?,
                )
                .build(),
        ];
        for posting in &commit.put_postings {
            let mut item = posting_key(&posting.term, &record.image_id);
            item.insert("confidence".into(), n(posting.confidence));
            actions.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.tables.postings)
                            .set_item(Some(item))
                            .build()
                            .map_err(PortError::invalid)?,
                    )
                    .build(),
            );
        }
        for term in &commit.delete_postings {
            actions.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.tables.postings)
                            .set_key(Some(posting_key(term, &record.image_id)))
                            .build()
                            .map_err(PortError::invalid)?,
                    )
                    .build(),
            );
        }
        for (term, delta) in &commit.count_deltas {
            let (kind, name) = TermKind::split(term);
            actions.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.tables.tags)
                            .key("term", s(term))
                            .update_expression("ADD #count :delta SET #kind = :kind, #name = :name")
                            .expression_attribute_names("#count", "image_count")
                            .expression_attribute_names("#kind", "kind")
                            .expression_attribute_names("#name", "name")
                            .expression_attribute_values(":delta", n(delta))
                            .expression_attribute_values(":kind", s(kind.as_str()))
                            .expression_attribute_values(":name", s(name))
                            .build()
                            .map_err(PortError::invalid)?,
                    )
                    .build(),
            );
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    service_code(&err),
                    Some("TransactionCanceledException" | "TransactionConflictException")
                ) =>
            {
                Err(PortError::Conflict(format!(
                    "image {} changed during the index commit",
                    record.image_id
                )))
            }
            Err(err) => Err(classify(err)),
        }
    }

    fn max_commit_items(&self) -> usize {
        TRANSACTION_MAX
    }

    async fn ping(&self) -> PortResult<()> {
        self.ping_table().await
    }
}

#[async_trait]
impl SearchStore for DynamoStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.get_record(image_id).await
    }

    async fn get_images(&self, image_ids: &[String]) -> PortResult<Vec<ImageRecord>> {
        let mut unique = image_ids.to_vec();
        unique.sort();
        unique.dedup();
        let keys = unique
            .into_iter()
            .map(|id| HashMap::from([("image_id".to_owned(), s(id))]))
            .collect();
        self.batch_get(&self.tables.images, keys)
            .await?
            .into_iter()
            .map(decode_record)
            .collect()
    }

    async fn postings(
        &self,
        term: &str,
        min_confidence: f32,
        after: Option<&PostingHit>,
        limit: usize,
    ) -> PortResult<(Vec<PostingHit>, bool)> {
        let start = after.map(|hit| {
            let mut key = posting_key(term, &hit.image_id);
            key.insert("confidence".into(), n(hit.confidence));
            key
        });
        let out = self
            .client
            .query()
            .table_name(&self.tables.postings)
            .index_name(CONFIDENCE_INDEX)
            .key_condition_expression("#term = :term AND #confidence >= :min")
            .expression_attribute_names("#term", "term")
            .expression_attribute_names("#confidence", "confidence")
            .expression_attribute_values(":term", s(term))
            .expression_attribute_values(":min", n(min_confidence))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(classify)?;
        let hits = out
            .items()
            .iter()
            .map(|item| {
                Ok(PostingHit {
                    image_id: get_s(item, "image_id")?.to_owned(),
                    confidence: get_n(item, "confidence")?,
                })
            })
            .collect::<PortResult<Vec<_>>>()?;
        Ok((hits, out.last_evaluated_key.is_some()))
    }

    async fn lookup_postings(
        &self,
        pairs: &[(String, String)],
    ) -> PortResult<HashMap<(String, String), f32>> {
        let mut unique = pairs.to_vec();
        unique.sort();
        unique.dedup();
        let keys = unique
            .iter()
            .map(|(term, id)| posting_key(term, id))
            .collect();
        self.batch_get(&self.tables.postings, keys)
            .await?
            .iter()
            .map(|item| {
                Ok((
                    (
                        get_s(item, "term")?.to_owned(),
                        get_s(item, "image_id")?.to_owned(),
                    ),
                    get_n(item, "confidence")?,
                ))
            })
            .collect()
    }

    async fn images_by_status(
        &self,
        status: ImageStatus,
        after: Option<&StatusCursor>,
        limit: usize,
    ) -> PortResult<(Vec<ImageRecord>, bool)> {
        let start = after.map(|cursor| {
            HashMap::from([
                ("status".to_owned(), s(status.as_str())),
                ("updated_at".to_owned(), s(&cursor.updated_at)),
                ("image_id".to_owned(), s(&cursor.image_id)),
            ])
        });
        let out = self
            .client
            .query()
            .table_name(&self.tables.images)
            .index_name(STATUS_INDEX)
            .key_condition_expression("#status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(classify)?;
        let more = out.last_evaluated_key.is_some();
        let records = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(decode_record)
            .collect::<PortResult<Vec<_>>>()?;
        Ok((records, more))
    }

    async fn term_counts(&self, terms: &[String]) -> PortResult<HashMap<String, u64>> {
        let mut unique = terms.to_vec();
        unique.sort();
        unique.dedup();
        let keys = unique
            .iter()
            .map(|term| HashMap::from([("term".to_owned(), s(term))]))
            .collect();
        let mut counts: HashMap<String, u64> = terms.iter().map(|t| (t.clone(), 0)).collect();
        for item in self.batch_get(&self.tables.tags, keys).await? {
            let count = decode_term_count(&item)?;
            counts.insert(count.term, count.image_count);
        }
        Ok(counts)
    }

    async fn status_counts(&self) -> PortResult<HashMap<ImageStatus, u64>> {
        let mut counts = HashMap::new();
        for status in [
            ImageStatus::Pending,
            ImageStatus::Tagged,
            ImageStatus::Rejected,
            ImageStatus::Failed,
        ] {
            let mut total = 0u64;
            let mut start: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.tables.images)
                    .index_name(STATUS_INDEX)
                    .key_condition_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()))
                    .select(aws_sdk_dynamodb::types::Select::Count)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(classify)?;
                total += out.count.max(0) as u64;
                match out.last_evaluated_key {
                    Some(key) => start = Some(key),
                    None => break,
                }
            }
            counts.insert(status, total);
        }
        Ok(counts)
    }

    async fn list_terms(
        &self,
        kind: TermKind,
        prefix: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<TermCount>> {
        let mut terms = Vec::new();
        let mut start: Option<Item> = None;
        // The by-name listing filters out unused terms after DynamoDB's
        // limit applies, so it may take a few pages to fill `limit`.
        loop {
            let request = self
                .client
                .query()
                .table_name(&self.tables.tags)
                .expression_attribute_values(":kind", s(kind.as_str()))
                .expression_attribute_values(":zero", n(0))
                .limit(limit.clamp(1, 1000) as i32)
                .set_exclusive_start_key(start.take());
            let request = match prefix {
                Some(prefix) => request
                    .index_name(NAME_INDEX)
                    .key_condition_expression("#kind = :kind AND begins_with(#name, :prefix)")
                    .filter_expression("#count > :zero")
                    .expression_attribute_names("#kind", "kind")
                    .expression_attribute_names("#count", "image_count")
                    .expression_attribute_names("#name", "name")
                    .expression_attribute_values(":prefix", s(prefix)),
                None => request
                    .index_name(COUNT_INDEX)
                    .key_condition_expression("#kind = :kind AND #count > :zero")
                    .expression_attribute_names("#kind", "kind")
                    .expression_attribute_names("#count", "image_count")
                    .scan_index_forward(false),
            };
            let out = request.send().await.map_err(classify)?;
            for item in out.items() {
                terms.push(decode_term_count(item)?);
            }
            match out.last_evaluated_key {
                Some(key) if terms.len() < limit => start = Some(key),
                _ => break,
            }
        }
        terms.truncate(limit);
        Ok(terms)
    }

    async fn ping(&self) -> PortResult<()> {
        self.ping_table().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_respects_the_limit_and_keeps_everything() {
        let chunks = chunked((0..251).collect(), 25);
        assert_eq!(chunks.len(), 11);
        assert!(chunks.iter().all(|c| c.len() <= 25));
        assert_eq!(chunks.concat(), (0..251).collect::<Vec<_>>());
        assert!(chunked(Vec::<u8>::new(), 25).is_empty());
    }

    #[test]
    fn term_kinds_come_from_the_prefix() {
        assert_eq!(TermKind::split("tag:dog"), (TermKind::Tag, "dog"));
        assert_eq!(
            TermKind::split("cat:animals and pets"),
            (TermKind::Category, "animals and pets")
        );
    }

    #[test]
    fn records_round_trip_through_dynamodb_items() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .expect("valid time");
        let record = ImageRecord {
            image_id: "abc".into(),
            bucket: "b".into(),
            key: "photos/cat 1.jpg".into(),
            status: ImageStatus::Tagged,
            reason: None,
            sequence: "0000000000000000000000000000005F".into(),
            etag: Some("\"e\"".into()),
            version_id: None,
            size: 1234,
            content_type: Some("image/jpeg".into()),
            facts: None,
            model: None,
            labels: vec![crate::model::Label {
                name: "Cat".into(),
                confidence: 97.25,
                parents: vec!["Animal".into()],
                aliases: vec![],
                categories: vec!["Animals and Pets".into()],
                instances: vec![],
            }],
            text: vec![],
            moderation: vec![],
            faces: vec![],
            indexed_terms: vec![],
            revision: 3,
            created_at: at,
            updated_at: at,
            tagged_at: Some(at),
        };
        let item: Item = to_item(&record).expect("serializes");
        assert_eq!(get_s(&item, "status").ok(), Some("tagged"));
        // Fixed-width timestamps keep the by-status index in time order.
        assert_eq!(
            get_s(&item, "updated_at").ok(),
            Some("2026-01-02T03:04:05.500000Z")
        );
        assert_eq!(decode_record(item).expect("decodes"), record);
    }
}
