//! The `q=` search string: the syntax people know from Kibana and ClickStack/HyperDX,
//! parsed into [`Condition`]s that AND together.
//!
//! ```text
//! level:error service:billing -name:health.* "disk full" timeout
//! ```
//!
//! # Grammar
//!
//! A search string is a list of *terms* separated by whitespace (any Unicode whitespace
//! outside quotes). An empty or all-whitespace string has no terms and matches everything.
//!
//! ```text
//! query   = { ws } [ term { ws { ws } term } ] { ws }
//! term    = [ "-" ] ( field ":" value | phrase | word )
//! value   = phrase | bare [ "*" ]        (the "*" only at the very end)
//! phrase  = '"' { char | '\"' | '\\' } '"'
//! field   = one of the names in FIELD_NAMES
//! ```
//!
//! - `field:value` matches the field exactly (case-sensitive); `field:value*` matches
//!   values that start with `value`; `field:"value with spaces"` is exact, and a `*` inside
//!   quotes is a literal `*`, never a wildcard.
//! - `"disk full"` (a phrase) and `timeout` (a bare word) are free text: a
//!   case-insensitive substring of the message ([`Field::Text`] with [`Match::Exact`] holding
//!   the text as typed; the reader does the case folding). `message:…` (alias `text:…`) is
//!   the same thing spelt as a field.
//! - A `-` directly before a term excludes it: `-name:health.*`, `-"disk full"`, `-timeout`.
//! - Inside quotes, `\"` is a quote and `\\` a backslash; any other backslash is an error,
//!   so that more escapes can be added later without changing what existing queries mean.
//!   Outside quotes a backslash is an ordinary character. Every other character, NUL and
//!   control characters included, is data.
//! - `level` and `outcome` values are case-insensitive and normalised to upper case
//!   (`level:error` → `ERROR`); `category` values likewise to lower case. They must be one of
//!   the fixed values (`TRACE DEBUG INFO WARN ERROR CRITICAL`, `SUCCESS FAILURE DENIED`,
//!   `audit job connection system session`) and take no `*`.
//!
//! # How terms combine
//!
//! The same field given several times *positively* (`service:a service:b`) is one
//! condition that matches any of the values (an `IN`), which is what people expect from
//! these tools; different fields AND. A negated term is always its own condition, so
//! `-service:a -service:b` excludes both. Free-text terms (phrases and bare words) are
//! each their own condition and AND together. Conditions come out in the order their
//! first term appears; a value repeated for the same field is kept once.
//!
//! # What is rejected
//!
//! Errors are values ([`SearchError`]), never panics, and carry the 0-based *character*
//! (not byte) position where the problem starts, a machine-readable [`SearchErrorKind`] and
//! a message for people. Rejected: an unknown field; an empty value (`service:`,
//! `service:""`, `""`, `service:*`); an unterminated quote; a lone `-` (or `--`); a `*`
//! anywhere but the end of an unquoted field value, or on `level`/`outcome`/`category`/
//! free text (which already matches anywhere); a stray `:` (`:x`, `host:a:b` — quote values
//! that contain `:`); a `"` inside a bare word or directly followed by something other than
//! whitespace; more than [`MAX_QUERY_CHARS`] characters or [`MAX_TERMS`] terms. A bare word
//! with a `:` in it is always read as `field:value`, so free text containing `:` must be
//! quoted (`"12:30"`).

use std::collections::HashMap;

/// The longest search string, in characters. Long enough for any query a person types,
/// short enough that a hostile one cannot make the generated SQL large.
pub const MAX_QUERY_CHARS: usize = 2_000;

/// The most terms a search string may have; each becomes (part of) a SQL condition, so this
/// bounds the work one request can ask of the database.
pub const MAX_TERMS: usize = 64;

// The parser's output is the read library's own filter types, so a parsed search string is
// exactly what the typed parameters build.
pub use ledgerline_consumers::projector::queries::{Condition, Field, Match};

/// The names the parser knows, aliases included, in the order error messages list them.
pub const FIELD_NAMES: &[(&str, Field)] = &[
    ("category", Field::Category),
    ("service", Field::Service),
    ("host", Field::Host),
    ("level", Field::Level),
    ("name", Field::Name),
    ("job_id", Field::JobId),
    ("device_id", Field::DeviceId),
    ("user_id", Field::UserId),
    ("request_id", Field::RequestId),
    ("trace_id", Field::TraceId),
    ("actor", Field::Actor),
    ("action", Field::Action),
    ("target", Field::Target),
    ("outcome", Field::Outcome),
    ("message", Field::Text),
    ("text", Field::Text),
];

/// The levels `level:` accepts, in their normalised (upper-case) spelling.
const LEVELS: &[&str] = &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"];
/// The outcomes `outcome:` accepts, in their normalised (upper-case) spelling.
const OUTCOMES: &[&str] = &["SUCCESS", "FAILURE", "DENIED"];
/// The categories `category:` accepts, in their normalised (lower-case) spelling.
const CATEGORIES: &[&str] = &["audit", "job", "connection", "system", "session"];

/// Why a search string was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct SearchError {
    /// 0-based position, in characters, where the problem starts (may equal the length of
    /// the input when something is missing at the end).
    pub position: usize,
    pub kind: SearchErrorKind,
    /// For people; does not repeat the position (the `Display` form adds it).
    pub message: String,
}

/// The kind of a [`SearchError`], for clients that react to it rather than show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchErrorKind {
    /// `field:` names a field not in [`FIELD_NAMES`].
    UnknownField,
    /// A value or phrase is empty (`service:`, `""`, `service:*`).
    EmptyValue,
    /// A `"` is never closed.
    UnterminatedQuote,
    /// A `*` where it is not a trailing prefix wildcard, or on a field that takes none.
    MisplacedWildcard,
    /// A `level`, `outcome` or `category` value that is not one of the fixed values.
    InvalidValue,
    /// The input is longer than [`MAX_QUERY_CHARS`].
    TooLong,
    /// The input has more than [`MAX_TERMS`] terms.
    TooManyTerms,
    /// Anything else malformed: a lone `-`, a stray `:`, a misplaced `"`, a bad escape.
    Syntax,
}

impl SearchErrorKind {
    /// A stable snake_case name, for machine-readable error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchErrorKind::UnknownField => "unknown_field",
            SearchErrorKind::EmptyValue => "empty_value",
            SearchErrorKind::UnterminatedQuote => "unterminated_quote",
            SearchErrorKind::MisplacedWildcard => "misplaced_wildcard",
            SearchErrorKind::InvalidValue => "invalid_value",
            SearchErrorKind::TooLong => "too_long",
            SearchErrorKind::TooManyTerms => "too_many_terms",
            SearchErrorKind::Syntax => "syntax",
        }
    }
}

impl SearchError {
    fn new(position: usize, kind: SearchErrorKind, message: impl Into<String>) -> Self {
        Self {
            position,
            kind,
            message: message.into(),
        }
    }
}

/// Parses a search string into conditions that AND together (see the module docs for the
/// syntax). The empty string gives no conditions.
pub fn parse(q: &str) -> Result<Vec<Condition>, SearchError> {
    // Checked before collecting so a huge input costs no more than the limit to reject.
    if q.chars().nth(MAX_QUERY_CHARS).is_some() {
        return Err(SearchError::new(
            MAX_QUERY_CHARS,
            SearchErrorKind::TooLong,
            format!("the search string is longer than the limit of {MAX_QUERY_CHARS} characters"),
        ));
    }
    let mut parser = Parser {
        chars: q.chars().collect(),
        pos: 0,
    };
    let mut conditions: Vec<Condition> = Vec::new();
    // Where the condition of each positively-named field is, so repeats join it.
    let mut positive: HashMap<Field, usize> = HashMap::new();
    let mut terms = 0usize;
    loop {
        parser.skip_whitespace();
        if parser.at_end() {
            break;
        }
        if terms == MAX_TERMS {
            return Err(SearchError::new(
                parser.pos,
                SearchErrorKind::TooManyTerms,
                format!("too many terms: the limit is {MAX_TERMS}"),
            ));
        }
        terms += 1;
        let term = parser.term()?;
        match term.kind {
            TermKind::Field if !term.negated => {
                if let Some(&index) = positive.get(&term.field) {
                    if let Some(condition) = conditions.get_mut(index) {
                        if !condition.matches.contains(&term.value) {
                            condition.matches.push(term.value);
                        }
                    }
                } else {
                    positive.insert(term.field, conditions.len());
                    conditions.push(Condition {
                        field: term.field,
                        matches: vec![term.value],
                        negated: false,
                    });
                }
            }
            _ => conditions.push(Condition {
                field: term.field,
                matches: vec![term.value],
                negated: term.negated,
            }),
        }
    }
    Ok(conditions)
}

/// Whether a term named its field (and so may join others on it) or was free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermKind {
    Field,
    FreeText,
}

/// One parsed term before it is merged into the conditions.
#[derive(Debug)]
struct Term {
    kind: TermKind,
    field: Field,
    value: Match,
    negated: bool,
}

/// A cursor over the input's characters; positions are indexes into `chars`, which is what
/// makes error positions count characters rather than bytes.
#[derive(Debug)]
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

/// Whether `c` ends a term (whitespace or the end of input).
fn ends_term(c: Option<char>) -> bool {
    c.is_none_or(char::is_whitespace)
}

/// A value as it can be shown in a message: bounded, control characters escaped, so an
/// error about a hostile value stays short and printable.
fn printable(value: &str) -> String {
    const SHOWN: usize = 64;
    let mut shown: String = value
        .chars()
        .take(SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    shown
}

/// The known field names as a comma-separated list, for messages.
fn known_fields() -> String {
    FIELD_NAMES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// Parses one term starting at a non-whitespace character.
    fn term(&mut self) -> Result<Term, SearchError> {
        let start = self.pos;
        let negated = self.peek() == Some('-');
        if negated {
            self.pos += 1;
            if ends_term(self.peek()) {
                return Err(SearchError::new(
                    start,
                    SearchErrorKind::Syntax,
                    "a lone `-`: put it directly before the term to exclude (`-service:x`), \
                     or quote it to search for it (`\"-\"`)",
                ));
            }
            if self.peek() == Some('-') {
                return Err(SearchError::new(
                    self.pos,
                    SearchErrorKind::Syntax,
                    "`--`: a term can be excluded only once; quote it to search for `-` (`\"--x\"`)",
                ));
            }
        }
        let body = self.pos;
        if self.peek() == Some('"') {
            let text = self.quoted()?;
            self.after_quote()?;
            if text.is_empty() {
                return Err(SearchError::new(
                    body,
                    SearchErrorKind::EmptyValue,
                    "an empty phrase `\"\"` would match everything; remove it",
                ));
            }
            return Ok(Term {
                kind: TermKind::FreeText,
                field: Field::Text,
                value: Match::Exact(text),
                negated,
            });
        }
        // The head: a field name if a `:` follows it, otherwise the whole bare word.
        let mut head = String::new();
        let mut first_star: Option<usize> = None;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == ':' || c == '"' {
                break;
            }
            if c == '*' && first_star.is_none() {
                first_star = Some(self.pos);
            }
            head.push(c);
            self.pos += 1;
        }
        match self.peek() {
            Some('"') => Err(SearchError::new(
                self.pos,
                SearchErrorKind::Syntax,
                "a `\"` inside a word: quotes go around a whole term or value (`\"disk full\"`, \
                 `service:\"a b\"`)",
            )),
            Some(':') => {
                let colon = self.pos;
                if head.is_empty() {
                    return Err(SearchError::new(
                        colon,
                        SearchErrorKind::Syntax,
                        "a stray `:` with no field name before it; quote text that contains `:`",
                    ));
                }
                let Some(&(_, field)) = FIELD_NAMES.iter().find(|(name, _)| *name == head) else {
                    return Err(SearchError::new(
                        body,
                        SearchErrorKind::UnknownField,
                        format!(
                            "unknown field `{}` (known fields: {}); quote the term to search for \
                             it as text",
                            printable(&head),
                            known_fields()
                        ),
                    ));
                };
                self.pos += 1;
                let value = self.field_value(field)?;
                Ok(Term {
                    kind: TermKind::Field,
                    field,
                    value,
                    negated,
                })
            }
            _ => {
                if let Some(star) = first_star {
                    return Err(SearchError::new(
                        star,
                        SearchErrorKind::MisplacedWildcard,
                        "free text takes no `*`: it already matches anywhere in the message; \
                         quote it (`\"a*b\"`) to search for a literal `*`",
                    ));
                }
                Ok(Term {
                    kind: TermKind::FreeText,
                    field: Field::Text,
                    value: Match::Exact(head),
                    negated,
                })
            }
        }
    }

    /// Parses the value after `field:`, then checks and normalises it for the field.
    fn field_value(&mut self, field: Field) -> Result<Match, SearchError> {
        let start = self.pos;
        let name = field.name();
        if ends_term(self.peek()) {
            return Err(SearchError::new(
                start,
                SearchErrorKind::EmptyValue,
                format!("`{name}:` has no value"),
            ));
        }
        let (value, star) = if self.peek() == Some('"') {
            let text = self.quoted()?;
            self.after_quote()?;
            if text.is_empty() {
                return Err(SearchError::new(
                    start,
                    SearchErrorKind::EmptyValue,
                    format!("`{name}:\"\"` has an empty value"),
                ));
            }
            (Match::Exact(text), None)
        } else {
            let mut text = String::new();
            let mut star = None;
            while let Some(c) = self.peek() {
                if c.is_whitespace() {
                    break;
                }
                match c {
                    '"' => {
                        return Err(SearchError::new(
                            self.pos,
                            SearchErrorKind::Syntax,
                            format!(
                                "a `\"` inside the value of `{name}`: quote the whole value \
                                 (`{name}:\"…\"`)"
                            ),
                        ))
                    }
                    ':' => {
                        return Err(SearchError::new(
                            self.pos,
                            SearchErrorKind::Syntax,
                            format!(
                                "a stray `:` in the value of `{name}`; quote values that \
                                 contain `:` (`{name}:\"a:b\"`)"
                            ),
                        ))
                    }
                    '*' => {
                        let at = self.pos;
                        self.pos += 1;
                        if !ends_term(self.peek()) {
                            return Err(SearchError::new(
                                at,
                                SearchErrorKind::MisplacedWildcard,
                                "`*` is only a wildcard at the end of a value (`name:user.*`); \
                                 quote the value to search for a literal `*`",
                            ));
                        }
                        star = Some(at);
                    }
                    _ => {
                        text.push(c);
                        self.pos += 1;
                    }
                }
            }
            match star {
                Some(at) if text.is_empty() => {
                    return Err(SearchError::new(
                        at,
                        SearchErrorKind::EmptyValue,
                        format!(
                            "`{name}:*` would match every value; give the start of the value \
                             before the `*`"
                        ),
                    ))
                }
                Some(at) => (Match::Prefix(text), Some(at)),
                None => (Match::Exact(text), None),
            }
        };
        let choices = match field {
            Field::Level => Some((LEVELS, true)),
            Field::Outcome => Some((OUTCOMES, true)),
            Field::Category => Some((CATEGORIES, false)),
            _ => None,
        };
        if let Some(at) = star {
            if choices.is_some() {
                return Err(SearchError::new(
                    at,
                    SearchErrorKind::MisplacedWildcard,
                    format!("`{name}` takes no `*`: its values are fixed, give one exactly"),
                ));
            }
            if field == Field::Text {
                return Err(SearchError::new(
                    at,
                    SearchErrorKind::MisplacedWildcard,
                    format!(
                        "`{name}` takes no `*`: it already matches anywhere in the message; \
                         quote the value to search for a literal `*`"
                    ),
                ));
            }
        }
        let Some((choices, upper)) = choices else {
            return Ok(value);
        };
        let raw = match &value {
            Match::Exact(text) | Match::Prefix(text) => text,
        };
        let normalised = if upper {
            raw.to_ascii_uppercase()
        } else {
            raw.to_ascii_lowercase()
        };
        if choices.contains(&normalised.as_str()) {
            Ok(Match::Exact(normalised))
        } else {
            Err(SearchError::new(
                start,
                SearchErrorKind::InvalidValue,
                format!(
                    "`{}` is not a valid {name} (expected one of {}, in any case)",
                    printable(raw),
                    choices.join(", ")
                ),
            ))
        }
    }

    /// Parses a quoted string starting at its opening `"`, returning its unescaped content.
    fn quoted(&mut self) -> Result<String, SearchError> {
        let open = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(SearchError::new(
                        open,
                        SearchErrorKind::UnterminatedQuote,
                        "this `\"` is never closed",
                    ))
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(text);
                }
                Some('\\') => {
                    let backslash = self.pos;
                    self.pos += 1;
                    match self.peek() {
                        None => {
                            return Err(SearchError::new(
                                open,
                                SearchErrorKind::UnterminatedQuote,
                                "this `\"` is never closed (the last `\\` escapes nothing)",
                            ))
                        }
                        Some(c @ ('"' | '\\')) => {
                            text.push(c);
                            self.pos += 1;
                        }
                        Some(c) => {
                            return Err(SearchError::new(
                                backslash,
                                SearchErrorKind::Syntax,
                                format!(
                                    "unknown escape `\\{}` inside quotes: only `\\\"` and `\\\\` \
                                     are escapes (write `\\\\` for a backslash)",
                                    printable(&c.to_string())
                                ),
                            ));
                        }
                    }
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Checks that a closing quote ends the term.
    fn after_quote(&self) -> Result<(), SearchError> {
        match self.peek() {
            c if ends_term(c) => Ok(()),
            Some('*') => Err(SearchError::new(
                self.pos,
                SearchErrorKind::MisplacedWildcard,
                "a `*` after a closing quote: quoted values are exact (a `*` inside quotes is \
                 literal); for a prefix leave the value unquoted (`name:user.*`)",
            )),
            _ => Err(SearchError::new(
                self.pos,
                SearchErrorKind::Syntax,
                "expected whitespace after the closing `\"`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(field: Field, values: &[&str]) -> Condition {
        Condition {
            field,
            matches: values
                .iter()
                .map(|v| Match::Exact((*v).to_owned()))
                .collect(),
            negated: false,
        }
    }

    fn not(mut condition: Condition) -> Condition {
        condition.negated = true;
        condition
    }

    fn prefix(field: Field, value: &str) -> Condition {
        Condition {
            field,
            matches: vec![Match::Prefix(value.to_owned())],
            negated: false,
        }
    }

    fn text(value: &str) -> Condition {
        exact(Field::Text, &[value])
    }

    fn err(q: &str) -> SearchError {
        match parse(q) {
            Ok(conditions) => panic!("{q:?} parsed as {conditions:?}, expected an error"),
            Err(error) => error,
        }
    }

    fn assert_err(q: &str, position: usize, kind: SearchErrorKind) -> SearchError {
        let error = err(q);
        assert_eq!(
            (error.position, error.kind),
            (position, kind),
            "{q:?}: {error}"
        );
        error
    }

    #[test]
    fn the_example_from_the_docs() {
        let parsed =
            parse(r#"level:error service:billing -name:health.* "disk full" timeout"#).unwrap();
        assert_eq!(
            parsed,
            vec![
                exact(Field::Level, &["ERROR"]),
                exact(Field::Service, &["billing"]),
                not(prefix(Field::Name, "health.")),
                text("disk full"),
                text("timeout"),
            ]
        );
    }

    #[test]
    fn empty_and_blank_inputs_have_no_conditions() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("   \t\n ").unwrap(), vec![]);
        assert_eq!(parse("\u{3000}\u{a0}").unwrap(), vec![]);
    }

    #[test]
    fn exact_prefix_and_quoted_field_values() {
        assert_eq!(
            parse("host:db1").unwrap(),
            vec![exact(Field::Host, &["db1"])]
        );
        assert_eq!(
            parse("name:user.*").unwrap(),
            vec![prefix(Field::Name, "user.")]
        );
        assert_eq!(
            parse(r#"actor:"Jane Doe""#).unwrap(),
            vec![exact(Field::Actor, &["Jane Doe"])]
        );
        // A `*` inside quotes is literal, so this is exact, not a prefix.
        assert_eq!(
            parse(r#"target:"a*b*""#).unwrap(),
            vec![exact(Field::Target, &["a*b*"])]
        );
        // Values are case-sensitive for free-form fields.
        assert_eq!(
            parse("service:Billing").unwrap(),
            vec![exact(Field::Service, &["Billing"])]
        );
        // A `-` inside or at the start of a value is data.
        assert_eq!(
            parse("job_id:-1 request_id:a-b").unwrap(),
            vec![
                exact(Field::JobId, &["-1"]),
                exact(Field::RequestId, &["a-b"])
            ]
        );
    }

    #[test]
    fn every_field_name_parses_to_its_field() {
        let valid = |field| match field {
            Field::Level => "info",
            Field::Outcome => "success",
            Field::Category => "job",
            _ => "x",
        };
        for &(name, field) in FIELD_NAMES {
            let parsed = parse(&format!("{name}:{}", valid(field))).unwrap();
            assert_eq!(parsed.len(), 1, "{name}");
            assert_eq!(parsed[0].field, field, "{name}");
        }
        assert_eq!(Field::Text.name(), "message");
        assert_eq!(parse("text:x").unwrap(), parse("message:x").unwrap());
    }

    #[test]
    fn level_outcome_and_category_are_normalised() {
        assert_eq!(
            parse("level:Warn outcome:denied category:AUDIT").unwrap(),
            vec![
                exact(Field::Level, &["WARN"]),
                exact(Field::Outcome, &["DENIED"]),
                exact(Field::Category, &["audit"]),
            ]
        );
        assert_eq!(
            parse(r#"level:"critical""#).unwrap(),
            vec![exact(Field::Level, &["CRITICAL"])]
        );
        // Repeats that normalise to the same value are kept once.
        assert_eq!(
            parse("level:error level:ERROR level:info").unwrap(),
            vec![exact(Field::Level, &["ERROR", "INFO"])]
        );
    }

    #[test]
    fn invalid_fixed_values_name_the_value_and_the_choices() {
        let error = assert_err("service:a level:fatal", 16, SearchErrorKind::InvalidValue);
        assert!(error.message.contains("`fatal`"), "{error}");
        assert!(
            error
                .message
                .contains("TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL"),
            "{error}"
        );
        let error = assert_err("outcome:ok", 8, SearchErrorKind::InvalidValue);
        assert!(
            error.message.contains("SUCCESS, FAILURE, DENIED"),
            "{error}"
        );
        let error = assert_err(r#"category:"aud it""#, 9, SearchErrorKind::InvalidValue);
        assert!(
            error
                .message
                .contains("audit, job, connection, system, session"),
            "{error}"
        );
        // No Unicode case folding: a dotless ı is not an i.
        assert_err("level:ınfo", 6, SearchErrorKind::InvalidValue);
        // A `*` inside quotes is literal, so it is simply not a level.
        assert_err(r#"level:"err*""#, 6, SearchErrorKind::InvalidValue);
    }

    #[test]
    fn fixed_fields_and_free_text_take_no_wildcard() {
        assert_err("level:err*", 9, SearchErrorKind::MisplacedWildcard);
        assert_err("outcome:SUCC*", 12, SearchErrorKind::MisplacedWildcard);
        assert_err("category:au*", 11, SearchErrorKind::MisplacedWildcard);
        assert_err("message:disk*", 12, SearchErrorKind::MisplacedWildcard);
        assert_err("x timeout*", 9, SearchErrorKind::MisplacedWildcard);
        assert_err("-*", 1, SearchErrorKind::MisplacedWildcard);
    }

    #[test]
    fn repeated_positive_fields_merge_in_order_of_first_appearance() {
        assert_eq!(
            parse("service:a host:h service:b* service:a name:n").unwrap(),
            vec![
                Condition {
                    field: Field::Service,
                    matches: vec![Match::Exact("a".into()), Match::Prefix("b".into())],
                    negated: false,
                },
                exact(Field::Host, &["h"]),
                exact(Field::Name, &["n"]),
            ]
        );
        // Aliases are the same field.
        assert_eq!(
            parse("message:a text:b").unwrap(),
            vec![exact(Field::Text, &["a", "b"])]
        );
    }

    #[test]
    fn negated_terms_are_each_their_own_condition() {
        assert_eq!(
            parse(r#"-service:a service:b -service:c -"disk full" -timeout service:d"#).unwrap(),
            vec![
                not(exact(Field::Service, &["a"])),
                exact(Field::Service, &["b", "d"]),
                not(exact(Field::Service, &["c"])),
                not(text("disk full")),
                not(text("timeout")),
            ]
        );
    }

    #[test]
    fn free_text_terms_are_each_their_own_condition() {
        assert_eq!(
            parse(r#"a "b c" a message:d"#).unwrap(),
            vec![text("a"), text("b c"), text("a"), text("d")]
        );
        // The text is kept as typed; the reader folds case.
        assert_eq!(parse("TimeOut").unwrap(), vec![text("TimeOut")]);
        // A `-` inside a word and a backslash outside quotes are data.
        assert_eq!(
            parse(r"foo-bar a\b").unwrap(),
            vec![text("foo-bar"), text(r"a\b")]
        );
    }

    #[test]
    fn escapes_inside_quotes() {
        assert_eq!(
            parse(r#""say \"hi\"" service:"a\\b" "\\""#).unwrap(),
            vec![
                text(r#"say "hi""#),
                exact(Field::Service, &[r"a\b"]),
                text(r"\"),
            ]
        );
        let error = assert_err(r#"x "a\nb""#, 4, SearchErrorKind::Syntax);
        assert!(error.message.contains(r"`\n`"), "{error}");
        // A trailing backslash escapes nothing and leaves the quote open.
        assert_err(r#"x "ab\"#, 2, SearchErrorKind::UnterminatedQuote);
        assert_err(r#"x "ab\""#, 2, SearchErrorKind::UnterminatedQuote);
    }

    #[test]
    fn unicode_positions_count_characters() {
        assert_eq!(
            parse("service:café «état» 日本").unwrap(),
            vec![
                exact(Field::Service, &["café"]),
                text("«état»"),
                text("日本")
            ]
        );
        // `日本 ` is 3 chars but 7 bytes; the unknown field starts at char 3.
        let error = assert_err("日本 sérvice:x", 3, SearchErrorKind::UnknownField);
        assert!(error.message.contains("`sérvice`"), "{error}");
        assert_err("🦀🦀 \"open", 3, SearchErrorKind::UnterminatedQuote);
        assert_err("名前:x", 0, SearchErrorKind::UnknownField);
    }

    #[test]
    fn nul_and_control_characters_are_data() {
        assert_eq!(
            parse("service:a\u{0}b \"x\u{1}\ty\" \u{7f}").unwrap(),
            vec![
                exact(Field::Service, &["a\u{0}b"]),
                text("x\u{1}\ty"),
                text("\u{7f}"),
            ]
        );
        // Messages escape them rather than echo them.
        let error = err("lev\u{0}el:x");
        assert_eq!(error.kind, SearchErrorKind::UnknownField);
        assert!(error.message.contains(r"lev\0el"), "{error}");
        assert!(!error.message.contains('\u{0}'));
    }

    #[test]
    fn unknown_field_message_and_display() {
        let error = assert_err(
            "level:error servce:billing",
            12,
            SearchErrorKind::UnknownField,
        );
        let shown = error.to_string();
        assert!(
            shown.starts_with(
                "at position 12: unknown field `servce` (known fields: category, service, host,"
            ),
            "{shown}"
        );
        assert!(shown.contains("outcome, message, text)"), "{shown}");
        // Field names are case-sensitive.
        assert_err("Level:error", 0, SearchErrorKind::UnknownField);
        // After a `-`, the field starts one later.
        assert_err("-nope:x", 1, SearchErrorKind::UnknownField);
        // A URL-ish word is read as a field; the message says to quote it.
        let error = assert_err("http://x", 0, SearchErrorKind::UnknownField);
        assert!(error.message.contains("quote the term"), "{error}");
        // A very long unknown name is truncated in the message.
        let long = "f".repeat(500);
        let error = assert_err(&format!("{long}:x"), 0, SearchErrorKind::UnknownField);
        assert!(error.message.len() < 400, "{}", error.message.len());
        assert!(error.message.contains('…'));
    }

    #[test]
    fn empty_values() {
        assert_err("service:", 8, SearchErrorKind::EmptyValue);
        assert_err("service: host:x", 8, SearchErrorKind::EmptyValue);
        assert_err(r#"a service:"""#, 10, SearchErrorKind::EmptyValue);
        assert_err(r#"a """#, 2, SearchErrorKind::EmptyValue);
        assert_err(r#"a -"""#, 3, SearchErrorKind::EmptyValue);
        assert_err("name:*", 5, SearchErrorKind::EmptyValue);
        // An empty value is reported even for a fixed field (before validating it).
        assert_err("level:", 6, SearchErrorKind::EmptyValue);
    }

    #[test]
    fn unterminated_quotes() {
        assert_err(r#""disk full"#, 0, SearchErrorKind::UnterminatedQuote);
        assert_err(r#"a service:"x y"#, 10, SearchErrorKind::UnterminatedQuote);
        assert_err(r#"-""#, 1, SearchErrorKind::UnterminatedQuote);
    }

    #[test]
    fn lone_and_double_dashes() {
        assert_err("-", 0, SearchErrorKind::Syntax);
        assert_err("a - b", 2, SearchErrorKind::Syntax);
        assert_err("a -", 2, SearchErrorKind::Syntax);
        assert_err("--x", 1, SearchErrorKind::Syntax);
        // A quoted dash is text.
        assert_eq!(parse(r#""-""#).unwrap(), vec![text("-")]);
    }

    #[test]
    fn misplaced_wildcards() {
        assert_err("name:a*b", 6, SearchErrorKind::MisplacedWildcard);
        assert_err("name:*a", 5, SearchErrorKind::MisplacedWildcard);
        assert_err("name:a**", 6, SearchErrorKind::MisplacedWildcard);
        assert_err(r#"name:"a"*"#, 8, SearchErrorKind::MisplacedWildcard);
        assert_err(r#""a b"*"#, 5, SearchErrorKind::MisplacedWildcard);
        assert_err("a*b", 1, SearchErrorKind::MisplacedWildcard);
    }

    #[test]
    fn stray_colons_and_quotes() {
        assert_err(":x", 0, SearchErrorKind::Syntax);
        assert_err("a :b", 2, SearchErrorKind::Syntax);
        assert_err("-:b", 1, SearchErrorKind::Syntax);
        assert_err("host:db:5432", 7, SearchErrorKind::Syntax);
        assert_err("service::", 8, SearchErrorKind::Syntax);
        // Quoting makes the colon data.
        assert_eq!(
            parse(r#"host:"db:5432" "12:30""#).unwrap(),
            vec![exact(Field::Host, &["db:5432"]), text("12:30")]
        );
        assert_err(r#"ab"c""#, 2, SearchErrorKind::Syntax);
        assert_err(r#"service:a"b""#, 9, SearchErrorKind::Syntax);
        assert_err(r#""a"b"#, 3, SearchErrorKind::Syntax);
        assert_err(r#""a":b"#, 3, SearchErrorKind::Syntax);
        assert_err(r#"service:"a"x"#, 11, SearchErrorKind::Syntax);
        assert_err(r#"se"rvice":x"#, 2, SearchErrorKind::Syntax);
    }

    #[test]
    fn length_limit_counts_characters() {
        let at_limit = "é".repeat(MAX_QUERY_CHARS);
        assert_eq!(parse(&at_limit).unwrap(), vec![text(&at_limit)]);
        let error = assert_err(
            &"é".repeat(MAX_QUERY_CHARS + 1),
            MAX_QUERY_CHARS,
            SearchErrorKind::TooLong,
        );
        assert!(error.message.contains("2000"), "{error}");
        assert_err(
            &" ".repeat(1_000_000),
            MAX_QUERY_CHARS,
            SearchErrorKind::TooLong,
        );
    }

    #[test]
    fn term_limit() {
        let at_limit = vec!["ab"; MAX_TERMS].join(" ");
        assert_eq!(parse(&at_limit).unwrap().len(), MAX_TERMS);
        // Merged terms still count: 64 `service:` terms give one condition, a 65th is too many.
        let services = vec!["service:a"; MAX_TERMS].join(" ");
        assert_eq!(parse(&services).unwrap().len(), 1);
        let over = format!("{at_limit}  cd");
        let error = assert_err(&over, 3 * MAX_TERMS + 1, SearchErrorKind::TooManyTerms);
        assert!(error.message.contains("64"), "{error}");
        // Trailing whitespace after the last allowed term is fine.
        assert_eq!(parse(&format!("{at_limit}   ")).unwrap().len(), MAX_TERMS);
    }

    #[test]
    fn kinds_have_stable_names() {
        let kinds = [
            SearchErrorKind::UnknownField,
            SearchErrorKind::EmptyValue,
            SearchErrorKind::UnterminatedQuote,
            SearchErrorKind::MisplacedWildcard,
            SearchErrorKind::InvalidValue,
            SearchErrorKind::TooLong,
            SearchErrorKind::TooManyTerms,
            SearchErrorKind::Syntax,
        ];
        let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "unknown_field",
                "empty_value",
                "unterminated_quote",
                "misplaced_wildcard",
                "invalid_value",
                "too_long",
                "too_many_terms",
                "syntax"
            ]
        );
    }

    /// A tiny xorshift64 so the property test needs no dependency and is reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_inputs_never_panic_and_errors_are_in_range() {
        let alphabet: Vec<char> = "abcdeilnorstvx:*\"\\- \té\u{0}日".chars().collect();
        let words = [
            "service:", "level:", "name:", "message:", "error", "info", "-", "\"",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut ok = 0;
        for _ in 0..5_000 {
            let mut q = String::new();
            for _ in 0..rng.below(24) {
                if rng.below(4) == 0 {
                    q.push_str(words[rng.below(words.len())]);
                } else {
                    q.push(alphabet[rng.below(alphabet.len())]);
                }
            }
            let len = q.chars().count();
            match parse(&q) {
                Ok(conditions) => {
                    ok += 1;
                    assert!(conditions.len() <= MAX_TERMS, "{q:?}");
                    for condition in &conditions {
                        assert!(!condition.matches.is_empty(), "{q:?}");
                        for m in &condition.matches {
                            let (Match::Exact(v) | Match::Prefix(v)) = m;
                            assert!(!v.is_empty(), "{q:?} gave an empty value");
                            if condition.field == Field::Text {
                                assert!(matches!(m, Match::Exact(_)), "{q:?}");
                            }
                        }
                    }
                }
                Err(error) => {
                    assert!(error.position <= len, "{q:?}: {error}");
                    assert!(!error.message.is_empty());
                    assert!(error.to_string().starts_with("at position "));
                }
            }
        }
        // The generator must exercise both paths to mean anything.
        assert!(ok > 100 && ok < 4_900, "{ok} of 5000 parsed");
    }
}
