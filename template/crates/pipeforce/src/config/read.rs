//! How a concern reads its variables: [`variables!`] declares them (each named once), envy
//! fills them from the [`Environment`], and a [`Checker`] collects every problem instead of
//! stopping at the first.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fmt::Display,
    ops::RangeInclusive,
    str::FromStr,
    time::Duration,
};

use serde::de::DeserializeOwned;
use url::Url;

use super::{ConfigError, Found, Problem, masked};

/// Declares the variables one concern reads: `struct Vars in "PREFIX_" { name, .. }` reads
/// `PREFIX_NAME`, .. with envy into fields of type [`Var`], which keep their full name for
/// error messages. The identifier is the only place a variable is named.
macro_rules! variables {
    ($(#[$meta:meta])* struct $vars:ident in $prefix:literal { $($field:ident),+ $(,)? }) => {
        $(#[$meta])*
        struct $vars {
            $($field: $crate::config::read::Var,)+
        }

        impl $vars {
            fn read(
                env: &$crate::config::read::Environment,
                check: &mut $crate::config::read::Checker,
            ) -> Self {
                #[derive(Default, serde::Deserialize)]
                struct Raw {
                    $($field: Option<String>,)+
                }
                let names = [$($crate::config::read::Var::name_of($prefix, stringify!($field)),)+];
                let raw: Raw = env.read($prefix, &names, check);
                let [$($field),+] = names;
                Self {
                    $($field: $crate::config::read::Var::new($field, raw.$field),)+
                }
            }
        }
    };
}
pub(super) use variables;

/// The process environment as text. Values that are not UTF-8 are remembered by name and
/// reported only when a concern reads that variable: other programs' variables may hold
/// anything.
#[derive(Default)]
pub(super) struct Environment {
    text: BTreeMap<String, String>,
    not_utf8: BTreeSet<String>,
}

impl Environment {
    /// Takes the variables as given; when a name repeats, the last value wins.
    pub(super) fn new<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut env = Self::default();
        for (key, value) in vars {
            let Some(key) = key.as_ref().to_str() else {
                continue;
            };
            match value.as_ref().to_str() {
                Some(value) => {
                    env.not_utf8.remove(key);
                    env.text.insert(key.to_owned(), value.to_owned());
                }
                None => {
                    env.text.remove(key);
                    env.not_utf8.insert(key.to_owned());
                }
            }
        }
        env
    }

    /// Fills `T` with envy from exactly the variables `names` (each starts with `prefix`), so
    /// names are matched as written, like OpenTelemetry's SDK matches them.
    pub(super) fn read<T: DeserializeOwned + Default>(
        &self,
        prefix: &str,
        names: &[String],
        check: &mut Checker,
    ) -> T {
        for name in names.iter().filter(|name| self.not_utf8.contains(*name)) {
            check.report(name, "valid UTF-8 text", Found::NotUtf8);
        }
        let named = self
            .text
            .iter()
            .filter(|(key, _)| names.contains(key))
            .map(|(key, value)| (key.clone(), value.clone()));
        envy::prefixed(prefix)
            .from_iter(named)
            .unwrap_or_else(|error| {
                check.report(&format!("{prefix}*"), &error.to_string(), Found::Unreadable);
                T::default()
            })
    }
}

/// One variable: its full name and its value as the environment holds it.
pub(super) struct Var {
    name: String,
    value: Option<String>,
}

impl Var {
    /// `PREFIX_FIELD` for a field `field` of a [`variables!`] struct.
    pub(super) fn name_of(prefix: &str, field: &str) -> String {
        format!("{prefix}{}", field.to_ascii_uppercase())
    }

    pub(super) fn new(name: String, value: Option<String>) -> Self {
        Self { name, value }
    }

    /// The variable's full name, for messages about its value.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the variable is set and not blank.
    pub(super) fn is_set(&self) -> bool {
        self.value
            .as_deref()
            .is_some_and(|value| !value.trim().is_empty())
    }

    /// The value if it is set and not blank: how an optional variable is read.
    pub(super) fn optional(&self) -> Option<String> {
        self.value.clone().filter(|value| !value.trim().is_empty())
    }
}

/// Collects every problem instead of stopping at the first.
#[derive(Default)]
pub(super) struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn report(&mut self, variable: &str, expected: &str, found: Found) {
        // Any value may hold a URL with a password pasted into it.
        let found = match found {
            Found::Value(value) => Found::Value(masked(&value)),
            other => other,
        };
        self.problems.push(Problem {
            variable: variable.to_owned(),
            expected: expected.to_owned(),
            found,
        });
    }

    /// A text variable with a default: unset means the default, blank is an error.
    pub(super) fn text(&mut self, var: &Var, default: &str) -> String {
        match var.value.clone() {
            None => default.to_owned(),
            Some(value) if value.trim().is_empty() => {
                self.report(&var.name, "a non-empty value", Found::Empty);
                default.to_owned()
            }
            Some(value) => value,
        }
    }

    /// Like [`Checker::text`], but the value is never shown in an error, and only an empty
    /// value is one (a password may be blanks).
    pub(super) fn secret_text(&mut self, var: &Var, default: &str) -> String {
        match var.value.clone() {
            Some(value) if value.is_empty() => {
                self.report(&var.name, "a non-empty value", Found::Empty);
                default.to_owned()
            }
            Some(value) => value,
            None => default.to_owned(),
        }
    }

    /// A typed variable with a default: unset means the default, anything `parse` rejects
    /// (including an empty value) is an error.
    pub(super) fn parse_with<T>(
        &mut self,
        var: &Var,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> T {
        let Some(value) = var.value.clone() else {
            return default;
        };
        if value.is_empty() {
            self.report(&var.name, expected, Found::Empty);
            return default;
        }
        parse(&value).unwrap_or_else(|| {
            self.report(&var.name, expected, Found::Value(value));
            default
        })
    }

    /// [`Checker::parse_with`] with the type's [`FromStr`].
    pub(super) fn parse<T: FromStr>(&mut self, var: &Var, default: T, expected: &str) -> T {
        self.parse_with(var, default, expected, |value| value.parse().ok())
    }

    /// A whole number within `range`.
    pub(super) fn number<T>(&mut self, var: &Var, default: T, range: RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + Display,
    {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        self.parse_with(var, default, &expected, |value| {
            value.parse().ok().filter(|n| range.contains(n))
        })
    }

    /// A whole number of seconds within `range`, as a [`Duration`].
    pub(super) fn seconds(
        &mut self,
        var: &Var,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Duration {
        self.duration(var, default, range, "seconds", Duration::from_secs)
    }

    /// A whole number of milliseconds within `range`, as a [`Duration`].
    pub(super) fn millis(
        &mut self,
        var: &Var,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Duration {
        self.duration(var, default, range, "milliseconds", Duration::from_millis)
    }

    fn duration(
        &mut self,
        var: &Var,
        default: u64,
        range: RangeInclusive<u64>,
        unit: &str,
        from: fn(u64) -> Duration,
    ) -> Duration {
        let expected = format!(
            "a whole number of {unit} from {} to {}",
            range.start(),
            range.end()
        );
        let number = self.parse_with(var, default, &expected, |value| {
            value.parse().ok().filter(|n| range.contains(n))
        });
        from(number)
    }

    /// One of the named `choices`; the error lists their names.
    pub(super) fn choice<T: Copy>(&mut self, var: &Var, default: T, choices: &[(&str, T)]) -> T {
        self.parse_with(var, default, &one_of(choices), |value| find(choices, value))
    }

    /// Like [`Checker::choice`] for an optional variable: blank counts as unset.
    pub(super) fn optional_choice<T: Copy>(
        &mut self,
        var: &Var,
        choices: &[(&str, T)],
    ) -> Option<T> {
        self.optional(var, |value| {
            find(choices, value).ok_or_else(|| one_of(choices))
        })
    }

    /// An optional variable (blank counts as unset) checked by `parse`, whose error says what
    /// was expected.
    pub(super) fn optional<T, E: Display>(
        &mut self,
        var: &Var,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let value = var.optional()?;
        parse(&value)
            .map_err(|expected| self.report(&var.name, &expected.to_string(), Found::Value(value)))
            .ok()
    }

    /// Like [`Checker::optional`] for a secret: the error never shows the value.
    pub(super) fn optional_secret<T, E: Display>(
        &mut self,
        var: &Var,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let value = var.optional()?;
        parse(&value)
            .map_err(|expected| self.report(&var.name, &expected.to_string(), Found::Hidden))
            .ok()
    }

    /// An optional absolute `http` or `https` URL.
    pub(super) fn http_url(&mut self, var: &Var) -> Option<Url> {
        self.optional(var, |value| match Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
            _ => Err("an http:// or https:// URL, e.g. https://hub-acme.pipeforce.net"),
        })
    }

    pub(super) fn finish<T>(self, config: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// `a, b or c`: what a variable with these choices expects.
fn one_of<T>(choices: &[(&str, T)]) -> String {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, others)) => format!("{} or {last}", others.join(", ")),
        None => String::new(),
    }
}

fn find<T: Copy>(choices: &[(&str, T)], value: &str) -> Option<T> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
}

/// The message for a port variable.
pub(super) const PORT: &str = "a port number from 1 to 65535";

/// A port a client connects to: 1 to 65535.
pub(super) fn port(value: &str) -> Option<u16> {
    value.parse().ok().filter(|port| *port != 0)
}
