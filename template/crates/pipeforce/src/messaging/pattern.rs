//! Routing-key patterns with RabbitMQ's topic-exchange semantics.
//!
//! A routing key is a list of words separated by `.`. In a pattern, `*` stands for exactly one
//! word and `#` for zero or more words; every other word matches itself. A key matches a
//! pattern exactly when RabbitMQ's topic exchange would route it through a binding with that
//! pattern (the template's suite checks this against a real broker).
//!
//! Patterns are stricter than RabbitMQ: what it accepts but is almost surely a typo (an empty
//! word, a wildcard inside a word, whitespace) is rejected, at compile time by `#[event]`.
//!
//! This file is also compiled into the `pipeforce-macros` crate (`#[path]`), so that the macro
//! and the runtime apply the same rules: it must not depend on anything outside `std`.

use std::fmt;

/// The longest pattern or routing key AMQP allows (a short string).
pub const MAX_LEN: usize = 255;

/// A validated routing-key pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Word {
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
    Literal(String),
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    Empty,
    TooLong(usize),
    EmptyWord,
    WildcardInsideWord(String),
    InvalidCharacter(char),
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => {
                f.write_str("a pattern must not be empty (use \"#\" to match every key)")
            }
            Self::TooLong(len) => write!(
                f,
                "a pattern has at most {MAX_LEN} bytes, this one has {len}"
            ),
            Self::EmptyWord => f.write_str(
                "words are separated by single dots, with no dot at the start or end \
                 (e.g. \"orders.created\")",
            ),
            Self::WildcardInsideWord(word) => write!(
                f,
                "`*` and `#` must stand alone between dots, not inside the word {word:?} \
                 (e.g. \"orders.*\" or \"orders.#\")"
            ),
            Self::InvalidCharacter(c) => write!(
                f,
                "{c:?} is not allowed: use printable ASCII without spaces (e.g. \"orders.created\")"
            ),
        }
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Parses `text`, rejecting what RabbitMQ would accept but is almost surely a mistake.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_LEN {
            return Err(PatternError::TooLong(text.len()));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(PatternError::InvalidCharacter(c));
        }
        let words = text
            .split('.')
            .map(|word| match word {
                "" => Err(PatternError::EmptyWord),
                "*" => Ok(Word::One),
                "#" => Ok(Word::Any),
                word if word.contains(['*', '#']) => {
                    Err(PatternError::WildcardInsideWord(word.to_owned()))
                }
                word => Ok(Word::Literal(word.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            words,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether RabbitMQ would route a message with `routing_key` through a binding with this
    /// pattern. Any routing key is accepted, including ones a pattern could not spell.
    pub fn matches(&self, routing_key: &str) -> bool {
        // RabbitMQ reads the empty key as no words at all, so only `#` matches it.
        let key: Vec<&str> = if routing_key.is_empty() {
            Vec::new()
        } else {
            routing_key.split('.').collect()
        };
        // matched[j]: the pattern words seen so far can match the first j key words.
        let mut matched = vec![false; key.len() + 1];
        matched[0] = true;
        for word in &self.words {
            match word {
                Word::Any => {
                    // zero or more words: reachable from any earlier reachable position
                    for j in 1..=key.len() {
                        matched[j] = matched[j] || matched[j - 1];
                    }
                }
                Word::One | Word::Literal(_) => {
                    for j in (1..=key.len()).rev() {
                        let fits = match word {
                            Word::Literal(literal) => literal == key[j - 1],
                            _ => true,
                        };
                        matched[j] = matched[j - 1] && fits;
                    }
                    matched[0] = false;
                }
            }
        }
        matched[key.len()]
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(key)
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("*.b.*", "a.b.c"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(matches("a.#", "a"));
        assert!(matches("a.#", "a.b"));
        assert!(matches("a.#", "a.b.c"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("#.c", "c"));
        assert!(matches("a.#.c", "a.c"));
        assert!(matches("a.#.c", "a.b.b.c"));
        assert!(!matches("a.#.c", "a.b.d"));
        assert!(matches("#.#", "a"));
    }

    #[test]
    fn literals_match_only_themselves() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.bb"));
        assert!(!matches("a.b", "A.b"));
    }

    #[test]
    fn malformed_patterns_are_rejected_with_their_rule() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a..b"), Err(PatternError::EmptyWord));
        assert_eq!(Pattern::parse(".a"), Err(PatternError::EmptyWord));
        assert_eq!(Pattern::parse("a."), Err(PatternError::EmptyWord));
        assert_eq!(
            Pattern::parse("a.b*"),
            Err(PatternError::WildcardInsideWord("b*".to_owned()))
        );
        assert_eq!(
            Pattern::parse("a b"),
            Err(PatternError::InvalidCharacter(' '))
        );
        assert_eq!(
            Pattern::parse(&"a".repeat(256)),
            Err(PatternError::TooLong(256))
        );
    }
}
