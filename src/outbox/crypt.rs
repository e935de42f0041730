//! Encryption at rest (ADR 0011): every stored value that can hold patient data is sealed
//! with AES-256-GCM under a key of its own, derived from the store key.
//!
//! # A sealed value
//! `0xE5 ‖ key id (8, BE) ‖ salt (16) ‖ ciphertext ‖ tag (16)`: 41 bytes more than the plain
//! value. The record's key and nonce are `HKDF-Expand(PRK, "mfoundry record v1" ‖ salt)`
//! (32 + 12 bytes), the PRK being `HKDF-Extract("mfoundry store key v1", store key)`, and the
//! salt 16 random bytes: every record has a key of its own, so no (key, nonce) pair repeats
//! however many records one store key seals (a repeat needs two equal 128-bit salts: below
//! 2^-49 after 2^40 records). The associated data is the table's name and the record's key
//! in that table (a message id, a connector and seq …): a sealed value moved to another
//! place does not open there.
//!
//! The plain value sealed is what an unencrypted store holds in the same place (a record in
//! its checksummed envelope, an audit record with its hash), so the audit chain hashes the
//! same bytes whichever key sealed them, and `store rekey` keeps `audit verify` intact.
//!
//! A plain value starts with 1 or 2 (its envelope), never 0xE5 (at least four bits from
//! either, so one flipped bit cannot turn a sealed value into a plain one), except in
//! `audit`, whose values start with a hash: there a value is read as sealed only when it
//! also names a key this process holds (a plain hash that starts with those 9 bytes has
//! odds of 2^-72).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Prk, Salt};

use super::StoreError;

/// The first byte of a sealed value.
const SEALED: u8 = 0xE5;
const KEY_ID_LEN: usize = 8;
const SALT_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to the plain one.
pub const OVERHEAD: usize = 1 + KEY_ID_LEN + SALT_LEN + TAG_LEN;
/// Length of a store key.
pub const KEY_LEN: usize = 32;

/// Where a value is stored: its table and its key there (bound into the seal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// `messages`, by message id.
    Message(u64),
    /// `bodies`, by message id.
    Body(u64),
    /// `queue`, by connector and seq.
    Queue(u32, u64),
    /// `dlq`, by connector and seq.
    Dlq(u32, u64),
    /// `deliveries`, by message and connector.
    Delivery(u64, u32),
    /// `copies`, by message, connector and seq.
    Copy(u64, u32, u64),
    /// `audit`, by seq.
    Audit(u64),
    /// `spool`, by message id: where a spooled body is.
    Spool(u64),
    /// A chunk of a spooled body's file: the file's id (two halves) and the chunk's index.
    SpoolChunk(u64, u64, u64),
}

impl Place {
    fn associated_data(self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(48);
        aad.extend_from_slice(b"mfoundry-store-v1\0");
        let (table, a, b, c) = match self {
            Self::Message(id) => ("messages", id, 0, 0),
            Self::Body(id) => ("bodies", id, 0, 0),
            Self::Queue(connector, seq) => ("queue", u64::from(connector), seq, 0),
            Self::Dlq(connector, seq) => ("dlq", u64::from(connector), seq, 0),
            Self::Delivery(id, connector) => ("deliveries", id, u64::from(connector), 0),
            Self::Copy(id, connector, seq) => ("copies", id, u64::from(connector), seq),
            Self::Audit(seq) => ("audit", seq, 0, 0),
            Self::Spool(id) => ("spool", id, 0, 0),
            Self::SpoolChunk(high, low, chunk) => ("spool-file", high, low, chunk),
        };
        aad.extend_from_slice(table.as_bytes());
        aad.push(0);
        for part in [a, b, c] {
            aad.extend_from_slice(&part.to_be_bytes());
        }
        aad
    }
}

/// One store key, ready to derive record keys from.
#[derive(Clone)]
pub struct StoreKey {
    id: u64,
    prk: Prk,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "StoreKey({})", key_id_text(self.id))
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// A key id as operators see it (16 hex digits).
pub fn key_id_text(id: u64) -> String {
    format!("{id:016x}")
}

impl StoreKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let prk = Salt::new(HKDF_SHA256, b"mfoundry store key v1").extract(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        expand(&prk, &[b"mfoundry key id v1"], &mut id);
        Self {
            id: u64::from_be_bytes(id),
            prk,
        }
    }

    /// Read a key file: 32 raw bytes (`head -c 32 /dev/urandom > key`) or their base64
    /// (surrounding white space ignored). `setting` names the setting in errors; the error
    /// never holds the file's bytes.
    pub fn from_file(path: &Path, setting: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("{setting}: cannot read {}: {error}", path.display()))?;
        Self::parse(&bytes).map_err(|why| format!("{setting}: {}: {why}", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
            return Ok(Self::from_bytes(&raw));
        }
        let text = std::str::from_utf8(bytes)
            .map(str::trim)
            .map_err(|_| format!("holds {} bytes; a key is 32 random bytes (`head -c 32 /dev/urandom > key`) or their base64", bytes.len()))?;
        let decoded = base64_decode(text).ok_or_else(|| {
            format!(
                "holds {} bytes that are not 32 raw bytes nor base64; a key is 32 random bytes (`head -c 32 /dev/urandom > key`) or their base64",
                bytes.len()
            )
        })?;
        let raw = <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| {
            format!(
                "its base64 decodes to {} bytes; a key is exactly 32",
                decoded.len()
            )
        })?;
        Ok(Self::from_bytes(&raw))
    }

    /// The key's id: derived from the key (it tells keys apart, it does not reveal them).
    pub fn id(&self) -> u64 {
        self.id
    }

    fn record_key(&self, salt: &[u8]) -> (LessSafeKey, Nonce) {
        let mut okm = [0u8; KEY_LEN + NONCE_LEN];
        expand(&self.prk, &[b"mfoundry record v1", salt], &mut okm);
        let key = UnboundKey::new(&AES_256_GCM, &okm[..KEY_LEN])
            .expect("AES-256-GCM takes a 32-byte key");
        let nonce = Nonce::try_assume_unique_for_key(&okm[KEY_LEN..])
            .expect("the nonce is NONCE_LEN bytes");
        (LessSafeKey::new(key), nonce)
    }
}

fn expand(prk: &Prk, info: &[&[u8]], out: &mut [u8]) {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 gives up to 8160 bytes");
}

/// Standard base64, padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.trim_end_matches('=').bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The keys a store is read and written with: none (plain), or the current key (seals
/// everything written) and older ones (open what they sealed). Cheap to clone.
#[derive(Clone, Default)]
pub struct Keys(Option<Arc<Ring>>);

struct Ring {
    current: StoreKey,
    old: Vec<StoreKey>,
    /// Whether opening a store names `current` in it as a key in use (see
    /// [`Keys::for_reading`]).
    register: bool,
    /// Set at open for a store that seals every value (`meta["sealed_only"]`): a value that
    /// is not sealed is then damage, not a plain value from before the key.
    sealed_only: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => formatter.write_str("Keys(plain)"),
            Some(ring) => formatter
                .debug_struct("Keys")
                .field("current", &ring.current)
                .field("old", &ring.old)
                .finish(),
        }
    }
}

impl Keys {
    /// No encryption: values are stored plain (a sealed value cannot be opened).
    pub fn plain() -> Self {
        Self(None)
    }

    /// Seal with `current`; open what `current` or any of `old` sealed.
    pub fn new(current: StoreKey, old: Vec<StoreKey>) -> Self {
        Self(Some(Arc::new(Ring {
            current,
            old,
            register: true,
            sealed_only: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// From now on, a value that is not sealed is damage (the store was created with a key,
    /// or rekeyed: it holds no plain value, so one found there was put there).
    pub fn require_sealed(&self) {
        if let Some(ring) = &self.0 {
            ring.sealed_only
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn sealed_only(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|ring| ring.sealed_only.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The same keys for a store that is only read and will not get values sealed with the
    /// current key (the source of `store rekey`): opening it does not name the current key
    /// in it, so a rekey that stops half way leaves the store needing what it needed.
    pub fn for_reading(&self) -> Self {
        match &self.0 {
            None => Self(None),
            Some(ring) => Self(Some(Arc::new(Ring {
                current: ring.current.clone(),
                old: ring.old.clone(),
                register: false,
                sealed_only: std::sync::atomic::AtomicBool::new(false),
            }))),
        }
    }

    /// Whether opening a store names the current key in it.
    pub fn registers(&self) -> bool {
        self.0.as_ref().is_some_and(|ring| ring.register)
    }

    /// True when values are sealed.
    pub fn encrypts(&self) -> bool {
        self.0.is_some()
    }

    /// The id of the key that seals, if any.
    pub fn current_id(&self) -> Option<u64> {
        self.0.as_ref().map(|ring| ring.current.id)
    }

    /// Ids of every key held (current first).
    pub fn ids(&self) -> Vec<u64> {
        match &self.0 {
            None => Vec::new(),
            Some(ring) => std::iter::once(&ring.current)
                .chain(&ring.old)
                .map(|key| key.id)
                .collect(),
        }
    }

    /// The secret of the patient index (ADR 0019), derived from the current key; None
    /// without one.
    pub fn index_secret(&self) -> Option<[u8; KEY_LEN]> {
        let ring = self.0.as_ref()?;
        let mut secret = [0u8; KEY_LEN];
        expand(
            &ring.current.prk,
            &[b"mfoundry patient index v1"],
            &mut secret,
        );
        Some(secret)
    }

    fn key(&self, id: u64) -> Option<&StoreKey> {
        let ring = self.0.as_ref()?;
        std::iter::once(&ring.current)
            .chain(&ring.old)
            .find(|key| key.id == id)
    }

    /// The value to store for `plain` at `place`: sealed with the current key, or `plain`
    /// itself without one.
    pub fn seal(&self, place: Place, plain: Vec<u8>) -> Vec<u8> {
        let Some(ring) = &self.0 else {
            return plain;
        };
        let key = &ring.current;
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).expect("the operating system's random number generator");
        let (record_key, nonce) = key.record_key(&salt);
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.push(SEALED);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&salt);
        let header = out.len();
        out.extend_from_slice(&plain);
        let tag = record_key
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(place.associated_data()),
                &mut out[header..],
            )
            .expect("a record is far below AES-GCM's limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Whether `stored` at `place` is a sealed value (see the module's notes on `audit`).
    pub fn is_sealed(&self, place: Place, stored: &[u8]) -> bool {
        if stored.first() != Some(&SEALED) {
            return false;
        }
        match place {
            Place::Audit(_) => sealed_key_id(stored).is_some_and(|id| self.key(id).is_some()),
            _ => true,
        }
    }

    /// The plain value of `stored` at `place`: opened when sealed, as it is otherwise (a
    /// value written before the store had a key). A sealed value that does not open (a
    /// changed byte, another place, a key not held) is [`StoreError::Damaged`].
    pub fn open<'a>(&self, place: Place, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, StoreError> {
        if !self.is_sealed(place, stored) {
            if self.sealed_only() {
                return Err(StoreError::Damaged(
                    "it is stored plain in a store that seals every value".to_owned(),
                ));
            }
            return Ok(Cow::Borrowed(stored));
        }
        let Some(id) = sealed_key_id(stored) else {
            return Err(StoreError::Damaged(
                "its sealed value is truncated".to_owned(),
            ));
        };
        let Some(key) = self.key(id) else {
            return Err(StoreError::Damaged(format!(
                "it is sealed with key {}, which this mfoundry does not hold (ENCRYPTION_KEY_FILE, ENCRYPTION_OLD_KEY_FILES)",
                key_id_text(id)
            )));
        };
        let salt = &stored[1 + KEY_ID_LEN..1 + KEY_ID_LEN + SALT_LEN];
        let (record_key, nonce) = key.record_key(salt);
        let mut buffer = stored[1 + KEY_ID_LEN + SALT_LEN..].to_vec();
        let plain_len = record_key
            .open_in_place(nonce, Aad::from(place.associated_data()), &mut buffer)
            .map_err(|_| {
                StoreError::Damaged(
                    "its sealed value fails authentication (changed, or moved from another record)"
                        .to_owned(),
                )
            })?
            .len();
        buffer.truncate(plain_len);
        Ok(Cow::Owned(buffer))
    }
}

/// The key id a sealed value names, when it is long enough to be one.
pub fn sealed_key_id(stored: &[u8]) -> Option<u64> {
    if stored.len() < OVERHEAD || stored[0] != SEALED {
        return None;
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&stored[1..1 + KEY_ID_LEN]);
    Some(u64::from_be_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> StoreKey {
        StoreKey::from_bytes(&[byte; KEY_LEN])
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_place_with_its_key() {
        let keys = Keys::new(key(1), Vec::new());
        let plain = b"\x02\x01crcMSH|^~\\&|PATIENT^CANARY".to_vec();
        let sealed = keys.seal(Place::Message(7), plain.clone());
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(
            !sealed.windows(6).any(|window| window == b"CANARY"),
            "no plain text in the sealed value"
        );
        assert_eq!(
            keys.open(Place::Message(7), &sealed)
                .expect("opens")
                .as_ref(),
            plain.as_slice()
        );
        // Another record's place, another table, another key: refused as damage.
        for place in [Place::Message(8), Place::Body(7), Place::Queue(7, 0)] {
            assert!(matches!(
                keys.open(place, &sealed),
                Err(StoreError::Damaged(_))
            ));
        }
        let other = Keys::new(key(2), Vec::new());
        assert!(matches!(
            other.open(Place::Message(7), &sealed),
            Err(StoreError::Damaged(_))
        ));
        // An older key still opens what it sealed.
        let rotated = Keys::new(key(2), vec![key(1)]);
        assert_eq!(
            rotated
                .open(Place::Message(7), &sealed)
                .expect("opens")
                .as_ref(),
            plain.as_slice()
        );
        // Every flipped bit is refused.
        for bit in 0..sealed.len() * 8 {
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            match rotated.open(Place::Message(7), &flipped) {
                // The marker byte changed: read as plain, and no envelope starts so.
                Ok(value) => assert!(
                    bit < 8 && value.as_ref() == flipped.as_slice() && flipped[0] > 2,
                    "bit {bit} opened"
                ),
                Err(StoreError::Damaged(_)) => {}
                Err(other) => panic!("bit {bit}: {other}"),
            }
        }
    }

    #[test]
    fn two_seals_of_one_value_differ_and_plain_values_pass() {
        let keys = Keys::new(key(1), Vec::new());
        let first = keys.seal(Place::Queue(1, 2), b"\x02abc".to_vec());
        let second = keys.seal(Place::Queue(1, 2), b"\x02abc".to_vec());
        assert_ne!(first, second);
        assert_eq!(
            keys.open(Place::Queue(1, 2), b"\x02abc")
                .expect("plain")
                .as_ref(),
            b"\x02abc"
        );
        // A plain audit value whose hash starts with the marker is still plain.
        let mut audit = vec![SEALED];
        audit.extend_from_slice(&[9; 60]);
        assert!(!keys.is_sealed(Place::Audit(0), &audit));
        assert_eq!(Keys::plain().seal(Place::Body(1), b"x".to_vec()), b"x");
        // Once the store seals every value, a plain one is damage.
        keys.require_sealed();
        assert!(matches!(
            keys.open(Place::Queue(1, 2), b"\x02abc"),
            Err(StoreError::Damaged(_))
        ));
        assert!(keys.open(Place::Queue(1, 2), &first).is_ok());
    }

    #[test]
    fn key_files_are_raw_or_base64() {
        let raw = [7u8; KEY_LEN];
        let expected = StoreKey::from_bytes(&raw).id();
        assert_eq!(StoreKey::parse(&raw).expect("raw").id(), expected);
        let text = b"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n";
        assert_eq!(StoreKey::parse(text).expect("base64").id(), expected);
        for bad in [&b"short"[..], &[0u8; 31][..], b"BwcH\n"] {
            let error = StoreKey::parse(bad).expect_err("refused");
            assert!(error.contains("32"), "{error}");
        }
        assert_ne!(key(1).id(), key(2).id());
    }
}
