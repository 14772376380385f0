//! The registry's in-memory state: what the schemas topic says, applied record by record, and
//! the rules that turn a request into the records to write. Pure, with no I/O, so every rule
//! (id and version allocation, soft and hard deletes, lookups, compatibility) is unit-tested
//! here; [`crate::store`] does the writing and the waiting.
//!
//! Rules, as Confluent has them:
//! - An id names one schema everywhere. Registering a schema registered before (same identity,
//!   see [`crate::avro`]) under any subject, even a soft-deleted version, reuses its id.
//! - A new id is the highest id ever seen in the log plus one, including ids whose records were
//!   hard-deleted since, so an id is never handed out twice for different schemas. (The log
//!   remembers a hard-deleted id only until compaction removes both the record and its
//!   tombstone; Confluent has the same limit.)
//! - A new version is the subject's highest version plus one, soft-deleted ones included, so
//!   soft deletes never free a version number. Hard-deleted versions are gone from the log, so
//!   their numbers can come back, as with Confluent.
//! - Soft-deleted versions are hidden from listings and lookups unless asked for, but their ids
//!   still resolve through `/schemas/ids/{id}`, so old data stays readable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::avro::AvroSchema;
use crate::compatibility::{self, CompatibilityLevel};
use crate::error::ApiError;
use crate::records::{LogRecord, SchemaValue};

/// Confluent ids and versions are Java ints; the wire format's id field is 4 bytes.
const MAX_NUMBER: u32 = i32::MAX as u32;

#[derive(Debug)]
pub struct State {
    /// The global level until a `PUT /config` record says otherwise.
    default_level: CompatibilityLevel,
    global_level: Option<CompatibilityLevel>,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
    /// Every version still in the log, soft-deleted ones included.
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    /// Every id some version still uses, and which versions use it.
    ids: BTreeMap<u32, IdEntry>,
    /// Schema identity → its id, so the same schema gets the same id in every subject.
    identities: HashMap<String, u32>,
    /// The highest id any record ever carried, hard-deleted ones included.
    max_id: u32,
}

/// One version of a subject.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: u32,
    pub schema: Arc<StoredSchema>,
    pub deleted: bool,
}

/// A schema as stored, shared by every version that uses its id.
#[derive(Debug)]
pub struct StoredSchema {
    /// The text as first registered; served back verbatim.
    pub text: String,
    /// `None` for AVRO (Confluent omits it); set only for records another registry wrote.
    pub schema_type: Option<String>,
    /// The parsed schema, or why it could not be parsed (a record written by hand or by a
    /// registry with other schema types). Such versions are still served, but cannot take part
    /// in compatibility checks or lookups.
    pub avro: Result<AvroSchema, String>,
}

impl StoredSchema {
    fn new(text: String, schema_type: Option<String>) -> Self {
        let schema_type = schema_type.filter(|kind| !kind.eq_ignore_ascii_case("AVRO"));
        let avro = match &schema_type {
            Some(kind) => Err(format!("schema type {kind} is not supported")),
            None => AvroSchema::parse(&text),
        };
        Self {
            text,
            schema_type,
            avro,
        }
    }

    fn identity(&self) -> Option<&str> {
        self.avro.as_ref().ok().map(|avro| avro.identity.as_str())
    }
}

#[derive(Debug)]
struct IdEntry {
    schema: Arc<StoredSchema>,
    users: BTreeSet<(String, u32)>,
}

/// A version as named in a URL: a number, or `latest` (also spelled `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text == "latest" || text == "-1" {
            return Ok(Self::Latest);
        }
        match text.parse::<u32>() {
            Ok(number) if (1..=MAX_NUMBER).contains(&number) => Ok(Self::Number(number)),
            _ => Err(ApiError::InvalidVersion(text.to_owned())),
        }
    }
}

/// What a request writes, and what it answers once those records are applied.
#[derive(Debug)]
pub struct Planned<T> {
    pub records: Vec<LogRecord>,
    pub answer: T,
}

impl<T> Planned<T> {
    fn nothing(answer: T) -> Self {
        Self {
            records: Vec::new(),
            answer,
        }
    }
}

impl State {
    pub fn new(default_level: CompatibilityLevel) -> Self {
        Self {
            default_level,
            global_level: None,
            subject_levels: BTreeMap::new(),
            subjects: BTreeMap::new(),
            ids: BTreeMap::new(),
            identities: HashMap::new(),
            max_id: 0,
        }
    }

    /// Applies one record of the log. Records are applied in log order, on every instance, so
    /// every instance ends in the same state.
    pub fn apply(&mut self, record: LogRecord) {
        match record {
            LogRecord::Schema {
                subject,
                version,
                value: None,
            } => self.detach(&subject, version),
            LogRecord::Schema {
                subject,
                version,
                value: Some(value),
            } => self.attach(subject, version, value),
            LogRecord::Config {
                subject: None,
                level,
            } => self.global_level = level,
            LogRecord::Config {
                subject: Some(subject),
                level: Some(level),
            } => {
                self.subject_levels.insert(subject, level);
            }
            LogRecord::Config {
                subject: Some(subject),
                level: None,
            } => {
                self.subject_levels.remove(&subject);
            }
        }
    }

    /// Stores a version. The key's subject and version win over the value's, because compaction
    /// goes by the key.
    fn attach(&mut self, subject: String, version: u32, value: SchemaValue) {
        self.max_id = self.max_id.max(value.id);
        // Taken before detaching, so a soft delete (same version, same id) does not re-parse.
        let known = self
            .ids
            .get(&value.id)
            .map(|entry| Arc::clone(&entry.schema));
        self.detach(&subject, version);
        let schema = match known {
            Some(schema) => {
                if schema.text != value.schema {
                    tracing::warn!(
                        id = value.id,
                        %subject,
                        version,
                        "schema record reuses an id with a different schema; serving the first"
                    );
                }
                schema
            }
            None => Arc::new(StoredSchema::new(value.schema, value.schema_type)),
        };
        if let Some(identity) = schema.identity() {
            self.identities
                .entry(identity.to_owned())
                .or_insert(value.id);
        }
        self.ids
            .entry(value.id)
            .or_insert_with(|| IdEntry {
                schema: Arc::clone(&schema),
                users: BTreeSet::new(),
            })
            .users
            .insert((subject.clone(), version));
        self.subjects.entry(subject).or_default().insert(
            version,
            Version {
                id: value.id,
                schema,
                deleted: value.deleted,
            },
        );
    }

    /// Forgets a version (its hard delete, or before it is replaced), and its id once no version
    /// uses it. `max_id` stays.
    fn detach(&mut self, subject: &str, version: u32) {
        let Some(versions) = self.subjects.get_mut(subject) else {
            return;
        };
        let Some(removed) = versions.remove(&version) else {
            return;
        };
        if versions.is_empty() {
            self.subjects.remove(subject);
        }
        let Some(entry) = self.ids.get_mut(&removed.id) else {
            return;
        };
        entry.users.remove(&(subject.to_owned(), version));
        if entry.users.is_empty() {
            if let Some(identity) = entry.schema.identity() {
                if self.identities.get(identity) == Some(&removed.id) {
                    self.identities.remove(identity);
                }
            }
            self.ids.remove(&removed.id);
        }
    }

    // ---- reads ----

    /// The highest id ever seen (0 before the first registration).
    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    pub fn subjects(&self, include_deleted: bool) -> Vec<&str> {
        self.subjects
            .iter()
            .filter(|(_, versions)| versions.values().any(|v| include_deleted || !v.deleted))
            .map(|(subject, _)| subject.as_str())
            .collect()
    }

    /// A subject's versions, oldest first; the subject is unknown when none are visible.
    fn visible(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<(u32, &Version)>, ApiError> {
        let visible: Vec<(u32, &Version)> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, version)| include_deleted || !version.deleted)
            .map(|(number, version)| (*number, version))
            .collect();
        if visible.is_empty() {
            Err(ApiError::SubjectNotFound(subject.to_owned()))
        } else {
            Ok(visible)
        }
    }

    pub fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<u32>, ApiError> {
        Ok(self
            .visible(subject, include_deleted)?
            .into_iter()
            .map(|(number, _)| number)
            .collect())
    }

    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<(u32, &Version), ApiError> {
        let mut visible = self.visible(subject, include_deleted)?;
        match spec {
            // `visible` is never empty, so there is always a latest.
            VersionSpec::Latest => visible
                .pop()
                .ok_or_else(|| ApiError::SubjectNotFound(subject.to_owned())),
            VersionSpec::Number(number) => visible
                .into_iter()
                .find(|(n, _)| *n == number)
                .ok_or_else(|| ApiError::VersionNotFound {
                    subject: subject.to_owned(),
                    version: number,
                }),
        }
    }

    /// The schema behind an id, soft-deleted or not.
    pub fn schema(&self, id: u32) -> Result<&StoredSchema, ApiError> {
        self.ids
            .get(&id)
            .map(|entry| entry.schema.as_ref())
            .ok_or(ApiError::SchemaNotFound)
    }

    /// The subject versions that use an id.
    pub fn id_versions(
        &self,
        id: u32,
        include_deleted: bool,
    ) -> Result<Vec<(&str, u32)>, ApiError> {
        let entry = self.ids.get(&id).ok_or(ApiError::SchemaNotFound)?;
        Ok(entry
            .users
            .iter()
            .filter(|(subject, version)| {
                include_deleted
                    || self
                        .subjects
                        .get(subject)
                        .and_then(|versions| versions.get(version))
                        .is_some_and(|v| !v.deleted)
            })
            .map(|(subject, version)| (subject.as_str(), *version))
            .collect())
    }

    /// The version of `subject` holding `candidate`, newest first.
    pub fn lookup(
        &self,
        subject: &str,
        candidate: &AvroSchema,
        include_deleted: bool,
    ) -> Result<(u32, &Version), ApiError> {
        self.visible(subject, include_deleted)?
            .into_iter()
            .rev()
            .find(|(_, version)| version.schema.identity() == Some(candidate.identity.as_str()))
            .ok_or(ApiError::SchemaNotFound)
    }

    pub fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or(self.default_level)
    }

    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// Checks `candidate` against `subject` the way `/compatibility` does: against the named
    /// version, or for `latest` against the latest live version (every live version under a
    /// transitive level). Returns the reasons it is incompatible; empty means compatible.
    pub fn compatibility(
        &self,
        subject: &str,
        spec: VersionSpec,
        candidate: &AvroSchema,
    ) -> Result<Vec<String>, ApiError> {
        let level = self.effective_level(subject);
        let targets = match spec {
            VersionSpec::Number(_) => vec![self.version(subject, spec, false)?],
            VersionSpec::Latest => self.check_targets(subject, level)?,
        };
        Ok(Self::incompatibilities(level, candidate, &targets))
    }

    /// The versions a registration must be compatible with under `level`.
    fn check_targets(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<Vec<(u32, &Version)>, ApiError> {
        let mut live = self.visible(subject, false)?;
        if !level.is_transitive() {
            live = live.split_off(live.len().saturating_sub(1));
        }
        Ok(live)
    }

    fn incompatibilities(
        level: CompatibilityLevel,
        candidate: &AvroSchema,
        targets: &[(u32, &Version)],
    ) -> Vec<String> {
        if level == CompatibilityLevel::None {
            return Vec::new();
        }
        let mut messages = Vec::new();
        let mut parsed = Vec::new();
        for (number, version) in targets {
            match &version.schema.avro {
                Ok(avro) => parsed.push((*number, &avro.schema)),
                Err(reason) => {
                    messages.push(format!("version {number} cannot be checked: {reason}"))
                }
            }
        }
        messages.extend(compatibility::incompatibilities(
            level,
            &candidate.schema,
            &parsed,
        ));
        messages
    }

    // ---- writes: each returns the records to append and the answer to give once applied ----

    /// `POST /subjects/{subject}/versions`: the schema's id, registering it when needed.
    pub fn plan_register(
        &self,
        subject: &str,
        candidate: &AvroSchema,
        text: &str,
    ) -> Result<Planned<u32>, ApiError> {
        if let Ok((_, existing)) = self.lookup(subject, candidate, false) {
            return Ok(Planned::nothing(existing.id));
        }
        let level = self.effective_level(subject);
        // A subject with no live version has nothing to be compatible with.
        if let Ok(targets) = self.check_targets(subject, level) {
            let messages = Self::incompatibilities(level, candidate, &targets);
            if !messages.is_empty() {
                return Err(ApiError::Incompatible {
                    subject: subject.to_owned(),
                    messages,
                });
            }
        }
        let (id, text) = match self.identities.get(&candidate.identity) {
            // The same schema under another subject (or soft-deleted here): same id, and the
            // text already stored for it, so an id always serves one text.
            Some(&id) => (id, self.schema(id)?.text.clone()),
            None => (self.next_number(self.max_id)?, text.to_owned()),
        };
        let last_version = self
            .subjects
            .get(subject)
            .and_then(|versions| versions.keys().next_back().copied())
            .unwrap_or(0);
        let version = self.next_number(last_version)?;
        Ok(Planned {
            records: vec![LogRecord::Schema {
                subject: subject.to_owned(),
                version,
                value: Some(SchemaValue {
                    subject: subject.to_owned(),
                    version,
                    id,
                    schema_type: None,
                    schema: text,
                    deleted: false,
                }),
            }],
            answer: id,
        })
    }

    fn next_number(&self, current: u32) -> Result<u32, ApiError> {
        current
            .checked_add(1)
            .filter(|next| *next <= MAX_NUMBER)
            .ok_or_else(|| {
                tracing::error!(current, "id or version space exhausted");
                ApiError::Store
            })
    }

    /// `DELETE /subjects/{subject}`: the versions deleted.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Planned<Vec<u32>>, ApiError> {
        let all = self.visible(subject, true)?;
        let any_live = all.iter().any(|(_, version)| !version.deleted);
        match (permanent, any_live) {
            (false, false) => Err(ApiError::SubjectSoftDeleted(subject.to_owned())),
            (true, true) => Err(ApiError::SubjectNotSoftDeleted(subject.to_owned())),
            (false, true) => {
                let live: Vec<(u32, &Version)> =
                    all.into_iter().filter(|(_, v)| !v.deleted).collect();
                Ok(Planned {
                    records: live
                        .iter()
                        .map(|(number, version)| soft_delete(subject, *number, version))
                        .collect(),
                    answer: live.iter().map(|(number, _)| *number).collect(),
                })
            }
            (true, false) => Ok(Planned {
                records: all
                    .iter()
                    .map(|(number, _)| hard_delete(subject, *number))
                    .collect(),
                answer: all.iter().map(|(number, _)| *number).collect(),
            }),
        }
    }

    /// `DELETE /subjects/{subject}/versions/{version}`: the version deleted. A soft delete of
    /// `latest` means the latest live version; a permanent one, the latest of all, because only
    /// soft-deleted versions can be deleted permanently.
    pub fn plan_delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<Planned<u32>, ApiError> {
        let (number, version) = match (spec, permanent) {
            (VersionSpec::Latest, false) => self.version(subject, spec, false)?,
            _ => self.version(subject, spec, true)?,
        };
        if !permanent && version.deleted {
            // Reached only with a number: `latest` skips deleted versions.
            return Err(ApiError::VersionSoftDeleted {
                subject: subject.to_owned(),
                version: number,
            });
        }
        if permanent && !version.deleted {
            return Err(ApiError::VersionNotSoftDeleted {
                subject: subject.to_owned(),
                version: number,
            });
        }
        let record = if permanent {
            hard_delete(subject, number)
        } else {
            soft_delete(subject, number, version)
        };
        Ok(Planned {
            records: vec![record],
            answer: number,
        })
    }

    /// `PUT /config` (`subject: None`) and `PUT /config/{subject}`.
    pub fn plan_set_level(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Planned<CompatibilityLevel> {
        Planned {
            records: vec![LogRecord::Config {
                subject: subject.map(str::to_owned),
                level: Some(level),
            }],
            answer: level,
        }
    }

    /// `DELETE /config/{subject}`: the level it had. `DELETE /config` (`subject: None`): the
    /// global level it had; the configured default applies again.
    pub fn plan_delete_level(
        &self,
        subject: Option<&str>,
    ) -> Result<Planned<CompatibilityLevel>, ApiError> {
        let previous = match subject {
            Some(subject) => self
                .subject_level(subject)
                .ok_or_else(|| ApiError::SubjectLevelNotConfigured(subject.to_owned()))?,
            None if self.global_level.is_none() => {
                return Ok(Planned::nothing(self.global_level()));
            }
            None => self.global_level(),
        };
        Ok(Planned {
            records: vec![LogRecord::Config {
                subject: subject.map(str::to_owned),
                level: None,
            }],
            answer: previous,
        })
    }
}

fn soft_delete(subject: &str, number: u32, version: &Version) -> LogRecord {
    LogRecord::Schema {
        subject: subject.to_owned(),
        version: number,
        value: Some(SchemaValue {
            subject: subject.to_owned(),
            version: number,
            id: version.id,
            schema_type: version.schema.schema_type.clone(),
            schema: version.schema.text.clone(),
            deleted: true,
        }),
    }
}

fn hard_delete(subject: &str, number: u32) -> LogRecord {
    LogRecord::Schema {
        subject: subject.to_owned(),
        version: number,
        value: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"}]}"#;
    const V2: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"n","type":"int","default":0}]}"#;
    const V3: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"n","type":"int","default":0},{"name":"m","type":"long","default":0}]}"#;
    const BREAKING: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"req","type":"int"}]}"#;

    fn avro(text: &str) -> AvroSchema {
        AvroSchema::parse(text).unwrap()
    }

    /// What the store does: plan, then apply the records as the tailer would.
    fn run<T>(state: &mut State, planned: Result<Planned<T>, ApiError>) -> Result<T, ApiError> {
        let planned = planned?;
        for record in planned.records {
            state.apply(record);
        }
        Ok(planned.answer)
    }

    fn register(state: &mut State, subject: &str, text: &str) -> Result<u32, ApiError> {
        let planned = state.plan_register(subject, &avro(text), text);
        run(state, planned)
    }

    fn set_level(state: &mut State, subject: Option<&str>, level: CompatibilityLevel) {
        let planned = state.plan_set_level(subject, level);
        run(state, Ok(planned)).unwrap();
    }

    fn new_state() -> State {
        State::new(CompatibilityLevel::Backward)
    }

    #[test]
    fn version_specs_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("1"), Ok(VersionSpec::Number(1)));
        assert_eq!(
            VersionSpec::parse("2147483647"),
            Ok(VersionSpec::Number(2_147_483_647))
        );
        for bad in [
            "0",
            "-2",
            "abc",
            "",
            "2147483648",
            "99999999999999999999",
            "1.0",
            "LATEST",
        ] {
            assert!(
                matches!(VersionSpec::parse(bad), Err(ApiError::InvalidVersion(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_global_and_versions_per_subject() {
        let mut state = new_state();
        assert_eq!(register(&mut state, "a", V1), Ok(1));
        // Same schema, same subject: same id, no new version.
        assert_eq!(register(&mut state, "a", V1), Ok(1));
        assert_eq!(state.versions("a", false), Ok(vec![1]));
        assert_eq!(register(&mut state, "a", V2), Ok(2));
        // Same schema in another subject: same id, that subject's version 1.
        assert_eq!(register(&mut state, "b", V2), Ok(2));
        let (number, version) = state.version("b", VersionSpec::Latest, false).unwrap();
        assert_eq!((number, version.id), (1, 2));
        assert_eq!(state.id_versions(2, false), Ok(vec![("a", 2), ("b", 1)]));
        assert_eq!(state.subjects(false), vec!["a", "b"]);
        // Whitespace does not make a new schema.
        let spaced = V1.replace(',', " ,\n ");
        assert_eq!(register(&mut state, "a", &spaced), Ok(1));
    }

    #[test]
    fn backward_compatibility_is_enforced_on_register() {
        let mut state = new_state();
        register(&mut state, "s", V1).unwrap();
        let error = register(&mut state, "s", BREAKING).unwrap_err();
        assert!(
            matches!(&error, ApiError::Incompatible { subject, messages } if subject == "s" && messages.len() == 1),
            "{error:?}"
        );
        assert_eq!(state.versions("s", false), Ok(vec![1]));
        // Under NONE (subject level wins over global) anything goes.
        set_level(&mut state, Some("s"), CompatibilityLevel::None);
        assert_eq!(register(&mut state, "s", BREAKING), Ok(2));
        // A schema registered earlier comes back with its id even if the rules changed.
        assert_eq!(register(&mut state, "s", V1), Ok(1));
    }

    #[test]
    fn transitive_levels_check_every_live_version() {
        let mut state = new_state();
        set_level(&mut state, Some("s"), CompatibilityLevel::None);
        let old = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"n","type":"int"}]}"#;
        register(&mut state, "s", old).unwrap();
        register(&mut state, "s", V1).unwrap();
        // V2 adds `n` with a default: it reads V1 data, but reading `old` data where `n` is an
        // int is fine too; use a schema that conflicts only with `old`.
        let conflicting = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"n","type":"string","default":""}]}"#;
        set_level(&mut state, Some("s"), CompatibilityLevel::Backward);
        let candidate = avro(conflicting);
        assert_eq!(
            state.compatibility("s", VersionSpec::Latest, &candidate),
            Ok(vec![])
        );
        set_level(
            &mut state,
            Some("s"),
            CompatibilityLevel::BackwardTransitive,
        );
        let messages = state
            .compatibility("s", VersionSpec::Latest, &candidate)
            .unwrap();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("version 1"), "{messages:?}");
        // Against one named version, only that version counts.
        assert_eq!(
            state.compatibility("s", VersionSpec::Number(2), &candidate),
            Ok(vec![])
        );
        assert!(register(&mut state, "s", conflicting).is_err());
    }

    #[test]
    fn soft_delete_hides_but_keeps_ids_and_version_numbers() {
        let mut state = new_state();
        register(&mut state, "s", V1).unwrap();
        register(&mut state, "s", V2).unwrap();
        let planned = state.plan_delete_version("s", VersionSpec::Latest, false);
        assert_eq!(run(&mut state, planned), Ok(2));
        assert_eq!(state.versions("s", false), Ok(vec![1]));
        assert_eq!(state.versions("s", true), Ok(vec![1, 2]));
        // Deleting it again softly is refused; its id still resolves.
        assert!(matches!(
            state.plan_delete_version("s", VersionSpec::Number(2), false),
            Err(ApiError::VersionSoftDeleted { version: 2, .. })
        ));
        assert_eq!(state.schema(2).unwrap().text, V2);
        assert_eq!(state.id_versions(2, false), Ok(vec![]));

        let planned = state.plan_delete_subject("s", false);
        assert_eq!(run(&mut state, planned), Ok(vec![1]));
        assert!(matches!(
            state.versions("s", false),
            Err(ApiError::SubjectNotFound(_))
        ));
        assert!(state.subjects(false).is_empty());
        assert_eq!(state.subjects(true), vec!["s"]);
        assert!(matches!(
            state.plan_delete_subject("s", false),
            Err(ApiError::SubjectSoftDeleted(_))
        ));

        // Registering again starts after the highest version ever used and reuses the id.
        assert_eq!(register(&mut state, "s", V1), Ok(1));
        assert_eq!(state.versions("s", false), Ok(vec![3]));
    }

    #[test]
    fn hard_delete_needs_a_soft_delete_first_and_never_frees_the_id() {
        let mut state = new_state();
        register(&mut state, "s", V1).unwrap();
        register(&mut state, "s", V2).unwrap();
        assert!(matches!(
            state.plan_delete_subject("s", true),
            Err(ApiError::SubjectNotSoftDeleted(_))
        ));
        assert!(matches!(
            state.plan_delete_version("s", VersionSpec::Number(2), true),
            Err(ApiError::VersionNotSoftDeleted { version: 2, .. })
        ));
        let planned = state.plan_delete_version("s", VersionSpec::Number(2), false);
        run(&mut state, planned).unwrap();
        let planned = state.plan_delete_version("s", VersionSpec::Number(2), true);
        assert_eq!(run(&mut state, planned), Ok(2));
        assert_eq!(state.versions("s", true), Ok(vec![1]));
        assert_eq!(state.schema(2).unwrap_err(), ApiError::SchemaNotFound);
        assert!(matches!(
            state.plan_delete_version("s", VersionSpec::Number(2), true),
            Err(ApiError::VersionNotFound { version: 2, .. })
        ));

        // The same schema again: a new id, since id 2 must never name anything else.
        assert_eq!(register(&mut state, "s", V2), Ok(3));
        assert_eq!(state.max_id(), 3);

        let planned = state.plan_delete_subject("s", false);
        run(&mut state, planned).unwrap();
        let planned = state.plan_delete_subject("s", true);
        assert_eq!(run(&mut state, planned), Ok(vec![1, 2]));
        assert!(matches!(
            state.plan_delete_subject("s", true),
            Err(ApiError::SubjectNotFound(_))
        ));
        assert!(state.subjects(true).is_empty());
        assert_eq!(register(&mut state, "t", V3), Ok(4));
    }

    #[test]
    fn replay_of_a_log_with_tombstones_remembers_the_highest_id() {
        // The log as another instance wrote it: id 5 registered, then hard-deleted.
        let mut state = new_state();
        let value = |id, version, deleted| SchemaValue {
            subject: "s".to_owned(),
            version,
            id,
            schema_type: None,
            schema: V1.to_owned(),
            deleted,
        };
        state.apply(LogRecord::Schema {
            subject: "s".into(),
            version: 1,
            value: Some(value(5, 1, false)),
        });
        state.apply(LogRecord::Schema {
            subject: "s".into(),
            version: 1,
            value: Some(value(5, 1, true)),
        });
        state.apply(LogRecord::Schema {
            subject: "s".into(),
            version: 1,
            value: None,
        });
        assert!(state.subjects(true).is_empty());
        assert_eq!(state.schema(5).unwrap_err(), ApiError::SchemaNotFound);
        assert_eq!(register(&mut state, "s", V1), Ok(6));
        // Hard-deleted version numbers come back, as with Confluent.
        assert_eq!(state.versions("s", false), Ok(vec![1]));
    }

    #[test]
    fn lookups_find_the_version_holding_a_schema() {
        let mut state = new_state();
        register(&mut state, "s", V1).unwrap();
        register(&mut state, "s", V2).unwrap();
        let (number, version) = state.lookup("s", &avro(V2), false).unwrap();
        assert_eq!((number, version.id), (2, 2));
        assert_eq!(
            state.lookup("s", &avro(V3), false).unwrap_err(),
            ApiError::SchemaNotFound
        );
        assert!(matches!(
            state.lookup("missing", &avro(V1), false),
            Err(ApiError::SubjectNotFound(_))
        ));
        let planned = state.plan_delete_version("s", VersionSpec::Number(1), false);
        run(&mut state, planned).unwrap();
        assert_eq!(
            state.lookup("s", &avro(V1), false).unwrap_err(),
            ApiError::SchemaNotFound
        );
        assert_eq!(state.lookup("s", &avro(V1), true).unwrap().0, 1);
    }

    #[test]
    fn levels_fall_back_from_subject_to_global_to_default() {
        let mut state = State::new(CompatibilityLevel::Full);
        assert_eq!(state.effective_level("s"), CompatibilityLevel::Full);
        set_level(&mut state, None, CompatibilityLevel::Forward);
        assert_eq!(state.effective_level("s"), CompatibilityLevel::Forward);
        set_level(&mut state, Some("s"), CompatibilityLevel::None);
        assert_eq!(state.effective_level("s"), CompatibilityLevel::None);
        assert_eq!(state.subject_level("t"), None);

        let planned = state.plan_delete_level(Some("s"));
        assert_eq!(run(&mut state, planned), Ok(CompatibilityLevel::None));
        assert_eq!(state.effective_level("s"), CompatibilityLevel::Forward);
        assert!(matches!(
            state.plan_delete_level(Some("s")),
            Err(ApiError::SubjectLevelNotConfigured(_))
        ));
        let planned = state.plan_delete_level(None);
        assert_eq!(run(&mut state, planned), Ok(CompatibilityLevel::Forward));
        assert_eq!(state.global_level(), CompatibilityLevel::Full);
        let planned = state.plan_delete_level(None);
        assert!(planned.as_ref().unwrap().records.is_empty());
    }

    #[test]
    fn records_that_do_not_parse_are_served_but_not_matched() {
        let mut state = new_state();
        state.apply(LogRecord::Schema {
            subject: "s".into(),
            version: 1,
            value: Some(SchemaValue {
                subject: "s".into(),
                version: 1,
                id: 3,
                schema_type: Some("PROTOBUF".into()),
                schema: "syntax = \"proto3\";".into(),
                deleted: false,
            }),
        });
        assert_eq!(
            state.schema(3).unwrap().schema_type.as_deref(),
            Some("PROTOBUF")
        );
        let error = register(&mut state, "s", V1).unwrap_err();
        assert!(
            matches!(&error, ApiError::Incompatible { messages, .. } if messages[0].contains("PROTOBUF")),
            "{error:?}"
        );
        assert_eq!(register(&mut state, "t", V1), Ok(4));
    }
}
