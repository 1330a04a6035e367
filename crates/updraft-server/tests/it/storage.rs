//! Blobs in S3-compatible storage (a real SeaweedFS): an upload lands in the bucket and reads
//! back, and with `--download-redirect` a hawkBit DDI download is a `307` to a presigned URL of
//! the object, which serves the same bytes without the server; download URLs are signed, so a
//! second server on the same database serves the first one's.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use updraft_server::server::{BlobsAt, Storage};

use crate::TestApp;

async fn s3_app(redirect: bool) -> Option<TestApp> {
    let bucket = updraft_test_support::s3::fresh_bucket()?;
    let storage = Storage {
        blobs: BlobsAt::S3(crate::s3_config(&bucket)),
        download_redirect: redirect,
        ..Storage::default()
    };
    Some(
        TestApp::prepared_with(
            crate::test_database().await,
            64 * 1024 * 1024,
            "http://127.0.0.1:1".into(),
            Default::default(),
            storage,
        )
        .await,
    )
}

#[tokio::test]
async fn ddi_downloads_redirect_to_a_presigned_url_of_the_object() {
    let Some(app) = s3_app(true).await else {
        return;
    };
    let token = app.device("dev-s3").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let uploaded = app
        .upload("title=fw&version=3&filename=fw.bin", &data)
        .await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    let id = uploaded.json()["id"].as_i64().unwrap();
    app.post(
        "/api/v1/assignments",
        json!({"device": "dev-s3", "artifact": "fw@3"}),
    )
    .await;
    let path = format!("/DEFAULT/controller/v1/dev-s3/softwaremodules/{id}/artifacts/fw.bin");
    let answer = app
        .send(
            Request::builder()
                .method(Method::GET)
                .uri(&path)
                .header("authorization", format!("TargetToken {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    let location = answer.headers["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The presigned URL serves the object, ranges included, with no credentials of ours.
    let client = reqwest_like_get(&location, None).await;
    assert_eq!(client.0, 200);
    assert!(client.1 == data);
    let ranged = reqwest_like_get(&location, Some("bytes=1000-1999")).await;
    assert_eq!(ranged.0, 206);
    assert!(ranged.1 == data[1000..2000]);
    // The management API's download is not redirected: it streams through the server.
    let direct = app.get(&format!("/api/v1/artifacts/{id}/download")).await;
    assert_eq!(direct.status, StatusCode::OK);
    assert!(direct.body == data);
}

/// A GET with curl (status, body).
async fn reqwest_like_get(url: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let mut command = tokio::process::Command::from(updraft_test_support::curl_get(url, range));
    let out = updraft_test_support::within(command.output())
        .await
        .unwrap();
    updraft_test_support::curl_answer(out.stdout)
}

#[tokio::test]
async fn an_artifact_in_the_bucket_reads_back_whole_and_in_ranges() {
    let Some(app) = s3_app(false).await else {
        return;
    };
    let data: Vec<u8> = (0..(9 * 1024 * 1024 + 5) as u32)
        .map(|i| (i % 253) as u8)
        .collect();
    let uploaded = app.upload("title=big&version=1", &data).await;
    assert_eq!(
        uploaded.status,
        StatusCode::CREATED,
        "{:?}",
        uploaded.json()
    );
    let id = uploaded.json()["id"].as_i64().unwrap();
    let whole = app.get(&format!("/api/v1/artifacts/{id}/download")).await;
    assert!(whole.body == data);
    let part = app
        .send(
            Request::get(format!("/api/v1/artifacts/{id}/download"))
                .header("authorization", format!("Bearer {}", app.admin))
                .header("range", "bytes=8388600-8388700")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert!(part.body == data[8_388_600..=8_388_700]);
    // A wrong checksum leaves nothing: no artifact, no object.
    let refused = app
        .upload(
            &format!(
                "title=bad&version=1&checksum_algorithm=SHA256&checksum={}",
                "0".repeat(64)
            ),
            b"bytes",
        )
        .await;
    assert_eq!(refused.json()["code"], "checksum_mismatch");
    assert_eq!(app.state.blobs.list().await.unwrap().len(), 1);
}
