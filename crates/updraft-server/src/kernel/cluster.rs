//! What one replica tells the others. Something that happens through one replica — an
//! assignment, a withdrawal, a rollout command, a maintenance window opening, a device's
//! protocol credentials — may concern devices connected to any replica, so it is [`announce`]d:
//! applied here at once and published through the store's change feed (PostgreSQL `NOTIFY`,
//! after the invalidations of the writes that caused it), and every other replica's
//! [`listen`] applies it to its own devices. On SQLite there is no other replica and nothing is
//! published.
//!
//! [`announce`]: AppState::announce

use updraft_core::TenantKey;

use crate::kernel::state::AppState;

/// News for every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// Devices have updates queued: the notification queue looks for those it can reach.
    Queued,
    /// Rollouts changed: the scheduler passes now (on whichever replica holds its lease).
    Schedule,
    /// The tenant's assignments were withdrawn: devices that were given a package that is no
    /// longer wanted are told so.
    Withdrawn(TenantKey),
    /// A maintenance window of the tenant opened: devices waiting for it may install.
    WindowOpened(TenantKey),
    /// Devices' protocol credentials changed (adapters that keep a table of them reload it).
    Credentials,
    /// News may have been missed (the feed reconnected): everything is looked at again.
    Missed,
}

impl News {
    fn encode(self) -> String {
        match self {
            News::Queued => "queued".to_owned(),
            News::Schedule => "schedule".to_owned(),
            News::Withdrawn(tenant) => format!("withdrawn {}", tenant.0),
            News::WindowOpened(tenant) => format!("window {}", tenant.0),
            News::Credentials => "credentials".to_owned(),
            News::Missed => "*".to_owned(),
        }
    }

    /// Reads what [`News::encode`] wrote; anything else is taken as missed news.
    fn decode(text: &str) -> News {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let tenant = || rest.parse().ok().map(TenantKey);
        match word {
            "queued" => News::Queued,
            "schedule" => News::Schedule,
            "withdrawn" => tenant().map_or(News::Missed, News::Withdrawn),
            "window" => tenant().map_or(News::Missed, News::WindowOpened),
            "credentials" => News::Credentials,
            _ => News::Missed,
        }
    }
}

impl AppState {
    /// Acts on `news` here and tells every other replica.
    pub fn announce(&self, news: News) {
        self.apply(news);
        self.publish(news);
    }

    /// Tells every other replica `news` (this one acted on it already).
    pub fn publish(&self, news: News) {
        self.store.publish(&news.encode());
    }

    /// Acts on news, from this replica or another.
    fn apply(&self, news: News) {
        match news {
            News::Queued => self.wake.notify_one(),
            News::Schedule => self.schedule.notify_one(),
            News::Withdrawn(tenant) => self.adapters.withdrawn(self, tenant),
            News::WindowOpened(tenant) => {
                self.adapters.window_opened(self, tenant);
                self.wake.notify_one();
            }
            News::Credentials => self.adapters.credentials_changed(self),
            News::Missed => {
                self.wake.notify_one();
                self.schedule.notify_one();
                self.adapters.credentials_changed(self);
            }
        }
    }
}

/// Applies the other replicas' news until the process ends (returns at once where there are no
/// other replicas).
pub async fn listen(state: AppState) {
    let Some(mut news) = state.store.subscribe() else {
        return;
    };
    loop {
        match news.recv().await {
            Ok(text) => state.apply(News::decode(&text)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.apply(News::Missed),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reads_back_what_was_written() {
        for news in [
            News::Queued,
            News::Schedule,
            News::Withdrawn(TenantKey(7)),
            News::WindowOpened(TenantKey(9)),
            News::Credentials,
            News::Missed,
        ] {
            assert_eq!(News::decode(&news.encode()), news);
        }
        for junk in ["", "withdrawn", "window x", "what", "queued extra"] {
            let read = News::decode(junk);
            assert!(
                read == News::Missed || read == News::Queued,
                "{junk}: {read:?}"
            );
        }
    }
}
