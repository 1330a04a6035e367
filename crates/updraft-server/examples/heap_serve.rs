//! `updraft serve` on embedded defaults (HTTP only) under dhat's heap profiler, for
//! `bench/heap.sh`: `heap_serve DATA_DIR` listens on a free loopback port (printed as `updraft
//! serve` prints it) and, at SIGTERM, writes `dhat-heap.json` — the heap's peak and the allocation
//! sites that held it — into the working directory. The profiler lives in this example only.
//! `heap_serve DATA_DIR --mqtt N` also listens for MQTT on loopback, with room for N connections
//! of one device (`bench/mqtt-heap.sh`: what an idle connection holds); SIGUSR1 writes the profile
//! at once, the heap at that moment in its "at the end" figures, and the server goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data_dir = args
        .get(1)
        .expect("usage: heap_serve DATA_DIR [--mqtt N]")
        .clone();
    let mqtt_connections: Option<usize> = match args.get(2).map(String::as_str) {
        Some("--mqtt") => Some(args[3].parse().expect("--mqtt N: a number of connections")),
        _ => None,
    };
    let mut limits = updraft_server::kernel::state::Limits::default();
    if let Some(n) = mqtt_connections {
        limits.max_connections = n + 100;
        limits.max_connections_per_device = n + 10;
    }
    let profiler = dhat::Profiler::new_heap();
    let config = updraft_server::server::ServerConfig {
        data_dir: data_dir.into(),
        http: "127.0.0.1:0".parse().unwrap(),
        database_url: None,
        max_upload_bytes: 1 << 30,
        public_url: None,
        mqtt: mqtt_connections.map(|_| "127.0.0.1:0".parse().unwrap()),
        coap: None,
        lwm2m: None,
        lwm2m_dtls: None,
        mqtts: None,
        tls: None,
        notify_per_second: 5000, // `updraft serve`'s default
        limits,
        storage: Default::default(),
    };
    let terminate = async {
        let mut signal =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        signal.recv().await;
    };
    // SIGUSR1 ends the profile while the server goes on serving: the profile's "at the end"
    // figures are then the heap at that moment (what idle connections hold, without the peak of
    // their connecting).
    let mut snapshot =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).unwrap();
    let server = updraft_server::run(config, terminate);
    tokio::pin!(server);
    tokio::select! {
        _ = snapshot.recv() => {
            drop(profiler);
            server.await.unwrap();
        }
        ended = &mut server => {
            ended.unwrap();
            drop(profiler);
        }
    }
}
