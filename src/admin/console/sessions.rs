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
/// A session ends this long after sign-in, used or not.
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// One signed-in browser.
#[derive(Debug)]
struct Session {
    /// The SHA-256 of the token it signed in with.
    token_hash: [u8; 32],
    /// Sent back in `X-CSRF-Token` with every change.
    csrf: String,
    opened: tokio::time::Instant,
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
                opened: now,
                last_used: now,
            },
        );
        Ok((id, csrf))
    }

    /// The session with cookie value `id`, if it is open and its token still known. A use
    /// by the person (`touch`) keeps it open; a page's own background refresh does not, so
    /// a console left open still closes after the idle timeout.
    pub fn get(&self, id: &str, tokens: &TokenStore, touch: bool) -> Option<Active> {
        let now = tokio::time::Instant::now();
        let mut sessions = self.lock();
        let key = key(id);
        let session = sessions.get_mut(&key)?;
        if now.duration_since(session.last_used) >= self.idle
            || now.duration_since(session.opened) >= MAX_LIFETIME
        {
            sessions.remove(&key);
            return None;
        }
        let Some(caller) = tokens.authenticate_hash(&session.token_hash) else {
            sessions.remove(&key);
            return None;
        };
        if touch {
            session.last_used = now;
        }
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
    #[cfg(test)]
    fn len(&self) -> usize {
        let now = tokio::time::Instant::now();
        self.lock()
            .values()
            .filter(|session| now.duration_since(session.last_used) < self.idle)
            .count()
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
        let active = sessions.get(&id, &tokens, true).expect("open");
        assert_eq!(active.caller.token_id, "alice");
        assert_eq!(active.csrf, csrf);
        assert!(sessions.get("not-a-session", &tokens, true).is_none());
        // Used within the timeout: kept open.
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(sessions.get(&id, &tokens, true).is_some());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(sessions.get(&id, &tokens, true).is_some());
        // Idle for the timeout: gone.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(sessions.get(&id, &tokens, true).is_none());
        // The token removed: gone at once.
        let (id, _) = sessions.open(hash_token("mft_a")).expect("opens");
        tokens.replace(TokenStore::single("bob", Role::Viewer, "mft_b"));
        assert!(sessions.get(&id, &tokens, true).is_none());
        // Closed by logout.
        let (id, _) = sessions.open(hash_token("mft_b")).expect("opens");
        sessions.close(&id);
        assert!(sessions.get(&id, &tokens, true).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn background_refreshes_do_not_keep_a_session_open_and_no_session_lives_forever() {
        let tokens = TokenStore::single("alice", Role::Operator, "mft_a");
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, _) = sessions.open(hash_token("mft_a")).expect("opens");
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert!(sessions.get(&id, &tokens, false).is_some());
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(
            sessions.get(&id, &tokens, false).is_none(),
            "idle despite refreshes"
        );
        let (id, _) = sessions.open(hash_token("mft_a")).expect("opens");
        let mut used = Duration::ZERO;
        while used < MAX_LIFETIME - Duration::from_secs(30) {
            tokio::time::advance(Duration::from_secs(30)).await;
            used += Duration::from_secs(30);
            assert!(sessions.get(&id, &tokens, true).is_some());
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            sessions.get(&id, &tokens, true).is_none(),
            "ended after its lifetime"
        );
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
        assert!(
            sessions.get(&first, &tokens, true).is_none(),
            "the oldest went"
        );
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("ab", "abc"));
        assert!(!csrf_matches("abd", "abc"));
        assert!(!csrf_matches("", "abc"));
    }
}
