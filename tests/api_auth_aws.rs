//! The write endpoints of the query service wired to AWS (on moto, with the
//! stack from the CloudFormation template and the four service binaries):
//! refused without the key, then a delete that removes the object and ends
//! with the image unindexed, and a re-drive that moves a dead letter back.

mod support;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use imagetag_shared::model::image_id;
use serde_json::{Value, json};
use support::api::{get_json, until};
use support::corpus::png;
use support::services::Pipeline;
use support::{Moto, deploy, unique_prefix};

const PATIENCE: Duration = Duration::from_secs(90);

async fn eventually<F, Fut>(pipeline: &Pipeline, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until(
        what,
        PATIENCE,
        || pipeline.logs(),
        || {
            let done = check();
            async move { done.await.then_some(()) }
        },
    )
    .await
}

async fn status_of(http: &reqwest::Client, pipeline: &Pipeline, id: &str) -> (u16, Value) {
    get_json(http, &pipeline.api(&format!("/v1/images/{id}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_redrives_go_through_the_aws_adapters() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("auth");
    let stack = deploy(&moto, &prefix, &[("MaxReceiveCount", "3")]).await;
    let bucket = stack.output("BucketName").to_owned();
    let pipeline = Pipeline::start(&moto, &stack);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;

    let key = "photos/to-delete.png";
    s3.put_object()
        .bucket(&bucket)
        .key(key)
        .content_type("image/png")
        .body(ByteStream::from(png(48, 32, 9)))
        .send()
        .await
        .expect("PUT");
    let id = image_id(&bucket, key);
    eventually(&pipeline, "the image to be tagged", || async {
        status_of(&http, &pipeline, &id).await.1["status"] == "tagged"
    })
    .await;

    let delete_url = pipeline.api(&format!("/v1/images/{id}"));
    let anonymous = http.delete(&delete_url).send().await.expect("DELETE");
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong = http
        .delete(&delete_url)
        .bearer_auth("itk_not-the-key")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(
        s3.head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .is_ok(),
        "refused deletes leave the object alone"
    );
    let accepted = http
        .delete(&delete_url)
        .bearer_auth(&pipeline.api_key)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(accepted.status().as_u16(), 202);
    assert!(
        s3.head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .is_err(),
        "the object is gone from the bucket"
    );
    // The bucket's deletion event reaches ingest, and the image leaves the
    // index like any deleted object.
    eventually(&pipeline, "the deletion to reach the index", || async {
        status_of(&http, &pipeline, &id).await.0 == 404
    })
    .await;

    // A dead letter on the tag-jobs DLQ goes back to the tag queue.
    let dlq = stack.output("TagDeadLetterQueueUrl").to_owned();
    sqs.send_message()
        .queue_url(&dlq)
        .message_body(r#"{"not":"a tag job"}"#)
        .send()
        .await
        .expect("send to DLQ");
    let redrive = http
        .post(pipeline.api("/v1/admin/redrive"))
        .bearer_auth(&pipeline.api_key)
        .json(&json!({ "queue": "tag-jobs" }))
        .send()
        .await
        .expect("redrive");
    assert_eq!(redrive.status().as_u16(), 200);
    let report: Value = redrive.json().await.expect("report");
    assert_eq!(report["moved"]["tag-jobs"], 1, "{report}");
}
