//! `updraft serve`: the server's configuration from flags, environment and file, until a signal.

use anyhow::Result;

use super::args::*;
use crate::config::{self, FileConfig};

pub(super) async fn serve(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPDRAFT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour on a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let given = config::Given {
        data_dir: args.data_dir,
        http: args.http,
        database_url: args.database_url,
        max_upload_bytes: args.max_upload_bytes,
        public_url: args.public_url,
        mqtt: args.mqtt,
        coap: args.coap,
        mqtts: args.mqtts,
        lwm2m: args.lwm2m,
        lwm2m_dtls: args.lwm2m_dtls,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        notify_per_second: args.notify_per_second,
        max_connections: args.max_connections,
        blobs: args.blobs,
        download_redirect: args.download_redirect,
        gc_grace_secs: args.gc_grace_secs,
    };
    let config = config::merge(given, file)?;
    updraft_server::run(config, shutdown_signal()).await
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing open requests");
}
