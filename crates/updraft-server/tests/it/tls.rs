//! The MQTT endpoint over TLS: a registered client certificate is the device's credential (AWS
//! IoT's mutual TLS), an unregistered one is refused, and AWS's Python device SDK runs a job with
//! its certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};

use crate::TestApp;

/// A test CA, the server's certificate for `localhost` signed by it, and files for each.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "updraft test ca");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Pki {
            ca_pem: ca.pem(),
            dir,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed device certificate; returns (cert PEM, key PEM), also written to files.
    pub(crate) fn device(&self, name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key_pair.serialize_pem()).unwrap();
        (cert.pem(), key_pair.serialize_pem())
    }

    /// A self-signed device certificate that expired in 2020.
    fn expired_device(&self, name: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.pem()
    }
}

fn client_config(pki: &Pki, device: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let cert = CertificateDer::from_pem_file(pki.path(&format!("{device}.pem"))).unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{device}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert], key)
    .unwrap();
    Arc::new(config)
}

async fn register(app: &TestApp, id: &str, cert_pem: &str) -> String {
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": id, "certificate": cert_pem}),
        )
        .await;
    assert_eq!(
        created.status,
        axum::http::StatusCode::CREATED,
        "{:?}",
        created.json()
    );
    created.json()["token"].as_str().unwrap().to_owned()
}

/// Connects with the device's certificate and no password; returns whether CONNACK accepted,
/// and the client for more.
pub(crate) async fn connect(
    pki: &Pki,
    port: u16,
    device: &str,
) -> (bool, AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(device, "localhost", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_config(pki, device),
    )));
    let (client, mut events) = AsyncClient::new(options, 16);
    let accepted = loop {
        match updraft_test_support::within(events.poll()).await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                break ack.code == rumqttc::ConnectReturnCode::Success;
            }
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    (accepted, client, events)
}

#[tokio::test]
async fn a_registered_client_certificate_is_the_devices_credential() {
    let pki = Pki::new();
    let app = TestApp::new().await;
    let port = app
        .listen_mqtts(&pki.path("server.pem"), &pki.path("server.key"))
        .await;
    let (cert, _) = pki.device("thing-7");
    pki.device("stranger");
    register(&app, "thing-7", &cert).await;

    let (accepted, client, mut events) = connect(&pki, port, "thing-7").await;
    assert!(accepted, "the registered certificate is let in");
    client
        .publish(
            "$aws/things/thing-7/jobs/get",
            QoS::AtLeastOnce,
            false,
            r#"{"clientToken":"tls"}"#,
        )
        .await
        .unwrap();
    let answer = updraft_test_support::within(async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                break p;
            }
        }
    })
    .await;
    assert_eq!(answer.topic, "$aws/things/thing-7/jobs/get/accepted");
    let body: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(body["clientToken"], "tls");

    let (accepted, _, _) = connect(&pki, port, "stranger").await;
    assert!(!accepted, "an unregistered certificate is refused");

    // A registered certificate that has expired is refused in the handshake.
    let expired = pki.expired_device("thing-old");
    register(&app, "thing-old", &expired).await;
    let (accepted, _, _) = connect(&pki, port, "thing-old").await;
    assert!(!accepted, "an expired certificate is refused");

    // A certificate that is not one is refused at registration.
    let refused = app
        .post(
            "/api/v1/devices",
            json!({"id": "bad", "certificate": "junk"}),
        )
        .await;
    assert_eq!(refused.code(), "invalid_certificate");
}

/// AWS's own device SDK, with mutual TLS as it connects to AWS IoT, runs a job.
#[tokio::test]
async fn the_aws_iot_device_sdk_runs_a_job_over_mutual_tls() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Some(python) = updraft_test_support::interop_python() else {
        return;
    };
    let pki = Pki::new();
    let app = TestApp::new().await;
    let port = app
        .listen_mqtts(&pki.path("server.pem"), &pki.path("server.key"))
        .await;
    let (cert, _) = pki.device("sdk-tls");
    register(&app, "sdk-tls", &cert).await;
    let uploaded = app
        .upload(
            "title=ota-fw&version=3.0.0&signature=c3RhbmQtaW4%3D",
            &[7u8; 3000],
        )
        .await;
    assert!(uploaded.status.is_success());
    let script = Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("tests/interop/aws_jobs.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .args(["localhost", &port.to_string(), "sdk-tls", "unused"])
        .args([
            pki.path("ca.pem"),
            pki.path("sdk-tls.pem"),
            pki.path("sdk-tls.key"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    if updraft_test_support::within(lines.next_line())
        .await
        .unwrap()
        .as_deref()
        != Some("ready")
    {
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
            .await
            .unwrap();
        panic!("the SDK did not connect: {stderr}");
    }
    app.post(
        "/api/v1/assignments",
        json!({"device": "sdk-tls", "artifact": "ota-fw@3.0.0"}),
    )
    .await;
    let summary = updraft_test_support::within(lines.next_line())
        .await
        .unwrap();
    assert!(
        updraft_test_support::within(child.wait())
            .await
            .unwrap()
            .success()
    );
    let seen: Value = serde_json::from_str(&summary.unwrap()).unwrap();
    assert_eq!(seen["updates"], json!(["IN_PROGRESS", "SUCCEEDED"]));
    let shown = app.get("/api/v1/devices/sdk-tls").await.json();
    assert_eq!(shown["firmware"]["version"], "3.0.0");
}
