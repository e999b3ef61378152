//! Reads the three DynamoDB tables directly and checks that they agree:
//! every posting belongs to a term its record lists, every term a record
//! lists has its posting, and every tag count equals the number of records
//! that carry the term. This is the "exactly once" the fault tests assert.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use super::stack::Stack;

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Clone)]
pub struct Record {
    pub image_id: String,
    pub key: String,
    pub status: String,
    pub reason: Option<String>,
    pub sequence: String,
    pub etag: Option<String>,
    pub terms: BTreeSet<String>,
}

/// The index as stored, already checked for consistency.
#[derive(Debug)]
pub struct IndexSnapshot {
    pub records: BTreeMap<String, Record>,
    pub postings: usize,
    pub counts: BTreeMap<String, i64>,
}

impl IndexSnapshot {
    pub fn by_status(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for record in self.records.values() {
            *out.entry(record.status.clone()).or_insert(0) += 1;
        }
        out
    }

    pub fn status_count(&self, status: &str) -> usize {
        self.by_status().get(status).copied().unwrap_or(0)
    }

    pub fn by_key(&self, key: &str) -> Option<&Record> {
        self.records.values().find(|r| r.key == key)
    }
}

async fn scan(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap_or_else(|e| panic!("scan {table}: {e:?}"));
        items.extend(out.items.unwrap_or_default());
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return items,
        }
    }
}

fn string(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

fn number(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

/// Reads the tables and panics, naming the difference, if they disagree.
pub async fn consistent_snapshot(
    client: &aws_sdk_dynamodb::Client,
    stack: &Stack,
) -> IndexSnapshot {
    match snapshot(client, stack).await {
        Ok(snapshot) => snapshot,
        Err(problem) => panic!("the index is inconsistent: {problem}"),
    }
}

/// Reads the tables; `Err` describes the first inconsistency found.
pub async fn snapshot(
    client: &aws_sdk_dynamodb::Client,
    stack: &Stack,
) -> Result<IndexSnapshot, String> {
    let images = scan(client, stack.output("ImagesTableName")).await;
    let postings = scan(client, stack.output("PostingsTableName")).await;
    let tags = scan(client, stack.output("TagsTableName")).await;

    let mut records = BTreeMap::new();
    for item in &images {
        let image_id = string(item, "image_id").ok_or("record without image_id")?;
        let terms: BTreeSet<String> = match item.get("indexed_terms") {
            Some(AttributeValue::L(list)) => list
                .iter()
                .filter_map(|t| match t {
                    AttributeValue::M(m) => string(m, "term"),
                    _ => None,
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        let record = Record {
            key: string(item, "key").unwrap_or_default(),
            status: string(item, "status").unwrap_or_default(),
            reason: string(item, "reason"),
            sequence: string(item, "sequence").unwrap_or_default(),
            etag: string(item, "etag"),
            terms,
            image_id: image_id.clone(),
        };
        if record.status != "tagged" && !record.terms.is_empty() {
            return Err(format!(
                "{} is {} but still lists terms {:?}",
                record.key, record.status, record.terms
            ));
        }
        records.insert(image_id, record);
    }

    let expected: BTreeSet<(String, String)> = records
        .values()
        .flat_map(|r| r.terms.iter().map(|t| (t.clone(), r.image_id.clone())))
        .collect();
    let stored: BTreeSet<(String, String)> = postings
        .iter()
        .filter_map(|p| Some((string(p, "term")?, string(p, "image_id")?)))
        .collect();
    if stored.len() != postings.len() {
        return Err("a posting lacks its term or image id".into());
    }
    if let Some(stray) = stored.difference(&expected).next() {
        return Err(format!("stray posting {stray:?} (no record lists it)"));
    }
    if let Some(missing) = expected.difference(&stored).next() {
        return Err(format!("missing posting {missing:?}"));
    }

    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for (term, _) in &expected {
        *wanted.entry(term.clone()).or_insert(0) += 1;
    }
    let mut counts = BTreeMap::new();
    for item in &tags {
        let term = string(item, "term").ok_or("tag count without term")?;
        let count = number(item, "image_count").ok_or("tag count without image_count")?;
        counts.insert(term, count);
    }
    for (term, count) in &counts {
        let want = wanted.get(term).copied().unwrap_or(0);
        if *count != want {
            return Err(format!(
                "tag {term:?} counts {count} images but {want} records carry it"
            ));
        }
    }
    for (term, want) in &wanted {
        if !counts.contains_key(term) {
            return Err(format!(
                "tag {term:?} has no count ({want} records carry it)"
            ));
        }
    }
    Ok(IndexSnapshot {
        records,
        postings: postings.len(),
        counts: counts.into_iter().filter(|(_, c)| *c > 0).collect(),
    })
}
