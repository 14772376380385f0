//! API keys and roles.
//!
//! A key is `llk_` followed by 43 base64url characters: 32 random bytes (256 bits) from the
//! operating system. The server never holds keys, only their SHA-256, in `[[api.keys]]`:
//!
//! ```toml
//! [[api.keys]]
//! id = "analyst-3f9a1c2b"
//! role = "analyst"
//! sha256 = "9c1e…"
//! ```
//!
//! A plain SHA-256 is the right hash here, unlike for passwords: a key has 256 bits of entropy,
//! so there is nothing to guess, and a slow hash would only make every request slower.
//! [`KeyStore::authenticate`] compares the hash of the presented key with *every* configured
//! hash in constant time (`subtle`), so neither the position of a match nor how many leading
//! bytes matched shows in the timing.
//!
//! Roles: `analyst` (events, stats, jobs), `auditor` (the same, plus `/v1/audit/*`), `admin`
//! (the analyst's reads; it is the operator's role, and it does not include audit review,
//! which the auditor role alone has). Audit events are never read through `/v1/events` or the
//! stats, whatever the role: they are read only through `/v1/audit/*`, where every read is
//! itself published as an audit event.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so a leaked one is easy to recognise (secret scanners).
pub const KEY_PREFIX: &str = "llk_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Analyst,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Analyst, Role::Auditor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// May read events, stats and jobs (every role).
    pub fn can_read_events(self) -> bool {
        true
    }

    /// May use `/v1/audit/*`.
    pub fn can_review_audit(self) -> bool {
        self == Role::Auditor
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("unknown role `{text}` (expected analyst, auditor or admin)"))
    }
}

/// One `[[api.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// A name for logs and the audit trail; never secret.
    pub id: String,
    pub role: Role,
    /// Lower-case hex SHA-256 of the whole key.
    pub sha256: String,
}

/// Who made a request: the key's id and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
}

/// Why a key entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    #[error("api.keys: entry `{id}`: `sha256` must be 64 lower-case hex digits")]
    BadHash { id: String },
    #[error("api.keys: entry {index} has an empty `id`")]
    EmptyId { index: usize },
    #[error("api.keys: `{id}` is listed twice")]
    DuplicateId { id: String },
    #[error("api.keys: `{id}` has the same hash as `{other}`")]
    DuplicateHash { id: String, other: String },
}

/// The configured keys, hashed.
#[derive(Clone)]
pub struct KeyStore {
    keys: Vec<([u8; 32], Caller)>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(_, caller)| caller))
            .finish()
    }
}

impl KeyStore {
    pub fn new(entries: &[KeyEntry]) -> Result<Self, KeyConfigError> {
        let mut keys: Vec<([u8; 32], Caller)> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            if entry.id.trim().is_empty() {
                return Err(KeyConfigError::EmptyId { index });
            }
            let hash = parse_hash(&entry.sha256).ok_or_else(|| KeyConfigError::BadHash {
                id: entry.id.clone(),
            })?;
            if let Some((_, other)) = keys.iter().find(|(_, c)| c.key_id == entry.id) {
                return Err(KeyConfigError::DuplicateId {
                    id: other.key_id.clone(),
                });
            }
            if let Some((_, other)) = keys.iter().find(|(known, _)| *known == hash) {
                return Err(KeyConfigError::DuplicateHash {
                    id: entry.id.clone(),
                    other: other.key_id.clone(),
                });
            }
            keys.push((
                hash,
                Caller {
                    key_id: entry.id.clone(),
                    role: entry.role,
                },
            ));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller whose key is `presented`, or `None`. Every configured hash is compared,
    /// each in constant time, so the answer's timing says nothing about which entry matched.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (known, caller) in &self.keys {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// The lower-case hex SHA-256 of `key`, as `[[api.keys]] sha256` holds it.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key and its config entry.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: String,
    pub entry: KeyEntry,
}

impl NewKey {
    /// The `[[api.keys]]` table that grants this key.
    pub fn config_toml(&self) -> String {
        format!(
            "[[api.keys]]\nid = \"{}\"\nrole = \"{}\"\nsha256 = \"{}\"\n",
            self.entry.id, self.entry.role, self.entry.sha256
        )
    }
}

/// Draws a new key for `role` from the operating system's generator. `id` defaults to the role
/// and 8 random hex digits.
pub fn generate_key(role: Role, id: Option<&str>) -> Result<NewKey, getrandom::Error> {
    let mut secret = [0u8; KEY_BYTES];
    getrandom::fill(&mut secret)?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let id = match id {
        Some(id) => id.to_owned(),
        None => {
            let mut suffix = [0u8; 4];
            getrandom::fill(&mut suffix)?;
            format!("{role}-{}", hex::encode(suffix))
        }
    };
    let entry = KeyEntry {
        id,
        role,
        sha256: key_hash(&key),
    };
    Ok(NewKey { key, entry })
}

/// The key in an `Authorization` header value: `Bearer <key>` (scheme case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_authenticate_with_their_role_and_nothing_else_does() {
        let analyst = generate_key(Role::Analyst, None).unwrap();
        let auditor = generate_key(Role::Auditor, Some("sec-team")).unwrap();
        assert!(analyst.key.starts_with(KEY_PREFIX));
        assert_eq!(analyst.key.len(), KEY_PREFIX.len() + 43);
        assert!(analyst.entry.id.starts_with("analyst-"));
        let store = KeyStore::new(&[analyst.entry.clone(), auditor.entry.clone()]).unwrap();
        assert_eq!(
            store.authenticate(&analyst.key).unwrap().role,
            Role::Analyst
        );
        let caller = store.authenticate(&auditor.key).unwrap();
        assert_eq!(caller.role, Role::Auditor);
        assert_eq!(caller.key_id, "sec-team");
        assert_eq!(store.authenticate(""), None);
        assert_eq!(store.authenticate(&analyst.key[..20]), None);
        assert_eq!(store.authenticate(&analyst.entry.sha256), None);
    }

    #[test]
    fn two_keys_differ() {
        let one = generate_key(Role::Admin, None).unwrap();
        let two = generate_key(Role::Admin, None).unwrap();
        assert_ne!(one.key, two.key);
        assert_ne!(one.entry.id, two.entry.id);
    }

    #[test]
    fn the_printed_config_line_parses_back() {
        #[derive(Deserialize)]
        struct Api {
            keys: Vec<KeyEntry>,
        }
        #[derive(Deserialize)]
        struct File {
            api: Api,
        }
        let new = generate_key(Role::Auditor, None).unwrap();
        let file: File = toml_parse(&new.config_toml());
        assert_eq!(file.api.keys, vec![new.entry]);
    }

    fn toml_parse<T: serde::de::DeserializeOwned>(text: &str) -> T {
        ledgerline_service::ConfigSource::from_toml_str(text)
            .unwrap()
            .section::<serde_json::Value>("api")
            .map(|api| serde_json::from_value(serde_json::json!({ "api": api })).unwrap())
            .unwrap()
    }

    #[test]
    fn bad_entries_are_refused_with_their_id() {
        let entry = |id: &str, sha: &str| KeyEntry {
            id: id.to_owned(),
            role: Role::Analyst,
            sha256: sha.to_owned(),
        };
        let hash = key_hash("x");
        assert_eq!(
            KeyStore::new(&[entry("a", "abc")]).unwrap_err(),
            KeyConfigError::BadHash { id: "a".into() }
        );
        assert!(KeyStore::new(&[entry("a", &hash.to_uppercase())]).is_err());
        assert!(matches!(
            KeyStore::new(&[entry("a", &hash), entry("a", &key_hash("y"))]),
            Err(KeyConfigError::DuplicateId { .. })
        ));
        assert!(matches!(
            KeyStore::new(&[entry("a", &hash), entry("b", &hash)]),
            Err(KeyConfigError::DuplicateHash { .. })
        ));
        assert!(matches!(
            KeyStore::new(&[entry(" ", &hash)]),
            Err(KeyConfigError::EmptyId { index: 0 })
        ));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
