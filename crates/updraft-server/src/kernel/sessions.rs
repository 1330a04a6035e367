//! Dashboard sign-in sessions: an API key exchanged for a random session id carried in an
//! HttpOnly, SameSite=Strict cookie. The table keeps the SHA-256 of the session id and of the API
//! key (never either secret), so every request looks the key up again: a deleted key ends its
//! sessions. Each session has its own CSRF token, required on every change it makes. Bounded: at
//! most [`MAX_SESSIONS`], each for [`SESSION_LIFETIME_MS`] at most.

use std::collections::HashMap;
use std::sync::Mutex;

use updraft_core::TenantKey;

use crate::kernel::clock::now_millis;
use crate::kernel::secret;

/// The cookie's name.
pub const COOKIE: &str = "updraft_session";
/// The header (API calls from the dashboard's scripts) or form field carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "_csrf";
/// Sessions held at once; the oldest goes first when a new one needs room.
pub const MAX_SESSIONS: usize = 10_000;
/// A session ends 12 hours after sign-in.
pub const SESSION_LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the API key it signed in with.
    pub key_hash: String,
    pub csrf: String,
    /// The tenant a server admin chose to look at (others always see their key's).
    pub tenant: Option<TenantKey>,
    pub created_at: i64,
}

/// The sessions of this server process.
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for the key whose hash is `key_hash`: (session id for the cookie, session).
    pub fn open(&self, key_hash: String) -> anyhow::Result<(String, Session)> {
        let id = secret::generate("s_", 32)?;
        let session = Session {
            key_hash,
            csrf: secret::generate("", 24)?,
            tenant: None,
            created_at: now_millis(),
        };
        let mut table = self.table();
        let now = now_millis();
        table.retain(|_, s| now - s.created_at < SESSION_LIFETIME_MS);
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.created_at)
                .map(|(k, _)| k.clone())
        {
            table.remove(&oldest);
        }
        table.insert(secret::hash(&id), session.clone());
        Ok((id, session))
    }

    /// The live session whose id is `id`.
    pub fn get(&self, id: &str) -> Option<Session> {
        let hash = secret::hash(id);
        let mut table = self.table();
        let session = table.get(&hash)?.clone();
        if now_millis() - session.created_at >= SESSION_LIFETIME_MS {
            table.remove(&hash);
            return None;
        }
        Some(session)
    }

    /// Ends the session `id` (sign-out).
    pub fn close(&self, id: &str) {
        self.table().remove(&secret::hash(id));
    }

    /// Shows the session `id` another tenant.
    pub fn switch_tenant(&self, id: &str, tenant: TenantKey) {
        if let Some(session) = self.table().get_mut(&secret::hash(id)) {
            session.tenant = Some(tenant);
        }
    }
}

/// The session id in a request's `Cookie` header, if any.
pub fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether `given` is the session's CSRF token.
pub fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    given.is_some_and(|given| secret::same(&secret::hash(given), &secret::hash(&session.csrf)))
}
