//! The tamper-evident audit archive (issue 10).
//!
//! What the archive will guarantee once its consumer lands:
//!
//! - **A hash chain per Kafka partition.** Every archived record of `ledgerline.audit` stores
//!   `prev_hash` and `hash = SHA-256(domain tag ‖ prev_hash ‖ topic ‖ partition ‖ offset ‖
//!   timestamp ‖ key ‖ value bytes)`, starting from the documented [`chain::GENESIS`]. Changing,
//!   deleting, inserting or reordering a record breaks the chain at that record, so `verify` can
//!   name the first bad one. Undecodable records are chained too, because a reviewer must see
//!   that something was there.
//! - **Exactly once, with no fork.** On assignment the archiver resumes right after the chain
//!   head stored in ClickHouse, and fencing keeps a member from writing a partition it lost.
//!   Offsets Kafka itself no longer has are recorded as explicit gaps.
//! - **Signed checkpoints.** Every N records or T seconds per partition, an Ed25519-signed
//!   checkpoint fixes the chain head, the RFC 6962 Merkle root of the segment's record hashes
//!   and the previous checkpoint's hash. Deleting the newest rows is caught against the last
//!   checkpoint, and a Merkle inclusion proof lets a reviewer check one event offline with the
//!   public key alone.
//! - **Key rotation.** A checkpoint names its key id; verification takes a set of trusted public
//!   keys, and a rotation is a checkpoint signed by the old key that names the new one.
//!
//! This folder so far holds only the pure, I/O-free primitives those guarantees rest on:
//!
//! - [`chain`]: the genesis value and the record hash;
//! - [`merkle`]: RFC 6962 tree hashing, inclusion proofs and their RFC 9162 verification;
//! - [`checkpoint`]: the checkpoint, its canonical encoding and hash, the signing-key file and
//!   Ed25519 signing and verification against trusted keys.
//!
//! Nothing wires them into a consumer yet: the archiver, its ClickHouse tables and the
//! `archive verify`/`prove`/`export` commands arrive with the rest of the issue.
//!
//! Every byte encoding here is versioned by its domain tag (`….v1`). Changing an encoding means
//! a new tag, never a silent change, because archived hashes and signatures must stay
//! verifiable for as long as the archive is kept.

pub mod chain;
pub mod checkpoint;
pub mod merkle;
