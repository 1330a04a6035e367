//! The hot views' change feed between processes on one PostgreSQL database (replicas): what a
//! process's writes invalidate is published with `NOTIFY updraft_views` after the write committed
//! — `ORIGIN *` for everything, or `ORIGIN KEY,KEY,…` — and every process listens and applies
//! what the others publish (its own writes invalidated its views already). A listener that is not connected (starting, or its connection lost) makes its views
//! unusable until it listens again, and then forgets everything: notifications sent meanwhile are
//! gone. SQLite has no feed: one process owns the file.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use updraft_core::DeviceKey;

use super::views::Views;

/// The notification channel.
const CHANNEL: &str = "updraft_views";
/// Devices named in one notification at most (PostgreSQL allows 8000 bytes); past it, `*`.
const MAX_DEVICES: usize = 400;

/// What this process invalidated and has not published yet.
#[derive(Default)]
pub(crate) struct Outbox {
    all: bool,
    devices: BTreeSet<i64>,
}

impl Views {
    /// Queues an invalidation of this process's write for the other processes (`None`: all).
    pub(crate) fn publish(&self, device: Option<DeviceKey>) {
        if !self.shared {
            return;
        }
        {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            match device {
                None => outbox.all = true,
                Some(_) if outbox.all => {}
                Some(device) => {
                    outbox.devices.insert(device.0);
                    if outbox.devices.len() > MAX_DEVICES {
                        outbox.all = true;
                        outbox.devices.clear();
                    }
                }
            }
        }
        self.outbox_ready.notify_one();
    }

    fn take_outbox(&self) -> Option<String> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let body = if outbox.all {
            "*".to_owned()
        } else if outbox.devices.is_empty() {
            return None;
        } else {
            let keys: Vec<String> = outbox.devices.iter().map(i64::to_string).collect();
            keys.join(",")
        };
        *outbox = Outbox::default();
        Some(format!("{:x} {body}", self.origin))
    }

    /// Applies another process's notification (its origin first; our own are skipped).
    fn apply(&self, payload: &str) {
        let (origin, payload) = payload.split_once(' ').unwrap_or(("", payload));
        if u64::from_str_radix(origin, 16).is_ok_and(|origin| origin == self.origin) {
            return;
        }
        if payload == "*" {
            self.invalidate_all();
        } else {
            for key in payload.split(',') {
                match key.parse() {
                    Ok(key) => self.invalidate_device(DeviceKey(key)),
                    Err(_) => self.invalidate_all(),
                }
            }
        }
        self.heard_one();
    }
}

/// Starts the publisher and the listener on the current runtime; both end with the store.
pub(super) fn spawn(views: &Arc<Views>, write: sqlx::AnyPool, url: String) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Views> = Arc::downgrade(views);
    runtime.spawn(publisher(weak.clone(), write.clone()));
    runtime.spawn(listener(weak, write, url));
}

async fn publisher(views: Weak<Views>, write: sqlx::AnyPool) {
    loop {
        let Some(strong) = views.upgrade() else {
            return;
        };
        let payload = {
            let ready = strong.outbox_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let payload = strong.take_outbox();
            if payload.is_none() {
                // Wake at least once a second to notice the store is gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), ready).await;
            }
            payload
        };
        drop(strong);
        let Some(payload) = payload else { continue };
        if write.is_closed() {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&write)
            .await;
        if let Err(err) = sent {
            tracing::warn!("publishing a views invalidation: {err}");
        }
    }
}

async fn listener(views: Weak<Views>, write: sqlx::AnyPool, url: String) {
    while !write.is_closed() {
        let connected = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!("views change feed: {err}; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match views.upgrade() {
            Some(views) => views.set_live(true),
            None => return,
        }
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), listener.try_recv()).await;
            let Some(views) = views.upgrade() else { return };
            match next {
                Ok(Ok(Some(notification))) => views.apply(notification.payload()),
                // Connection lost: unusable until listening again.
                Ok(Ok(None)) | Ok(Err(_)) => {
                    views.set_live(false);
                    break;
                }
                Err(_elapsed) if write.is_closed() => return,
                Err(_elapsed) => {}
            }
        }
    }
}
