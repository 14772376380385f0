//! Signed checkpoints: what one covers, its canonical bytes and hash, the signing-key file, and
//! Ed25519 signing and verification against a set of trusted public keys.
//!
//! A checkpoint fixes one segment of one partition's chain: its offsets, its head hash, the
//! Merkle root of its record hashes and the hash of the previous checkpoint, so checkpoints form
//! a chain of their own. Deleting the newest records of a partition cannot go unnoticed past the
//! last checkpoint, and one record is provable offline with an inclusion proof up to the
//! checkpoint's root plus the public key.
//!
//! **Key rotation.** Every checkpoint names the key that signed it. A rotation is an ordinary
//! checkpoint, signed by the old key, whose `next_key_id` names the new one; since that field is
//! part of the signed bytes, nobody without the old key can announce a rotation.
//!
//! **Key ids** are the hex of the first 8 bytes of SHA-256 of the 32-byte public key. They are
//! derived, never chosen, so a trusted-key set cannot file a key under someone else's id.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The first bytes of [`Checkpoint::signing_bytes`]. A signature over a checkpoint can therefore
/// never be replayed as a signature over anything else this platform signs or hashes.
pub const CHECKPOINT_DOMAIN_TAG: &[u8] = b"ledgerline.archive.checkpoint.v1";

/// The first line of a signing-key file; it names the format so a later version can be told
/// apart instead of misread.
pub const KEY_FILE_HEADER: &str = "ledgerline-archive-signing-key v1";

/// The bytes of an Ed25519 signature.
pub const SIGNATURE_LENGTH: usize = ed25519_dalek::SIGNATURE_LENGTH;

/// One checkpoint of one partition's chain, before or without its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Id of the key that signs this checkpoint (see [`key_id`]).
    pub key_id: String,
    /// Kafka topic of the chain.
    pub topic: String,
    /// Kafka partition of the chain.
    pub partition: i32,
    /// Offset of the segment's first record.
    pub first_offset: i64,
    /// Offset of the segment's last record, whose hash is `head_hash`.
    pub last_offset: i64,
    /// Number of records in the segment, the Merkle tree's size. It can be less than
    /// `last_offset - first_offset + 1` where Kafka itself has gaps.
    pub count: u64,
    /// The chain hash of the segment's last record.
    pub head_hash: [u8; 32],
    /// RFC 6962 root over the segment's record hashes, in offset order.
    pub merkle_root: [u8; 32],
    /// [`Checkpoint::hash`] of the partition's previous checkpoint, or
    /// [`crate::archive::chain::GENESIS`] for the first.
    pub previous_checkpoint_hash: [u8; 32],
    /// When the checkpoint was made, in microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// Set on a rotation: the id of the key that signs the next checkpoints.
    pub next_key_id: Option<String>,
}

/// A checkpoint with its Ed25519 signature over [`Checkpoint::signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What was signed.
    pub checkpoint: Checkpoint,
    /// The Ed25519 signature.
    pub signature: [u8; SIGNATURE_LENGTH],
}

/// Why a checkpoint could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// The checkpoint names a different key than the one asked to sign it. Signing anyway would
    /// produce a checkpoint that can never verify.
    #[error("checkpoint names key {checkpoint_key_id} but the signing key is {signing_key_id}")]
    KeyIdMismatch {
        checkpoint_key_id: String,
        signing_key_id: String,
    },
}

/// Why a signed checkpoint did not verify. These are the `unknown key` and `bad signature`
/// findings of `archive verify`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The checkpoint names a key id outside the trusted set.
    #[error("checkpoint signed by unknown key {key_id}")]
    UnknownKey { key_id: String },
    /// The key is trusted but the signature does not match the checkpoint's bytes.
    #[error("bad checkpoint signature for key {key_id}")]
    BadSignature { key_id: String },
}

/// Why a signing-key file or a public key could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The file does not start with [`KEY_FILE_HEADER`].
    #[error("signing key file does not start with `{KEY_FILE_HEADER}`")]
    MissingHeader,
    /// A required `name: value` line is absent.
    #[error("signing key file has no `{field}` line")]
    MissingField { field: &'static str },
    /// A line is neither a known `name: value` pair, a comment nor blank.
    #[error("signing key file has an unexpected line {line_number}")]
    UnexpectedLine { line_number: usize },
    /// A field's hex is malformed or of the wrong length. The value is not echoed, since for the
    /// seed it is the secret itself.
    #[error("`{field}` is not {expected_bytes} bytes of hex")]
    BadHex {
        field: &'static str,
        expected_bytes: usize,
    },
    /// The 32 bytes are not a valid Ed25519 public key.
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
    /// The file's `key_id` is not the id of its seed's public key: the file was edited or
    /// assembled from two keys.
    #[error("signing key file names key {stated} but its seed belongs to key {derived}")]
    KeyIdMismatch { stated: String, derived: String },
    /// The operating system's random source failed during key generation.
    #[error("random source unavailable: {reason}")]
    Random { reason: String },
}

/// A signing key as loaded from its file, with its derived id. Its `Debug` output shows only the
/// public half (`ed25519_dalek::SigningKey` never prints the secret).
#[derive(Debug)]
pub struct ArchiveSigningKey {
    key_id: String,
    signing_key: SigningKey,
}

/// What `archive keygen` writes: the secret key file and what to hand to verifiers.
#[derive(Debug)]
pub struct GeneratedKey {
    /// Contents of the signing-key file (see [`load_signing_key`]); secret.
    pub secret_file: SecretString,
    /// The 32-byte public key in hex, for verifiers' trusted-key sets.
    pub public_key_hex: String,
    /// The key's id (see [`key_id`]).
    pub key_id: String,
}

/// The public keys a verifier trusts, looked up by key id.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys_by_id: HashMap<String, VerifyingKey>,
}

impl Checkpoint {
    /// The canonical bytes a signature covers (all integers big-endian):
    ///
    /// ```text
    /// CHECKPOINT_DOMAIN_TAG
    /// u64 len ‖ key_id   u64 len ‖ topic   partition i32   first_offset i64   last_offset i64
    /// count u64   head_hash 32   merkle_root 32   previous_checkpoint_hash 32   created_at_us i64
    /// 0x00 | 0x01 ‖ u64 len ‖ next_key_id
    /// ```
    ///
    /// Length prefixes and the presence byte make the encoding injective, so two different
    /// checkpoints never share signing bytes (and so never share a signature or a hash).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(CHECKPOINT_DOMAIN_TAG);
        push_length_prefixed(&mut bytes, self.key_id.as_bytes());
        push_length_prefixed(&mut bytes, self.topic.as_bytes());
        bytes.extend_from_slice(&self.partition.to_be_bytes());
        bytes.extend_from_slice(&self.first_offset.to_be_bytes());
        bytes.extend_from_slice(&self.last_offset.to_be_bytes());
        bytes.extend_from_slice(&self.count.to_be_bytes());
        bytes.extend_from_slice(&self.head_hash);
        bytes.extend_from_slice(&self.merkle_root);
        bytes.extend_from_slice(&self.previous_checkpoint_hash);
        bytes.extend_from_slice(&self.created_at_us.to_be_bytes());
        match &self.next_key_id {
            None => bytes.push(0),
            Some(next_key_id) => {
                bytes.push(1);
                push_length_prefixed(&mut bytes, next_key_id.as_bytes());
            }
        }
        bytes
    }

    /// `SHA-256(signing_bytes)`: what the partition's next checkpoint stores as
    /// `previous_checkpoint_hash`. The signature is left out on purpose: Ed25519 signatures are
    /// deterministic, so it adds nothing the content does not already fix, and the hash can be
    /// known before signing.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.signing_bytes()).into()
    }

    /// Signs the checkpoint with `key`, which must be the key the checkpoint names.
    pub fn sign(self, key: &ArchiveSigningKey) -> Result<SignedCheckpoint, SignError> {
        if self.key_id != key.key_id {
            return Err(SignError::KeyIdMismatch {
                checkpoint_key_id: self.key_id,
                signing_key_id: key.key_id.clone(),
            });
        }
        let signature = key.signing_key.sign(&self.signing_bytes()).to_bytes();
        Ok(SignedCheckpoint {
            checkpoint: self,
            signature,
        })
    }
}

impl SignedCheckpoint {
    /// Checks the signature with the trusted key the checkpoint names.
    pub fn verify(&self, trusted_keys: &TrustedKeys) -> Result<(), VerifyError> {
        let key_id = &self.checkpoint.key_id;
        let verifying_key = trusted_keys
            .get(key_id)
            .ok_or_else(|| VerifyError::UnknownKey {
                key_id: key_id.clone(),
            })?;
        let signature = Signature::from_bytes(&self.signature);
        // `verify_strict` also rejects weak public keys and non-canonical signatures, so one
        // checkpoint cannot carry two different valid signatures.
        verifying_key
            .verify_strict(&self.checkpoint.signing_bytes(), &signature)
            .map_err(|_| VerifyError::BadSignature {
                key_id: key_id.clone(),
            })
    }
}

impl ArchiveSigningKey {
    /// The key's id (see [`key_id`]).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, for a verifier's [`TrustedKeys`].
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    fn from_seed(seed: [u8; 32]) -> Self {
        let signing_key = SigningKey::from_bytes(&seed);
        Self {
            key_id: key_id(&signing_key.verifying_key()),
            signing_key,
        }
    }
}

impl TrustedKeys {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `verifying_key` and returns the id it is filed under.
    pub fn insert(&mut self, verifying_key: VerifyingKey) -> String {
        let id = key_id(&verifying_key);
        self.keys_by_id.insert(id.clone(), verifying_key);
        id
    }

    /// Trusts the public key given as 64 hex digits (as `archive keygen` prints it) and returns
    /// its id.
    pub fn insert_hex(&mut self, public_key_hex: &str) -> Result<String, KeyError> {
        Ok(self.insert(parse_public_key(public_key_hex)?))
    }

    /// The trusted key filed under `key_id`, if any.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys_by_id.get(key_id)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys_by_id.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys_by_id.is_empty()
    }
}

impl fmt::Debug for TrustedKeys {
    // Key ids are enough to tell sets apart in logs, and sorted so output is stable.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key_ids: Vec<&String> = self.keys_by_id.keys().collect();
        key_ids.sort();
        formatter
            .debug_struct("TrustedKeys")
            .field("key_ids", &key_ids)
            .finish()
    }
}

/// A public key from its 64 hex digits, as `archive keygen` prints it.
pub fn parse_public_key(public_key_hex: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_hex_32(public_key_hex.trim(), "public_key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublicKey)
}

/// The id of a public key: hex of the first 8 bytes of SHA-256 of its 32 bytes (16 hex digits).
pub fn key_id(verifying_key: &VerifyingKey) -> String {
    let digest = Sha256::digest(verifying_key.as_bytes());
    hex::encode(&digest[..8])
}

/// Makes a new signing key from the operating system's random source, for `archive keygen`.
///
/// The file is plain text, one `name: value` per line after [`KEY_FILE_HEADER`]:
///
/// ```text
/// ledgerline-archive-signing-key v1
/// key_id: <16 hex digits>
/// public_key: <64 hex digits>
/// seed: <64 hex digits, the Ed25519 secret seed>
/// ```
///
/// The key id and public key are stored alongside the seed so an operator can tell which key a
/// file holds without tooling; [`load_signing_key`] rederives both and refuses a file where
/// they disagree.
pub fn generate() -> Result<GeneratedKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| KeyError::Random {
        reason: error.to_string(),
    })?;
    let key = ArchiveSigningKey::from_seed(seed);
    let public_key_hex = hex::encode(key.verifying_key().as_bytes());
    let secret_file = SecretString::from(format!(
        "{KEY_FILE_HEADER}\nkey_id: {}\npublic_key: {public_key_hex}\nseed: {}\n",
        key.key_id,
        hex::encode(seed),
    ));
    Ok(GeneratedKey {
        secret_file,
        public_key_hex,
        key_id: key.key_id,
    })
}

/// Reads a signing-key file written by [`generate`]. Blank lines and `#` comments are allowed;
/// `seed` is required, and `key_id` and `public_key`, when present, must match the seed.
pub fn load_signing_key(text: &SecretString) -> Result<ArchiveSigningKey, KeyError> {
    let mut lines = text.expose_secret().lines().enumerate();
    let header = lines
        .by_ref()
        .map(|(_, line)| line.trim())
        .find(|line| !line.is_empty() && !line.starts_with('#'));
    if header != Some(KEY_FILE_HEADER) {
        return Err(KeyError::MissingHeader);
    }
    let mut stated_key_id = None;
    let mut stated_public_key = None;
    let mut seed = None;
    for (line_index, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let unexpected = KeyError::UnexpectedLine {
            line_number: line_index + 1,
        };
        let Some((name, value)) = line.split_once(':') else {
            return Err(unexpected);
        };
        let value = value.trim();
        match name.trim() {
            "key_id" => stated_key_id = Some(value.to_owned()),
            "public_key" => stated_public_key = Some(decode_hex_32(value, "public_key")?),
            "seed" => seed = Some(decode_hex_32(value, "seed")?),
            _ => return Err(unexpected),
        }
    }
    let seed = seed.ok_or(KeyError::MissingField { field: "seed" })?;
    let key = ArchiveSigningKey::from_seed(seed);
    let public_key_matches =
        stated_public_key.is_none_or(|public_key| public_key == *key.verifying_key().as_bytes());
    let key_id_matches = stated_key_id
        .as_deref()
        .is_none_or(|stated| stated == key.key_id);
    if !public_key_matches || !key_id_matches {
        return Err(KeyError::KeyIdMismatch {
            stated: stated_key_id.unwrap_or_else(|| "(none)".to_owned()),
            derived: key.key_id,
        });
    }
    Ok(key)
}

fn decode_hex_32(text: &str, field: &'static str) -> Result<[u8; 32], KeyError> {
    let bad_hex = KeyError::BadHex {
        field,
        expected_bytes: 32,
    };
    let bytes = hex::decode(text).map_err(|_| bad_hex.clone())?;
    bytes.try_into().map_err(|_| bad_hex)
}

/// `u64 big-endian length ‖ bytes`; `usize` always fits in `u64` on supported platforms.
fn push_length_prefixed(buffer: &mut Vec<u8>, bytes: &[u8]) {
    buffer.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buffer.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key() -> (ArchiveSigningKey, GeneratedKey) {
        let generated = generate().unwrap();
        let key = load_signing_key(&generated.secret_file).unwrap();
        (key, generated)
    }

    fn sample_checkpoint(key_id: &str) -> Checkpoint {
        Checkpoint {
            key_id: key_id.to_owned(),
            topic: "ledgerline.audit".to_owned(),
            partition: 2,
            first_offset: 100,
            last_offset: 10_099,
            count: 10_000,
            head_hash: [0x11; 32],
            merkle_root: [0x22; 32],
            previous_checkpoint_hash: [0x33; 32],
            created_at_us: 1_700_000_000_000_000,
            next_key_id: None,
        }
    }

    fn trusting(key: &ArchiveSigningKey) -> TrustedKeys {
        let mut trusted = TrustedKeys::new();
        trusted.insert(key.verifying_key());
        trusted
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let (key, _) = new_key();
        let signed = sample_checkpoint(key.key_id()).sign(&key).unwrap();
        assert_eq!(signed.verify(&trusting(&key)), Ok(()));
    }

    #[test]
    fn generated_key_reports_its_public_key_and_id() {
        let (key, generated) = new_key();
        assert_eq!(generated.key_id, key.key_id());
        assert_eq!(generated.key_id.len(), 16);
        assert_eq!(
            generated.public_key_hex,
            hex::encode(key.verifying_key().as_bytes())
        );
        let mut trusted = TrustedKeys::new();
        assert_eq!(
            trusted.insert_hex(&generated.public_key_hex),
            Ok(generated.key_id.clone())
        );
    }

    #[test]
    fn key_id_is_the_first_8_bytes_of_the_public_key_hash() {
        let key = ArchiveSigningKey::from_seed([7; 32]);
        let digest = Sha256::digest(key.verifying_key().as_bytes());
        assert_eq!(key.key_id(), hex::encode(&digest[..8]));
    }

    #[test]
    fn every_field_changes_the_signing_bytes() {
        let base = sample_checkpoint("0011223344556677");
        let mut variants = Vec::new();
        let mut edit = |change: fn(&mut Checkpoint)| {
            let mut variant = base.clone();
            change(&mut variant);
            variants.push(variant);
        };
        edit(|c| c.key_id.push('8'));
        edit(|c| c.topic.push('x'));
        edit(|c| c.partition += 1);
        edit(|c| c.first_offset += 1);
        edit(|c| c.last_offset += 1);
        edit(|c| c.count += 1);
        edit(|c| c.head_hash[5] ^= 1);
        edit(|c| c.merkle_root[5] ^= 1);
        edit(|c| c.previous_checkpoint_hash[5] ^= 1);
        edit(|c| c.created_at_us += 1);
        edit(|c| c.next_key_id = Some(String::new()));
        for variant in &variants {
            assert_ne!(variant.signing_bytes(), base.signing_bytes(), "{variant:?}");
            assert_ne!(variant.hash(), base.hash(), "{variant:?}");
        }
    }

    #[test]
    fn a_one_byte_change_anywhere_fails_verification() {
        let (key, _) = new_key();
        let trusted = trusting(&key);
        let mut base = sample_checkpoint(key.key_id());
        base.next_key_id = Some("8899aabbccddeeff".to_owned());
        let signed = base.sign(&key).unwrap();

        let mut tampered = Vec::new();
        let mut edit = |change: &dyn Fn(&mut SignedCheckpoint)| {
            let mut variant = signed.clone();
            change(&mut variant);
            tampered.push(variant);
        };
        edit(&|s| s.checkpoint.topic.replace_range(0..1, "m"));
        edit(&|s| s.checkpoint.partition ^= 1);
        edit(&|s| s.checkpoint.first_offset ^= 1);
        edit(&|s| s.checkpoint.last_offset ^= 1);
        edit(&|s| s.checkpoint.count ^= 1);
        edit(&|s| s.checkpoint.created_at_us ^= 1);
        edit(&|s| s.checkpoint.next_key_id = Some("8899aabbccddeefe".to_owned()));
        edit(&|s| s.checkpoint.next_key_id = None);
        for byte in 0..32 {
            edit(&|s| s.checkpoint.head_hash[byte] ^= 0x80);
            edit(&|s| s.checkpoint.merkle_root[byte] ^= 0x80);
            edit(&|s| s.checkpoint.previous_checkpoint_hash[byte] ^= 0x80);
        }
        for byte in 0..SIGNATURE_LENGTH {
            edit(&|s| s.signature[byte] ^= 0x01);
        }
        for variant in &tampered {
            assert_eq!(
                variant.verify(&trusted),
                Err(VerifyError::BadSignature {
                    key_id: key.key_id().to_owned()
                }),
                "{variant:?}"
            );
        }
    }

    #[test]
    fn unknown_key_is_reported_as_such() {
        let (signer, _) = new_key();
        let (other, _) = new_key();
        let signed = sample_checkpoint(signer.key_id()).sign(&signer).unwrap();
        assert_eq!(
            signed.verify(&trusting(&other)),
            Err(VerifyError::UnknownKey {
                key_id: signer.key_id().to_owned()
            })
        );
        assert_eq!(
            signed.verify(&TrustedKeys::new()),
            Err(VerifyError::UnknownKey {
                key_id: signer.key_id().to_owned()
            })
        );
    }

    #[test]
    fn a_checkpoint_relabelled_to_another_trusted_key_fails() {
        let (signer, _) = new_key();
        let (other, _) = new_key();
        let mut trusted = trusting(&signer);
        trusted.insert(other.verifying_key());
        let mut signed = sample_checkpoint(signer.key_id()).sign(&signer).unwrap();
        signed.checkpoint.key_id = other.key_id().to_owned();
        assert_eq!(
            signed.verify(&trusted),
            Err(VerifyError::BadSignature {
                key_id: other.key_id().to_owned()
            })
        );
    }

    #[test]
    fn signing_refuses_a_checkpoint_naming_another_key() {
        let (signer, _) = new_key();
        let result = sample_checkpoint("0011223344556677").sign(&signer);
        assert_eq!(
            result,
            Err(SignError::KeyIdMismatch {
                checkpoint_key_id: "0011223344556677".to_owned(),
                signing_key_id: signer.key_id().to_owned(),
            })
        );
    }

    #[test]
    fn rotation_is_covered_by_the_old_keys_signature() {
        let (old_key, _) = new_key();
        let (new_key_, _) = new_key();
        let mut trusted = trusting(&old_key);
        trusted.insert(new_key_.verifying_key());

        let mut rotation = sample_checkpoint(old_key.key_id());
        rotation.next_key_id = Some(new_key_.key_id().to_owned());
        let signed_rotation = rotation.clone().sign(&old_key).unwrap();
        assert_eq!(signed_rotation.verify(&trusted), Ok(()));

        // Stripping or redirecting the rotation breaks the old key's signature.
        for forged_next in [None, Some("ffffffffffffffff".to_owned())] {
            let mut forged = signed_rotation.clone();
            forged.checkpoint.next_key_id = forged_next;
            assert!(matches!(
                forged.verify(&trusted),
                Err(VerifyError::BadSignature { .. })
            ));
        }

        // The next checkpoint is signed by the new key and chains onto the rotation.
        let mut next = sample_checkpoint(new_key_.key_id());
        next.previous_checkpoint_hash = rotation.hash();
        next.first_offset = rotation.last_offset + 1;
        assert_eq!(next.sign(&new_key_).unwrap().verify(&trusted), Ok(()));
    }

    #[test]
    fn signing_key_file_round_trips_and_rejects_edits() {
        let (key, generated) = new_key();
        let text = generated.secret_file.expose_secret().to_owned();
        let reloaded =
            load_signing_key(&SecretString::from(format!("# dev key\n\n{text}"))).unwrap();
        assert_eq!(reloaded.key_id(), key.key_id());
        assert_eq!(reloaded.verifying_key(), key.verifying_key());

        let wrong_id = text.replace(
            &format!("key_id: {}", key.key_id()),
            "key_id: 0000000000000000",
        );
        assert!(matches!(
            load_signing_key(&SecretString::from(wrong_id)),
            Err(KeyError::KeyIdMismatch { .. })
        ));

        let seed_line = text.lines().find(|line| line.starts_with("seed:")).unwrap();
        let short_seed = text.replace(seed_line, &seed_line[..seed_line.len() - 2]);
        assert_eq!(
            load_signing_key(&SecretString::from(short_seed)).unwrap_err(),
            KeyError::BadHex {
                field: "seed",
                expected_bytes: 32
            }
        );

        let no_header = text.replacen(KEY_FILE_HEADER, "", 1);
        assert_eq!(
            load_signing_key(&SecretString::from(no_header)).unwrap_err(),
            KeyError::MissingHeader
        );

        let no_seed = text.replace(seed_line, "");
        assert_eq!(
            load_signing_key(&SecretString::from(no_seed)).unwrap_err(),
            KeyError::MissingField { field: "seed" }
        );

        assert_eq!(
            load_signing_key(&SecretString::from(format!("{text}colour: blue\n"))).unwrap_err(),
            KeyError::UnexpectedLine { line_number: 5 }
        );
    }

    #[test]
    fn debug_output_never_shows_the_seed() {
        let (key, generated) = new_key();
        let text = generated.secret_file.expose_secret().to_owned();
        let seed_hex = text
            .lines()
            .find_map(|line| line.strip_prefix("seed: "))
            .unwrap();
        assert!(!format!("{key:?}").contains(seed_hex));
        assert!(!format!("{generated:?}").contains(seed_hex));
    }
}
