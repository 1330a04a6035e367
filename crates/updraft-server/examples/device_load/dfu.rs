//! Drogue DFU devices over HTTP (packed CBOR), then the same image through hawkBit DDI.

use super::*;

/// One Drogue DFU device: writes the whole image through Status → Command exchanges.
pub(super) async fn dfu_device(
    http: reqwest::Client,
    api: String,
    user: String,
    token: String,
    mtu: u32,
) -> u64 {
    let mut image: Vec<u8> = Vec::new();
    let mut writing: Option<Vec<u8>> = None;
    loop {
        let status = match &writing {
            Some(version) => {
                embedded_update::Status::update(b"0", Some(mtu), image.len() as u32, version, None)
            }
            None => embedded_update::Status::first(b"0", Some(mtu), None),
        };
        let body = serde_cbor::ser::to_vec_packed(&status).unwrap();
        let answer = http
            .post(format!("{api}/v1/dfu"))
            .basic_auth(&user, Some(&token))
            .header("content-type", "application/cbor")
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        match serde_cbor::from_slice::<embedded_update::Command>(&answer).unwrap() {
            embedded_update::Command::Write { version, data, .. } => {
                writing = Some(version.to_vec());
                image.extend_from_slice(&data);
            }
            embedded_update::Command::Swap { .. } => return image.len() as u64,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn dfu(
    api: String,
    admin: String,
    n: usize,
    mtu: u32,
    artifact: String,
    module: String,
    filename: String,
) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .unwrap();
    let tokens = create_devices(&http, &api, &admin, n, &format!("dfu{mtu}")).await;
    assign_tenant_wide(&http, &api, &admin, &artifact).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let user = format!("dfu{mtu}-{i}@default");
        tasks.push(tokio::spawn(dfu_device(
            http.clone(),
            api.clone(),
            user,
            token.clone(),
            mtu,
        )));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.unwrap();
    }
    let dfu_secs = start.elapsed().as_secs_f64();
    let (ddi_bytes, ddi_secs) = ddi_download_all(
        &http,
        &api,
        &format!("dfu{mtu}"),
        &tokens,
        &module,
        &filename,
    )
    .await;
    println!(
        "dfu mtu {mtu}: {n} devices, {:.1} MB in {dfu_secs:.2} s = {:.1} MB/s; ddi: {:.1} MB in {ddi_secs:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / dfu_secs,
        ddi_bytes as f64 / 1e6,
        ddi_bytes as f64 / 1e6 / ddi_secs
    );
}
