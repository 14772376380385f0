//! Enums whose values travel as text: the Avro enum symbols (`INFO`, `RUNNING`, `SUCCESS`,
//! `CONNECT`), which are also what ClickHouse columns and logs show.
//!
//! `symbols!` declares such an enum from one table, `Variant = "TEXT"`: serde's rename,
//! `as_str`, `ALL` and `FromStr` all come from that line. Other crates call `as_str` and
//! `parse` rather than keeping their own tables, which would drift from the schema.

/// A text that names no value of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{text}` (expected one of {expected})")]
pub struct UnknownSymbol {
    /// The enum, e.g. `level`.
    pub kind: &'static str,
    pub text: String,
    /// Every accepted text, comma separated.
    pub expected: String,
}

/// See the module docs. The caller writes the derives (they must include serde's), the macro
/// adds the per-variant `#[serde(rename)]` and the `impl`s.
macro_rules! symbols {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $( $(#[$variant_meta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in the order of the Avro enum's symbols.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text this value travels as: its Avro symbol.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::symbols::UnknownSymbol;

            /// The inverse of `as_str`: exact, case-sensitive match on the Avro symbol.
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| $crate::symbols::UnknownSymbol {
                        kind: $kind,
                        text: text.to_owned(),
                        expected: Self::ALL
                            .iter()
                            .map(|value| value.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

pub(crate) use symbols;
