//! Uploads, downloads and every way an upload can go wrong.

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use futures_util::stream;
use updraft_core::MultiHasher;

use crate::TestApp;

fn sums(data: &[u8]) -> updraft_core::Checksums {
    let mut hasher = MultiHasher::new();
    hasher.update(data);
    hasher.finish()
}

#[tokio::test]
async fn uploads_are_checked_before_anything_is_stored() {
    let app = TestApp::new().await;
    app.post("/api/v1/profiles", serde_json::json!({"name": "esp32"}))
        .await;
    let data = b"firmware image bytes".to_vec();
    let s = sums(&data);
    // (query, expected status, expected code or "")
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            format!(
                "title=fw&version=1&checksum_algorithm=SHA256&checksum={}",
                s.sha256
            ),
            StatusCode::CREATED,
            "",
        ),
        (
            "title=fw&version=1".into(),
            StatusCode::CONFLICT,
            "artifact_exists",
        ),
        (
            format!(
                "title=fw&version=2&checksum_algorithm=MD5&checksum={}",
                s.md5.to_uppercase()
            ),
            StatusCode::CREATED,
            "",
        ),
        (
            format!(
                "title=fw&version=3&checksum_algorithm=CRC32&checksum={}",
                s.crc32
            ),
            StatusCode::CREATED,
            "",
        ),
        (
            format!(
                "title=fw&version=4&checksum_algorithm=MURMUR3_128&checksum={}",
                s.murmur3_128
            ),
            StatusCode::CREATED,
            "",
        ),
        (
            format!("title=fw&version=5&checksum={}", s.sha256),
            StatusCode::CREATED,
            "",
        ),
        (
            "title=fw&version=6&checksum_algorithm=SHA256&checksum=00ff".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
        ),
        (
            format!(
                "title=fw&version=7&checksum_algorithm=MURMUR3_32&checksum={}",
                s.crc32
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
        ),
        (
            "title=fw&version=8&checksum_algorithm=SHA3&checksum=00".into(),
            StatusCode::BAD_REQUEST,
            "unknown_checksum_algorithm",
        ),
        (
            "title=fw&version=9&checksum_algorithm=SHA256".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "title=fw&version=10&profiles=esp32,nosuch".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_profile",
        ),
        (
            "title=fw&version=11&filename=../../etc/passwd".into(),
            StatusCode::BAD_REQUEST,
            "invalid_filename",
        ),
        (
            "title=fw&version=12&filename=..".into(),
            StatusCode::BAD_REQUEST,
            "invalid_filename",
        ),
        (
            "version=13".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "title=a/b&version=14".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "title=fw&version=15&type=bootloader".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "title=fw&version=16&profiles=esp32&type=software".into(),
            StatusCode::CREATED,
            "",
        ),
    ];
    for (query, status, code) in &cases {
        let answer = app.upload(query, &data).await;
        assert_eq!(
            answer.status,
            *status,
            "{query}: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
        if !code.is_empty() {
            assert_eq!(answer.code(), *code, "{query}");
            assert!(!answer.json()["message"].as_str().unwrap().is_empty());
        }
    }
    let created = cases
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::CREATED)
        .count();
    let listed = app.get("/api/v1/artifacts").await.json();
    assert_eq!(listed["total"], created);
    // One blob for the same bytes, however many artifacts; nothing staged.
    assert_eq!(app.blob_files().await, (0, 1));
    let empty = app.upload("title=fw&version=17", b"").await;
    assert_eq!(
        (empty.status, empty.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let with_profile = &listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["version"] == "16")
        .unwrap()
        .clone();
    assert_eq!(with_profile["profiles"], serde_json::json!(["esp32"]));
    assert_eq!(with_profile["type"], "software");
    assert_eq!(with_profile["checksums"]["murmur3_32"], s.murmur3_32);
}

#[tokio::test]
async fn an_upload_larger_than_the_limit_is_refused_before_its_body_is_read() {
    let app = TestApp::with_limit(1000).await;
    // A body that fails as soon as it is read: a 413 proves it was not.
    let poisoned = stream::iter(vec![Err::<Bytes, std::io::Error>(std::io::Error::other(
        "body was read",
    ))]);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/artifacts?title=big&version=1")
        .header("authorization", format!("Bearer {}", app.admin))
        .header("content-length", "10737418240")
        .body(Body::from_stream(poisoned))
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "payload_too_large");
    // Without a Content-Length the limit is enforced while streaming.
    let chunks =
        stream::iter((0..4).map(|_| Ok::<Bytes, std::io::Error>(Bytes::from(vec![7u8; 400]))));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/artifacts?title=big&version=2")
        .header("authorization", format!("Bearer {}", app.admin))
        .body(Body::from_stream(chunks))
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(app.blob_files().await, (0, 0));
    assert_eq!(app.get("/api/v1/artifacts").await.json()["total"], 0);
}

#[tokio::test]
async fn an_upload_cut_off_mid_stream_leaves_nothing() {
    let app = TestApp::new().await;
    let parts = vec![
        Ok(Bytes::from(vec![1u8; 5000])),
        Err(std::io::Error::other("connection reset")),
    ];
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/artifacts?title=cut&version=1")
        .header("authorization", format!("Bearer {}", app.admin))
        .header("content-length", "100000")
        .body(Body::from_stream(stream::iter(parts)))
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::BAD_REQUEST, "upload_incomplete")
    );
    assert_eq!(app.blob_files().await, (0, 0));
    assert_eq!(app.get("/api/v1/artifacts").await.json()["total"], 0);
    let metrics = String::from_utf8(app.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("updraft_uploads_refused_total 1"),
        "{metrics}"
    );
}

fn multipart(fields: &[(&str, &str)], filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "updraft-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn multipart_uploads_download_byte_identical_with_ranges() {
    let app = TestApp::new().await;
    app.post("/api/v1/profiles", serde_json::json!({"name": "a"}))
        .await;
    app.post("/api/v1/profiles", serde_json::json!({"name": "b"}))
        .await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let s = sums(&data);
    let fields = [
        ("title", "app"),
        ("version", "2.0"),
        ("profile", "a"),
        ("profile", "b"),
        ("checksum_algorithm", "SHA512"),
        ("checksum", s.sha512.as_str()),
        ("description", "the app"),
    ];
    let (content_type, body) = multipart(&fields, "app-2.0.swu", &data);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/artifacts")
        .header("authorization", format!("Bearer {}", app.admin))
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let artifact = answer.json();
    assert_eq!(artifact["filename"], "app-2.0.swu");
    assert_eq!(artifact["profiles"], serde_json::json!(["a", "b"]));
    assert_eq!(artifact["size"], data.len());
    assert_eq!(artifact["description"], "the app");
    let id = artifact["id"].as_i64().unwrap();
    assert_eq!(
        answer.headers["location"],
        format!("/api/v1/artifacts/{id}")
    );
    assert_eq!(
        artifact["download_url"],
        format!("http://updraft.test/api/v1/artifacts/{id}/download")
    );

    let download = |range: Option<&str>, if_range: Option<&str>| {
        let mut request = Request::builder()
            .uri(format!("/api/v1/artifacts/{id}/download"))
            .header("authorization", format!("Bearer {}", app.admin));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        if let Some(if_range) = if_range {
            request = request.header("if-range", if_range);
        }
        app.send(request.body(Body::empty()).unwrap())
    };
    let whole = download(None, None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body.as_ref(), data.as_slice());
    assert_eq!(whole.headers["content-length"], data.len().to_string());
    assert_eq!(whole.headers["etag"], format!("\"{}\"", s.sha256));
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    let part = download(Some("bytes=1000-1999"), None).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body.as_ref(), &data[1000..2000]);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 1000-1999/{}", data.len())
    );
    let tail = download(Some("bytes=-10"), Some(&format!("\"{}\"", s.sha256))).await;
    assert_eq!(
        (tail.status, tail.body.as_ref()),
        (StatusCode::PARTIAL_CONTENT, &data[data.len() - 10..])
    );
    let stale = download(Some("bytes=0-9"), Some("\"someothervalidator\"")).await;
    assert_eq!(
        (stale.status, stale.body.len()),
        (StatusCode::OK, data.len())
    );
    let beyond = download(Some("bytes=200000-"), None).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        beyond.headers["content-range"],
        format!("bytes */{}", data.len())
    );
    let metrics = String::from_utf8(app.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("updraft_artifacts_uploaded_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn deleting_an_artifact_removes_its_blob_only_when_unreferenced() {
    let app = TestApp::new().await;
    let first = app.upload("title=fw&version=1", b"same bytes").await.json();
    let second = app.upload("title=fw&version=2", b"same bytes").await.json();
    app.post("/api/v1/devices", serde_json::json!({"id": "d1"}))
        .await;
    app.post(
        "/api/v1/assignments",
        serde_json::json!({"device": "d1", "artifact": "fw@1"}),
    )
    .await;
    let in_use = app
        .call(
            Method::DELETE,
            &format!("/api/v1/artifacts/{}", first["id"]),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(
        (in_use.status, in_use.code().as_str()),
        (StatusCode::CONFLICT, "artifact_in_use")
    );
    let unassigned = app
        .call(
            Method::DELETE,
            "/api/v1/assignments?device=d1",
            &app.admin,
            None,
        )
        .await;
    assert_eq!(unassigned.status, StatusCode::NO_CONTENT);
    for (artifact, blobs_left) in [(&first, 1), (&second, 0)] {
        let deleted = app
            .call(
                Method::DELETE,
                &format!("/api/v1/artifacts/{}", artifact["id"]),
                &app.admin,
                None,
            )
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        assert_eq!(app.blob_files().await, (0, blobs_left));
    }
    let gone = app
        .call(
            Method::DELETE,
            &format!("/api/v1/artifacts/{}", first["id"]),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(
        (gone.status, gone.code().as_str()),
        (StatusCode::NOT_FOUND, "artifact_not_found")
    );
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("../updraft-core/tests/vectors")
        .join(name),
    )
    .unwrap()
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A profile's code-signing certificate decides which signatures an upload may carry: one made
/// by OpenSSL with its key is stored, any other is refused with nothing stored.
#[tokio::test]
async fn signatures_are_checked_against_the_profiles_signing_certificate() {
    use base64::Engine;
    use serde_json::json;
    let app = TestApp::new().await;
    let pem = String::from_utf8(vector("code-sign.pem")).unwrap();
    let created = app
        .post(
            "/api/v1/profiles",
            json!({"name": "esp32-c3", "signing_cert": pem, "signing_cert_name": "ota/code-sign.pem"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(created.json()["signing_cert_name"], "ota/code-sign.pem");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let good = query_escape(&b64(&vector("signed.bin.sig")));
    let data = vector("signed.bin");

    let stored = app
        .upload(
            &format!("title=fw&version=1&profiles=esp32-c3&signature={good}&signature_algorithm=ecdsa-p256-sha256"),
            &data,
        )
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{:?}", stored.json());
    // Without naming the algorithm: a compatible profile has a certificate, so it is checked.
    let mut tampered = data.clone();
    tampered[0] ^= 1;
    for (query, body, code) in [
        (
            format!("title=fw&version=2&profiles=esp32-c3&signature={good}"),
            &tampered,
            "invalid_signature",
        ),
        (
            format!(
                "title=fw&version=3&signature={}",
                query_escape("not base64!")
            ),
            &data,
            "invalid_signature",
        ),
        (
            format!("title=fw&version=4&signature={good}&signature_algorithm=rsa-pss"),
            &data,
            "unsupported_signature_algorithm",
        ),
        (
            "title=fw&version=5&signature_algorithm=ecdsa-p256-sha256".to_owned(),
            &data,
            "invalid_request",
        ),
        // Unsigned, for the signing profile or for every profile (which includes it).
        (
            "title=fw&version=7&profiles=esp32-c3".to_owned(),
            &data,
            "signature_required",
        ),
        ("title=fw&version=8".to_owned(), &data, "signature_required"),
    ] {
        let refused = app.upload(&query, body).await;
        assert_eq!(refused.code(), code, "{query}");
        assert!(refused.status.is_client_error());
    }
    assert_eq!(
        app.blob_files().await,
        (0, 1),
        "nothing but the first upload is stored"
    );
    // A profile without a certificate takes a signature as given.
    app.post("/api/v1/profiles", json!({"name": "linux"})).await;
    let unchecked = app
        .upload(
            "title=fw&version=6&profiles=linux&signature=c3RhbmQtaW4%3D",
            &tampered,
        )
        .await;
    assert_eq!(unchecked.status, StatusCode::CREATED);
    let unsigned = app
        .upload("title=fw&version=9&profiles=linux", &tampered)
        .await;
    assert_eq!(
        unsigned.status,
        StatusCode::CREATED,
        "no certificate, no signature needed"
    );

    // Certificates must carry a P-256 key; a name needs a certificate.
    let rsa = String::from_utf8(vector("rsa.pem")).unwrap();
    for (body, code) in [
        (
            json!({"name": "rsa", "signing_cert": rsa}),
            "invalid_certificate",
        ),
        (
            json!({"name": "junk", "signing_cert": "junk"}),
            "invalid_certificate",
        ),
        (
            json!({"name": "named", "signing_cert_name": "x.crt"}),
            "invalid_request",
        ),
    ] {
        let refused = app.post("/api/v1/profiles", body.clone()).await;
        assert_eq!(refused.code(), code, "{body}");
    }
    // The certificate can be replaced and removed.
    let other = String::from_utf8(vector("other.pem")).unwrap();
    let answer = app
        .call(
            Method::PUT,
            "/api/v1/profiles/esp32-c3",
            &app.admin.clone(),
            Some(json!({"signing_cert": other})),
        )
        .await;
    assert_eq!(answer.json()["signing_cert_name"], "code-sign.crt");
    let refused = app
        .upload(
            &format!("title=fw&version=7&profiles=esp32-c3&signature={good}"),
            &data,
        )
        .await;
    assert_eq!(refused.code(), "invalid_signature");
    let answer = app
        .call(
            Method::PUT,
            "/api/v1/profiles/esp32-c3",
            &app.admin.clone(),
            Some(json!({"signing_cert": ""})),
        )
        .await;
    assert!(answer.json()["signing_cert_name"].is_null());
}
