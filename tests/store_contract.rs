//! One contract, two metadata stores: the DynamoDB adapter (on moto, with the
//! tables from the CloudFormation template) and the embedded SQLite store
//! must behave the same for everything the services rely on.

mod support;

use std::collections::BTreeSet;

use chrono::Utc;
use imagetag_embedded::SqliteStore;
use imagetag_indexer::IndexerService;
use imagetag_shared::aws::DynamoStore;
use imagetag_shared::config::TableNames;
use imagetag_shared::messages::IndexMessage;
use imagetag_shared::model::{ImageFacts, ImageStatus, Label, ModelInfo, TagOutput, tag_term};
use imagetag_shared::ports::{
    GenerationUpdate, ImageStore, IndexStore, ObjectMeta, PostingHit, Recorded, SearchStore,
    StatusCursor, TermKind,
};
use support::{Moto, deploy, unique_prefix};

trait Store: ImageStore + IndexStore + SearchStore + Clone {}
impl<T: ImageStore + IndexStore + SearchStore + Clone> Store for T {}

fn generation(id: &str, sequence: &str, status: ImageStatus) -> GenerationUpdate {
    GenerationUpdate {
        image_id: id.into(),
        bucket: "bucket".into(),
        key: format!("photos/{id}.jpg"),
        sequence: sequence.into(),
        status,
        reason: None,
        meta: (status != ImageStatus::Deleted).then(|| ObjectMeta {
            size: 1234,
            content_type: Some("image/jpeg".into()),
            etag: Some(format!("etag-{sequence}")),
            version_id: None,
        }),
        at: Utc::now(),
    }
}

fn tagged(id: &str, sequence: &str, labels: &[(&str, f32, &str)]) -> IndexMessage {
    IndexMessage::Tagged {
        image_id: id.into(),
        sequence: sequence.into(),
        facts: ImageFacts {
            width: 640,
            height: 480,
            format: "jpeg".into(),
        },
        model: ModelInfo {
            backend: "test".into(),
            version: "1".into(),
        },
        output: TagOutput {
            labels: labels
                .iter()
                .map(|(name, confidence, category)| Label {
                    name: name.to_string(),
                    confidence: *confidence,
                    parents: vec![],
                    aliases: vec![],
                    categories: vec![category.to_string()],
                    instances: vec![],
                })
                .collect(),
            ..Default::default()
        },
    }
}

async fn all_postings<S: SearchStore>(
    store: &S,
    term: &str,
    min: f32,
    page: usize,
) -> Vec<PostingHit> {
    let mut hits = Vec::new();
    let mut after: Option<PostingHit> = None;
    loop {
        let (batch, more) = store
            .postings(term, min, after.as_ref(), page)
            .await
            .expect("postings");
        after = batch.last().cloned().or(after);
        hits.extend(batch);
        if !more {
            return hits;
        }
    }
}

async fn contract<S: Store>(store: S) {
    let indexer = IndexerService::new(store.clone());

    // Generations: applied once, duplicates and older events recognised.
    let first = generation("img-00", "t2", ImageStatus::Pending);
    assert_eq!(
        store.record_generation(&first).await.expect("write"),
        Recorded::Applied
    );
    assert!(matches!(
        store.record_generation(&first).await.expect("write"),
        Recorded::Duplicate(_)
    ));
    assert!(matches!(
        store
            .record_generation(&generation("img-00", "t1", ImageStatus::Pending))
            .await
            .expect("write"),
        Recorded::Stale(_)
    ));
    let record = ImageStore::get_image(&store, "img-00")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (record.status, record.sequence.as_str(), record.size),
        (ImageStatus::Pending, "t2", 1234)
    );

    // Twenty images share "Dog" with distinct confidences; even ones are
    // also "Beach"; the first is retagged later.
    for i in 0..20u32 {
        let id = format!("img-{i:02}");
        if i > 0 {
            store
                .record_generation(&generation(&id, "t2", ImageStatus::Pending))
                .await
                .expect("write");
        }
        let mut labels = vec![("Dog", 50.0 + i as f32, "Animals and Pets")];
        if i % 2 == 0 {
            labels.push(("Beach", 90.0 - i as f32, "Nature and Outdoors"));
        }
        indexer
            .apply(&tagged(&id, "t2", &labels))
            .await
            .expect("index");
    }
    let dog = all_postings(&store, &tag_term("dog"), 0.0, 7).await;
    assert_eq!(dog.len(), 20);
    let confidences: Vec<f32> = dog.iter().map(|h| h.confidence).collect();
    let mut sorted = confidences.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(confidences, sorted, "best first");
    assert_eq!(dog[0].image_id, "img-19");
    let strong = all_postings(&store, &tag_term("dog"), 65.0, 4).await;
    assert_eq!(
        strong.len(),
        5,
        "min confidence is applied by the index: {strong:?}"
    );

    let counts = store
        .term_counts(&[tag_term("dog"), tag_term("beach"), tag_term("cat")])
        .await
        .expect("counts");
    assert_eq!(counts[&tag_term("dog")], 20);
    assert_eq!(counts[&tag_term("beach")], 10);
    assert_eq!(counts[&tag_term("cat")], 0);

    let lookups = store
        .lookup_postings(&[
            (tag_term("beach"), "img-02".into()),
            (tag_term("beach"), "img-03".into()),
        ])
        .await
        .expect("lookup");
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[&(tag_term("beach"), "img-02".to_owned())], 88.0);

    let by_count = store
        .list_terms(TermKind::Tag, None, 10)
        .await
        .expect("terms");
    assert_eq!(
        by_count
            .iter()
            .map(|t| (t.name.as_str(), t.image_count))
            .collect::<Vec<_>>(),
        vec![("dog", 20), ("beach", 10)]
    );
    let prefixed = store
        .list_terms(TermKind::Tag, Some("be"), 10)
        .await
        .expect("terms");
    assert_eq!(
        prefixed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["beach"]
    );
    let categories = store
        .list_terms(TermKind::Category, None, 10)
        .await
        .expect("terms");
    assert_eq!(categories[0].name, "animals and pets");

    // Listing by status pages through every tagged record once.
    let mut seen = BTreeSet::new();
    let mut after: Option<StatusCursor> = None;
    loop {
        let (records, more) = store
            .images_by_status(ImageStatus::Tagged, after.as_ref(), 6)
            .await
            .expect("list");
        for r in &records {
            assert!(seen.insert(r.image_id.clone()), "{} twice", r.image_id);
        }
        after = records
            .last()
            .map(|r| StatusCursor {
                updated_at: imagetag_shared::model::timestamp::format(&r.updated_at),
                image_id: r.image_id.clone(),
            })
            .or(after);
        if !more {
            break;
        }
    }
    assert_eq!(seen.len(), 20);
    let fetched = store
        .get_images(&["img-03".into(), "img-03".into(), "nope".into()])
        .await
        .expect("batch");
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].labels[0].name, "Dog");

    // Retagging moves counts; deleting removes postings and keeps a tombstone.
    indexer
        .apply(&tagged(
            "img-00",
            "t2",
            &[("Cat", 99.0, "Animals and Pets")],
        ))
        .await
        .expect("retag");
    store
        .record_generation(&generation("img-02", "t3", ImageStatus::Deleted))
        .await
        .expect("delete");
    indexer
        .apply(&IndexMessage::Unindex {
            image_id: "img-02".into(),
            sequence: "t3".into(),
        })
        .await
        .expect("unindex");
    let counts = store
        .term_counts(&[tag_term("dog"), tag_term("beach"), tag_term("cat")])
        .await
        .expect("counts");
    assert_eq!(
        (
            counts[&tag_term("dog")],
            counts[&tag_term("beach")],
            counts[&tag_term("cat")]
        ),
        (18, 8, 1)
    );
    assert!(
        all_postings(&store, &tag_term("dog"), 0.0, 50)
            .await
            .iter()
            .all(|h| h.image_id != "img-02")
    );
    let tombstone = ImageStore::get_image(&store, "img-02")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(tombstone.status, ImageStatus::Deleted);
    assert!(tombstone.labels.is_empty());
    // A late create for the deleted generation's predecessor is stale.
    assert!(matches!(
        store
            .record_generation(&generation("img-02", "t2", ImageStatus::Pending))
            .await
            .expect("write"),
        Recorded::Stale(_)
    ));
}

#[tokio::test]
async fn sqlite_store_meets_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("index.db"), 2).expect("open");
    contract(store).await;
}

#[tokio::test]
async fn dynamodb_store_meets_the_contract() {
    let moto = Moto::start().await;
    let stack = deploy(&moto, &unique_prefix("contract"), &[]).await;
    let store = DynamoStore::new(
        moto.dynamodb_client().await,
        TableNames {
            images: stack.output("ImagesTableName").into(),
            postings: stack.output("PostingsTableName").into(),
            tags: stack.output("TagsTableName").into(),
        },
    );
    contract(store).await;
}
