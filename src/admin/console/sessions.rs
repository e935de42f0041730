//! Console sessions: a random id in an `HttpOnly` cookie, kept server-side by its SHA-256
//! with the token's hash (never the token), a CSRF token, and the time it was last used.
//! A session unused for the idle timeout is gone; the token is checked again on every
//! request, so a token removed from `ADMIN_TOKENS_FILE` ends its sessions at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admin::auth::{Caller, TokenStore, hex};

/// Most sessions kept at once; the least recently used goes first when more log in.
pub const MAX_SESSIONS: usize = 1024;

/// One signed-in browser.
#[derive(Debug)]
struct Session {
    /// The SHA-256 of the token it signed in with.
    token_hash: [u8; 32],
    /// Sent back in `X-CSRF-Token` with every change.
    csrf: String,
    last_used: tokio::time::Instant,
}

/// What a request's session gives it.
#[derive(Clone, Debug)]
pub struct Active {
    /// Who, as the token store says now.
    pub caller: Caller,
    /// The session's CSRF token.
    pub csrf: String,
}

/// Every open session.
#[derive(Debug)]
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
}

/// 32 random bytes as hex.
fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| format!("no random numbers: {error}"))?;
    Ok(hex(&bytes))
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// No sessions; each closes after `idle` without use.
    pub fn new(idle: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            idle,
        }
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open a session for the token whose hash is `token_hash`: its id (for the cookie) and
    /// its CSRF token.
    pub fn open(&self, token_hash: [u8; 32]) -> Result<(String, String), String> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = tokio::time::Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, session| now.duration_since(session.last_used) < self.idle);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.last_used)
                .map(|(key, _)| *key)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            key(&id),
            Session {
                token_hash,
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        Ok((id, csrf))
    }

    /// The session with cookie value `id`, if it is open and its token still known; using
    /// it keeps it open.
    pub fn get(&self, id: &str, tokens: &TokenStore) -> Option<Active> {
        let now = tokio::time::Instant::now();
        let mut sessions = self.lock();
        let key = key(id);
        let session = sessions.get_mut(&key)?;
        if now.duration_since(session.last_used) >= self.idle {
            sessions.remove(&key);
            return None;
        }
        let Some(caller) = tokens.authenticate_hash(&session.token_hash) else {
            sessions.remove(&key);
            return None;
        };
        session.last_used = now;
        Some(Active {
            caller,
            csrf: session.csrf.clone(),
        })
    }

    /// Close the session with cookie value `id`.
    pub fn close(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    /// Open sessions (expired ones not counted).
    pub fn len(&self) -> usize {
        let now = tokio::time::Instant::now();
        self.lock()
            .values()
            .filter(|session| now.duration_since(session.last_used) < self.idle)
            .count()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `presented` equals `expected`, compared in constant time.
pub fn csrf_matches(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::{Role, hash_token};

    #[tokio::test(start_paused = true)]
    async fn sessions_close_when_idle_or_when_their_token_goes() {
        let tokens = TokenStore::single("alice", Role::Operator, "mft_a");
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, csrf) = sessions.open(hash_token("mft_a")).expect("opens");
        let active = sessions.get(&id, &tokens).expect("open");
        assert_eq!(active.caller.token_id, "alice");
        assert_eq!(active.csrf, csrf);
        assert!(sessions.get("not-a-session", &tokens).is_none());
        // Used within the timeout: kept open.
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(sessions.get(&id, &tokens).is_some());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(sessions.get(&id, &tokens).is_some());
        // Idle for the timeout: gone.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(sessions.get(&id, &tokens).is_none());
        // The token removed: gone at once.
        let (id, _) = sessions.open(hash_token("mft_a")).expect("opens");
        tokens.replace(TokenStore::single("bob", Role::Viewer, "mft_b"));
        assert!(sessions.get(&id, &tokens).is_none());
        // Closed by logout.
        let (id, _) = sessions.open(hash_token("mft_b")).expect("opens");
        sessions.close(&id);
        assert!(sessions.get(&id, &tokens).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_session_makes_room() {
        let tokens = TokenStore::single("alice", Role::Viewer, "mft_a");
        let sessions = Sessions::new(Duration::from_secs(3600));
        let (first, _) = sessions.open(hash_token("mft_a")).expect("opens");
        for _ in 1..MAX_SESSIONS {
            tokio::time::advance(Duration::from_millis(1)).await;
            sessions.open(hash_token("mft_a")).expect("opens");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        sessions.open(hash_token("mft_a")).expect("opens");
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.get(&first, &tokens).is_none(), "the oldest went");
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("ab", "abc"));
        assert!(!csrf_matches("abd", "abc"));
        assert!(!csrf_matches("", "abc"));
    }
}
