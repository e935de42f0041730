//! Admin API tokens: roles, the token file, constant-time checks.
//!
//! A token is `mft_` followed by 64 hex digits (32 random bytes). mfoundry keeps only the
//! SHA-256 of each token. `ADMIN_TOKENS_FILE` holds one token per line:
//!
//! ```text
//! # id        role      sha256 of the token
//! ops-alice   operator  5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//! ```
//!
//! Without `ADMIN_TOKENS_FILE`, mfoundry uses `DATA_DIR/admin.token`, which holds one admin
//! token in clear (mode 0600) so the CLI on the same host works with no setup; it is created
//! on first start.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the generated token file inside `DATA_DIR`.
pub const LOCAL_TOKEN_FILE: &str = "admin.token";
/// The id of the generated token, as audit records name it.
pub const LOCAL_TOKEN_ID: &str = "local-admin";
/// Prefix of every token mfoundry generates.
const TOKEN_PREFIX: &str = "mft_";

/// What a token may do. Each role includes the ones before it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Stats, lists, logs (no message bodies).
    Viewer,
    /// Also message bodies, the audit trail, DLQ replay, pause and resume.
    Operator,
    /// Also DLQ purge.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Parse a lower-case name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Who made a request (put in the request's extensions once authenticated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (never the token).
    pub token_id: String,
    /// Its role.
    pub role: Role,
}

#[derive(Clone)]
struct Entry {
    id: String,
    role: Role,
    hash: [u8; 32],
}

/// The known tokens (hashes only). Replaced whole when `ADMIN_TOKENS_FILE` changes.
#[derive(Default)]
pub struct TokenStore {
    entries: std::sync::RwLock<Vec<Entry>>,
    /// Changes of `ADMIN_TOKENS_FILE` taken since start.
    pub reloads: AtomicU64,
    /// Changes of `ADMIN_TOKENS_FILE` refused since start (the previous tokens stayed).
    pub reload_failures: AtomicU64,
}

impl Clone for TokenStore {
    fn clone(&self) -> Self {
        Self::from_entries(self.read().clone())
    }
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TokenStore")
            .field("tokens", &self.len())
            .finish()
    }
}

/// Where the tokens came from, for the startup log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `ADMIN_TOKENS_FILE`.
    File(PathBuf),
    /// `DATA_DIR/admin.token`, which already existed.
    Local(PathBuf),
    /// `DATA_DIR/admin.token`, created now.
    Created(PathBuf),
}

/// SHA-256 of a token, as stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// A new random token.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| {
        std::io::Error::other(format!("no random numbers from the system: {error}"))
    })?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(out)
}

impl TokenStore {
    /// The caller a bearer token belongs to. Every stored hash is compared, in constant time,
    /// whatever matches: timing tells nothing about which or how much matched.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        self.authenticate_hash(&hash_token(token))
    }

    /// [`Self::authenticate`] for a token known by its SHA-256 (a console session keeps the
    /// hash, never the token, and checks it again on every request: a token removed from
    /// the file ends its sessions).
    pub fn authenticate_hash(&self, presented: &[u8; 32]) -> Option<Caller> {
        let entries = self.read();
        let mut found: Option<&Entry> = None;
        for entry in entries.iter() {
            if bool::from(entry.hash.ct_eq(presented)) {
                found = Some(entry);
            }
        }
        found.map(|entry| Caller {
            token_id: entry.id.clone(),
            role: entry.role,
        })
    }

    fn from_entries(entries: Vec<Entry>) -> Self {
        Self {
            entries: std::sync::RwLock::new(entries),
            ..Self::default()
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when no token is known (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Take `other`'s tokens in place of these: requests from now on are checked against
    /// them.
    pub fn replace(&self, other: Self) {
        let entries = other
            .entries
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = entries;
    }

    /// A store with one token (tests, the generated local token).
    pub fn single(id: &str, role: Role, token: &str) -> Self {
        Self::from_entries(vec![Entry {
            id: id.to_owned(),
            role,
            hash: hash_token(token),
        }])
    }

    /// Parse an `ADMIN_TOKENS_FILE`. Errors name the line and what is wrong (never a hash).
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [id, role, hash] = parts.as_slice() else {
                return Err(format!(
                    "{}:{number}: expected `<id> <role> <sha256 hex>`, found {} words",
                    path.display(),
                    parts.len()
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "{}:{number}: unknown role {role:?}; use viewer, operator or admin",
                    path.display()
                )
            })?;
            let hash = parse_hex32(&hash.to_ascii_lowercase()).ok_or_else(|| {
                format!(
                    "{}:{number}: the third word must be the SHA-256 of the token as 64 hex digits (mfoundry token create prints it)",
                    path.display()
                )
            })?;
            if entries.iter().any(|entry| entry.id == *id) {
                return Err(format!(
                    "{}:{number}: token id {id:?} is used twice",
                    path.display()
                ));
            }
            entries.push(Entry {
                id: (*id).to_owned(),
                role,
                hash,
            });
        }
        Ok(Self::from_entries(entries))
    }

    /// The file the tokens come from: `tokens_file`, else `DATA_DIR/admin.token`.
    pub fn source_path(tokens_file: Option<&Path>, data_dir: &Path) -> std::path::PathBuf {
        tokens_file.map_or_else(|| data_dir.join(LOCAL_TOKEN_FILE), Path::to_path_buf)
    }

    /// Load the tokens: from `tokens_file` when set, else from `DATA_DIR/admin.token`,
    /// creating it (mode 0600) with a new admin token when absent.
    pub fn load(
        tokens_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(Self, TokenSource), String> {
        if let Some(path) = tokens_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                format!("cannot read ADMIN_TOKENS_FILE {}: {error}", path.display())
            })?;
            let store = Self::parse(&text, path)?;
            return Ok((store, TokenSource::File(path.to_owned())));
        }
        let path = data_dir.join(LOCAL_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!(
                        "{} is empty; delete it and mfoundry creates a new token",
                        path.display()
                    ));
                }
                Ok((
                    Self::single(LOCAL_TOKEN_ID, Role::Admin, token),
                    TokenSource::Local(path),
                ))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let token = generate_token().map_err(|error| error.to_string())?;
                write_private(&path, &format!("{token}\n")).map_err(|error| {
                    format!("cannot create the admin token {}: {error}", path.display())
                })?;
                Ok((
                    Self::single(LOCAL_TOKEN_ID, Role::Admin, &token),
                    TokenSource::Created(path),
                ))
            }
            Err(error) => Err(format!("cannot read {}: {error}", path.display())),
        }
    }
}

/// Create `path` with `contents`, readable by its owner only; fails if it exists.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// How often `ADMIN_TOKENS_FILE` is looked at (Kubernetes updates mounted secrets without a
/// signal).
pub const TOKENS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reload `path` into `store` whenever its size, modification or status-change time or inode
/// changes, until `shutdown`. A file that does not read or parse keeps the current tokens and
/// is logged (without any hash); the next change is tried again.
pub async fn watch_tokens_file(
    store: std::sync::Arc<TokenStore>,
    path: PathBuf,
    loaded_from: crate::tls::Fingerprint,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut seen = loaded_from;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TOKENS_POLL) => {}
        }
        let now = crate::tls::fingerprint([&path]);
        if now == seen {
            continue;
        }
        seen = now;
        let read = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            std::fs::read_to_string(&read)
                .map_err(|error| {
                    format!("cannot read ADMIN_TOKENS_FILE {}: {error}", read.display())
                })
                .and_then(|text| TokenStore::parse(&text, &read))
        })
        .await
        .unwrap_or_else(|error| Err(error.to_string()));
        match loaded {
            Ok(tokens) => {
                let count = tokens.len();
                store.replace(tokens);
                store.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), tokens = count, "admin API tokens reloaded from ADMIN_TOKENS_FILE");
            }
            Err(error) => {
                store.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error, "ADMIN_TOKENS_FILE changed but cannot be used; the previous tokens stay");
            }
        }
    }
}

/// The permission bits of a file when every user of the host may read it (`None` when not,
/// or on a system without Unix modes).
pub fn world_readable(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o004 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_by_hash_only() {
        let token = generate_token().expect("random");
        assert!(token.starts_with("mft_") && token.len() == 68);
        let line = format!("ops operator {}\n", hex(&hash_token(&token)));
        let store = TokenStore::parse(&line, Path::new("tokens")).expect("parses");
        let caller = store.authenticate(&token).expect("known token");
        assert_eq!(caller.role, Role::Operator);
        assert_eq!(caller.token_id, "ops");
        assert!(store.authenticate("mft_wrong").is_none());
        assert!(store.authenticate("").is_none());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let path = Path::new("tokens");
        let error = TokenStore::parse("# c\n\nops root abc\n", path).expect_err("bad role");
        assert!(error.starts_with("tokens:3: unknown role"), "{error}");
        let error = TokenStore::parse("ops viewer 12\n", path).expect_err("bad hash");
        assert!(error.contains("64 hex digits"), "{error}");
        let line = format!("a viewer {}\n", "0".repeat(64));
        let error = TokenStore::parse(&format!("{line}{line}"), path).expect_err("dup");
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn the_local_token_is_created_once_and_private() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (store, source) = TokenStore::load(None, directory.path()).expect("created");
        assert!(matches!(source, TokenSource::Created(_)));
        let path = directory.path().join(LOCAL_TOKEN_FILE);
        let token = std::fs::read_to_string(&path).expect("written");
        assert_eq!(
            store.authenticate(token.trim()).map(|caller| caller.role),
            Some(Role::Admin)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = TokenStore::load(None, directory.path()).expect("read");
        assert!(matches!(source, TokenSource::Local(_)));
        assert!(again.authenticate(token.trim()).is_some());
    }
}
