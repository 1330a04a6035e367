//! The HTTP listener's bounds, tried as an attacker would: trickled headers, a stalled body, more
//! connections than the cap, a thousand ranges, invented methods, oversized form fields.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use updraft_server::Limits;

use crate::TestApp;

/// A hang is a failure with a message, not CI's limit.
const WAIT: Duration = Duration::from_secs(60);

/// Reads until the server closes the socket; returns what it sent.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server kept the socket open");
    seen
}

/// A client that sends its request head one header line every 50 ms, forever, until the
/// server closes the connection.
async fn trickle(addr: String) {
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut buf = [0u8; 64];
    tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if socket.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        return;
                    }
                }
                read = socket.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
    })
    .await
    .expect("a trickling client was never closed");
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn trickling_clients_are_closed_while_real_requests_are_served() {
    let app = TestApp::with_limits(Limits {
        handshake_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let url = app.listen().await;
    let tricklers: Vec<_> = (0..500)
        .map(|_| tokio::spawn(trickle(addr_of(&url))))
        .collect();
    let answer = tokio::time::timeout(WAIT, reqwest::get(format!("{url}/healthz")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    for trickler in tricklers {
        trickler.await.unwrap();
    }
    // An idle kept-alive connection goes the same way.
    let mut idle = TcpStream::connect(addr_of(&url)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut idle).await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test]
async fn a_stalled_body_ends_the_request() {
    let app = TestApp::with_limits(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let url = app.listen().await;
    let mut socket = TcpStream::connect(addr_of(&url)).await.unwrap();
    let head = format!(
        "POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        app.admin
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let seen = until_closed(&mut socket).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let app = TestApp::with_limits(Limits {
        max_connections: 3,
        handshake_timeout: Duration::from_secs(600),
        ..Limits::default()
    })
    .await;
    let url = app.listen().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = TcpStream::connect(addr_of(&url)).await.unwrap();
        // A complete request proves the connection was accepted and holds its permit.
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(socket);
    }
    let mut fourth = TcpStream::connect(addr_of(&url)).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        until_closed(&mut fourth).await.is_empty(),
        "closed unanswered"
    );
    let metrics = app.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("updraft_http_refused_connections_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_thousand_ranges_get_the_whole_artifact_or_one_coalesced_range() {
    let app = TestApp::new().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let artifact = app.upload("title=r&version=1", &data).await.json();
    let path = format!("/api/v1/artifacts/{}/download", artifact["id"]);
    let get = |range: String| {
        let request = Request::builder()
            .uri(&path)
            .header("authorization", format!("Bearer {}", app.admin))
            .header("range", range)
            .body(Body::empty())
            .unwrap();
        app.send(request)
    };
    let disjoint: Vec<String> = (0..1000)
        .map(|i| format!("{}-{}", i * 10, i * 10))
        .collect();
    let answer = get(format!("bytes={}", disjoint.join(","))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), data.len());
    let overlapping = vec!["0-"; 1000].join(",");
    let answer = get(format!("bytes={overlapping}")).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        answer.body.len(),
        data.len(),
        "sent once, not a thousand times"
    );
    let beyond = vec!["200000-"; 1000].join(",");
    let answer = get(format!("bytes={beyond}")).await;
    assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn invented_methods_share_one_metrics_label() {
    let app = TestApp::new().await;
    for i in 0..50 {
        let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let request = Request::builder()
            .method(method)
            .uri("/healthz")
            .body(Body::empty())
            .unwrap();
        app.send(request).await;
    }
    let metrics = app.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(!text.contains("method=\"X1\""), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
}

#[tokio::test]
async fn form_fields_are_bounded() {
    let app = TestApp::new().await;
    let form = |fields: Vec<(String, String)>| {
        let mut body = String::new();
        for (name, value) in fields {
            body.push_str(&format!(
                "--b\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str("--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\nbytes\r\n--b--\r\n");
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/artifacts")
            .header("authorization", format!("Bearer {}", app.admin))
            .header("content-type", "multipart/form-data; boundary=b")
            .body(Body::from(body))
            .unwrap()
    };
    let huge = app
        .send(form(vec![
            ("description".into(), "d".repeat(70_000)),
            ("title".into(), "t".into()),
            ("version".into(), "1".into()),
        ]))
        .await;
    assert_eq!(
        (huge.status, huge.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "field_too_large")
    );
    let many = (0..40).map(|i| (format!("x{i}"), "v".to_owned())).collect();
    let many = app.send(form(many)).await;
    assert_eq!(many.status, StatusCode::BAD_REQUEST);
    let fine = app
        .send(form(vec![
            ("title".into(), "t".into()),
            ("version".into(), "1".into()),
        ]))
        .await;
    assert_eq!(fine.status, StatusCode::CREATED, "{:?}", fine.json());
    let listed = app.get("/api/v1/artifacts").await.json();
    assert_eq!(listed["total"], 1, "nothing stored from the refused forms");
}
