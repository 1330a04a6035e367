//! The dashboard in a real browser: Debian's headless chromium through chromedriver (WebDriver).
//! Sign in, upload an artifact (its progress bar reaches 100 %), assign it on the device page,
//! watch a real DDI client (the `hawkbit` crate) take the device to UPDATED on that page without a
//! reload, compare the fleet chart with the API, pause and resume a rollout; a screenshot of each
//! page goes to `docs/screenshots/`. Without chromium and chromedriver the test says so loudly,
//! and under CI (`CI=true`) it fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::TestApp;

/// How long the browser is given to show something.
const SHOW: Duration = Duration::from_secs(30);

/// chromedriver on a free port, and the WebDriver session to it (`None`: not installed).
struct Driver {
    process: tokio::process::Child,
    client: Client,
    _profile: tempfile::TempDir,
}

fn installed(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
}

async fn driver() -> Option<Driver> {
    let missing: Vec<&str> = ["chromedriver", "chromium"]
        .into_iter()
        .filter(|b| !installed(b))
        .collect();
    if !missing.is_empty() {
        let say = format!(
            "THE DASHBOARD'S BROWSER TEST DID NOT RUN: {} not installed \
             (apt-get install chromium chromium-driver)",
            missing.join(" and ")
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{say}");
        eprintln!("\n*** {say} ***\n");
        return None;
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut process = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Ready when it says so.
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    updraft_test_support::within(async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("started successfully") {
                return;
            }
        }
        panic!("chromedriver ended before it started");
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900",
            format!("--user-data-dir={}", profile.path().display()),
        ]}),
    );
    // Two TLS backends are linked in: say which one the WebDriver client uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in chromium");
    Some(Driver {
        process,
        client,
        _profile: profile,
    })
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(SHOW)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never showed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_updates_a_device_from_the_dashboard() {
    let Some(mut driver) = driver().await else {
        return;
    };
    let app = TestApp::new().await;
    let base = app.listen().await;
    let token = app.device("kitchen-sensor").await;
    app.device("hall-sensor").await;
    let client = driver.client.clone();

    // Sign in.
    client.goto(&format!("{base}/")).await.unwrap();
    let key = wait_for(&client, "input[name=key]").await;
    shoot(&client, "login").await;
    key.send_keys(&app.admin).await.unwrap();
    client
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&client, "[data-chart=states]").await;

    // Upload, with the progress bar.
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sensor-fw-1.2.0.bin");
    std::fs::write(&file, &image).unwrap();
    client
        .goto(&format!("{base}/ui/artifacts/new"))
        .await
        .unwrap();
    for (name, value) in [("title", "sensor-fw"), ("version", "1.2.0")] {
        let field = wait_for(&client, &format!("input[name={name}]")).await;
        field.send_keys(value).await.unwrap();
    }
    client
        .find(Locator::Css("input[type=file]"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    client
        .find(Locator::Css("#upload button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&client, "#upload[data-uploaded]").await;
    let progress = client
        .execute(
            "return document.getElementById('upload-progress').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(progress, json!(100));
    shoot(&client, "upload").await;
    client
        .find(Locator::Css("#upload-status a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let size = wait_for(&client, "[data-size]").await;
    assert_eq!(
        size.attr("data-size").await.unwrap().as_deref(),
        Some("3000000")
    );
    shoot(&client, "artifact").await;
    let listed = app.get("/api/v1/artifacts").await.json();
    assert_eq!(listed["items"][0]["checksums"]["sha256"], {
        use sha2::Digest;
        json!(hex_lower(&sha2::Sha256::digest(&image)))
    });

    // Assign it on the device page.
    client
        .goto(&format!("{base}/ui/devices/kitchen-sensor"))
        .await
        .unwrap();
    wait_for(&client, "select[name=artifact]")
        .await
        .select_by_value("sensor-fw@1.2.0")
        .await
        .unwrap();
    client
        .find(Locator::Css("form[action$='/assign'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &client,
        "[data-active-state=QUEUED], [data-active-state=INITIATED]",
    )
    .await;

    // A real DDI client updates the device; the page follows without a reload.
    client
        .execute("window.updraftMarker = 42;", vec![])
        .await
        .unwrap();
    let ddi = hawkbit::ddi::Client::new(
        &base,
        "DEFAULT",
        "kitchen-sensor",
        hawkbit::ddi::ClientAuthorization::TargetToken(token),
        None,
        None,
        None,
    )
    .unwrap();
    let reply = updraft_test_support::within(ddi.poll()).await.unwrap();
    let update = reply.update().expect("a deployment").fetch().await.unwrap();
    update
        .send_feedback(
            hawkbit::ddi::Execution::Proceeding,
            hawkbit::ddi::Finished::None,
            vec!["Downloading"],
        )
        .await
        .unwrap();
    wait_for(&client, "[data-active-state=DOWNLOADING]").await;
    let downloaded = update.download(dir.path()).await.unwrap();
    downloaded[0].check_sha256().await.unwrap();
    update
        .send_feedback(
            hawkbit::ddi::Execution::Closed,
            hawkbit::ddi::Finished::Success,
            vec!["Installed"],
        )
        .await
        .unwrap();
    wait_for(
        &client,
        "td[data-running=firmware][data-value='sensor-fw@1.2.0']",
    )
    .await;
    wait_for(&client, "[data-active-state=none]").await;
    let marker = client
        .execute("return window.updraftMarker;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!(42), "the page was not reloaded");
    shoot(&client, "device").await;

    // The fleet chart says what the API says.
    client.goto(&format!("{base}/")).await.unwrap();
    let bar = wait_for(&client, "[data-chart=states] g[data-label=UPDATED]").await;
    let status = app.get("/api/v1/status").await.json();
    assert_eq!(
        bar.attr("data-count").await.unwrap(),
        Some(status["actions"]["UPDATED"].to_string())
    );
    let devices = wait_for(&client, "[data-stat=devices]").await;
    assert_eq!(devices.text().await.unwrap(), status["devices"].to_string());
    shoot(&client, "fleet").await;

    // A rollout, paused and resumed from its page.
    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "hall", "artifact": "sensor-fw@1.2.0", "devices": ["hall-sensor"],
                   "start": "auto"}),
        )
        .await;
    assert!(created.status.is_success(), "{:?}", created.json());
    updraft_server::kernel::scheduler::pass(
        &app.state,
        updraft_server::kernel::clock::now_millis(),
    )
    .await
    .unwrap();
    client
        .goto(&format!("{base}/ui/rollouts/hall"))
        .await
        .unwrap();
    for (command, state) in [("pause", "PAUSED"), ("resume", "RUNNING")] {
        wait_for(&client, &format!("button[data-command={command}]"))
            .await
            .click()
            .await
            .unwrap();
        wait_for(&client, &format!("[data-rollout-state={state}]")).await;
        let shown = app.get("/api/v1/rollouts/hall").await.json();
        assert_eq!(shown["state"], state);
    }
    shoot(&client, "rollout").await;

    for (page, name) in [
        ("/ui/devices", "devices"),
        ("/ui/artifacts", "artifacts"),
        ("/ui/assignments", "assignments"),
        ("/ui/rollouts", "rollouts"),
    ] {
        client.goto(&format!("{base}{page}")).await.unwrap();
        wait_for(&client, "main h1").await;
        shoot(&client, name).await;
    }

    // Signing out ends the session in the browser too.
    client
        .find(Locator::Css(".who button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&client, "input[name=key]").await;
    client.goto(&format!("{base}/ui/devices")).await.unwrap();
    wait_for(&client, "input[name=key]").await;

    driver.client.clone().close().await.unwrap();
    let _ = driver.process.kill().await;
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
