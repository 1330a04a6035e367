//! The change feed between processes on one PostgreSQL database (replicas), one channel
//! (`NOTIFY updraft_feed`) carrying two kinds of message, each tagged with its sender's origin:
//!
//! - `ORIGIN v *` or `ORIGIN v KEY,KEY,…`: what a process's writes invalidated in its hot views,
//!   published after the write committed; every other process applies it to its own views.
//! - `ORIGIN n TEXT`: news for the server layer (`Cluster::publish`: "devices have updates
//!   queued", "a tenant's assignments were withdrawn"…), handed to `Cluster::subscribe`rs of
//!   every other process.
//!
//! One publisher task sends them in the order they were queued — an invalidation before the news
//! that follows the write — and PostgreSQL delivers notifications in commit order, so a replica
//! that hears news has dropped the stale views it concerns. A listener that is not connected
//! (starting, or its connection lost) makes its views unusable until it listens again, then
//! forgets everything and tells its subscribers `*` (news may have been missed). SQLite has no
//! feed: one process owns the file.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use updraft_core::DeviceKey;

use super::views::Views;

/// The notification channel.
const CHANNEL: &str = "updraft_feed";
/// News queued for publishing at most; past it the oldest are dropped and `*` goes out instead.
const MAX_NEWS: usize = 1024;
/// Devices named in one notification at most (PostgreSQL allows 8000 bytes); past it, `*`.
const MAX_DEVICES: usize = 400;

/// What this process invalidated and has not published yet.
#[derive(Default)]
pub(crate) struct Outbox {
    all: bool,
    devices: BTreeSet<i64>,
    news: std::collections::VecDeque<String>,
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

    /// Queues news for the other processes, after the invalidations queued before it.
    pub(crate) fn publish_news(&self, news: String) {
        if !self.shared {
            return;
        }
        {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            if outbox.news.len() >= MAX_NEWS {
                outbox.news.clear();
                outbox.news.push_back("*".to_owned());
            }
            outbox.news.push_back(news);
        }
        self.outbox_ready.notify_one();
    }

    /// What to send now, in order: the invalidations, then the news.
    fn take_outbox(&self) -> Vec<String> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let body = if outbox.all {
            Some("*".to_owned())
        } else if outbox.devices.is_empty() {
            None
        } else {
            let keys: Vec<String> = outbox.devices.iter().map(i64::to_string).collect();
            Some(keys.join(","))
        };
        if let Some(body) = body {
            out.push(format!("{:x} v {body}", self.origin));
        }
        for news in outbox.news.drain(..) {
            out.push(format!("{:x} n {news}", self.origin));
        }
        outbox.all = false;
        outbox.devices.clear();
        out
    }

    /// Applies another process's notification (its origin first; our own are skipped).
    fn apply(&self, payload: &str) {
        let (origin, payload) = payload.split_once(' ').unwrap_or(("", payload));
        if u64::from_str_radix(origin, 16).is_ok_and(|origin| origin == self.origin) {
            return;
        }
        let (kind, payload) = payload.split_once(' ').unwrap_or((payload, ""));
        if kind == "n" {
            let _ = self.news.send(payload.to_owned());
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
        let payloads = {
            let ready = strong.outbox_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let payloads = strong.take_outbox();
            if payloads.is_empty() {
                // Wake at least once a second to notice the store is gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), ready).await;
            }
            payloads
        };
        drop(strong);
        for payload in payloads {
            if write.is_closed() {
                return;
            }
            // One after the other: each commits before the next is sent, so they arrive in order.
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&write)
                .await;
            if let Err(err) = sent {
                tracing::warn!("publishing to the change feed: {err}");
            }
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
                tracing::warn!("change feed: {err}; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match views.upgrade() {
            Some(views) => {
                views.set_live(true);
                // What was said while nobody listened is lost: subscribers catch up.
                let _ = views.news.send("*".to_owned());
            }
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
