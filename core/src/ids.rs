//! Validated identifiers: service names, entity ids and journal record keys.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted entity id, in bytes (an explicit limit).
pub const MAX_ENTITY_ID_LEN: usize = 1024;
/// Longest accepted service name, in bytes (it becomes part of Kafka topic names, limit 249).
pub const MAX_SERVICE_NAME_LEN: usize = 200;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "service name {name:?} contains {bad:?}; use ASCII letters, digits, '.', '_' and '-' (it becomes part of Kafka topic names)"
    )]
    BadServiceChar { name: String, bad: char },
    #[error("entity id contains a control character at byte {at}")]
    ControlChar { at: usize },
    #[error("journal key {key:?} is not `<entity_id>#<seq>`")]
    BadJournalKey { key: String },
}

/// A service name: the unit of deployment, part of every topic name of the service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::Empty {
                what: "service name",
            });
        }
        if name.len() > MAX_SERVICE_NAME_LEN {
            return Err(Error::TooLong {
                what: "service name",
                len: name.len(),
                max: MAX_SERVICE_NAME_LEN,
            });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(Error::BadServiceChar { name, bad });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ServiceName> for String {
    fn from(value: ServiceName) -> Self {
        value.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An entity id: any non-empty UTF-8 string without control characters, bounded in length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(String);

impl EntityId {
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::Empty { what: "entity id" });
        }
        if id.len() > MAX_ENTITY_ID_LEN {
            return Err(Error::TooLong {
                what: "entity id",
                len: id.len(),
                max: MAX_ENTITY_ID_LEN,
            });
        }
        if let Some((at, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(Error::ControlChar { at });
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The storage key of an entity: its persistence id (the entity type) and id,
/// `<persistence_id>|<entity_id>`, so two entity types of one service never share a history.
/// Used for the journal keys and the Cassandra rows.
pub fn entity_key(persistence_id: &str, entity_id: &str) -> String {
    format!("{persistence_id}|{entity_id}")
}

/// The key of an entity's event number `seq` in the journal topic: `<entity_key>#<seq>`.
/// Unique per event, so a compacted journal never drops an event.
pub fn journal_key(entity_key: &str, seq: u64) -> String {
    format!("{entity_key}#{seq}")
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Split a journal key `<entity_key>#<seq>` at its last `#` (entity ids may contain `#`).
pub fn parse_journal_key(key: &str) -> Result<(&str, u64), Error> {
    let bad = || Error::BadJournalKey {
        key: key.chars().take(200).collect(),
    };
    let (entity, seq) = key.rsplit_once('#').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    if entity.is_empty() || seq == 0 {
        return Err(bad());
    }
    Ok((entity, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_topic_safe() {
        assert!(ServiceName::new("shopping-cart.v1_a").is_ok());
        assert_eq!(
            ServiceName::new("").unwrap_err(),
            Error::Empty {
                what: "service name"
            }
        );
        assert!(matches!(
            ServiceName::new("a/b"),
            Err(Error::BadServiceChar { bad: '/', .. })
        ));
        assert!(matches!(
            ServiceName::new("x".repeat(MAX_SERVICE_NAME_LEN + 1)),
            Err(Error::TooLong { .. })
        ));
        let parsed: ServiceName = serde_json::from_str("\"cart\"").unwrap();
        assert_eq!(parsed.as_str(), "cart");
        assert!(serde_json::from_str::<ServiceName>("\"a b\"").is_err());
    }

    #[test]
    fn entity_ids_and_journal_keys_round_trip() {
        let id = EntityId::new("user#42").unwrap();
        let entity = entity_key("cart", id.as_str());
        assert_eq!(entity, "cart|user#42");
        let key = journal_key(&entity, 17);
        assert_eq!(key, "cart|user#42#17");
        assert_eq!(parse_journal_key(&key).unwrap(), ("cart|user#42", 17));
        assert!(parse_journal_key("nohash").is_err());
        assert!(parse_journal_key("a#0").is_err());
        assert!(parse_journal_key("#3").is_err());
        assert!(parse_journal_key("a#x").is_err());
        assert!(matches!(
            EntityId::new("a\nb"),
            Err(Error::ControlChar { at: 1 })
        ));
        assert!(EntityId::new("").is_err());
        assert!(EntityId::new("é".repeat(600)).is_err());
    }
}
