//! Packing protobuf messages into `google.protobuf.Any` and back.
//!
//! Cloudstate carries every command, reply, event and snapshot as an `Any`
//! whose type URL is `type.googleapis.com/<full message name>` (see the
//! protocol files in `schemas/proto/cloudstate/`). These helpers build and
//! check those URLs from [`prost::Name`], which `statehouse-schemas`
//! implements for every generated message (and prost for `()`, i.e.
//! `google.protobuf.Empty`).
//!
//! ```
//! use statehouse_schemas::shoppingcart::persistence::ItemRemoved;
//! use statehouse_sdk::any;
//!
//! let event = any::pack(&ItemRemoved { product_id: "apple".into() });
//! assert_eq!(event.type_url, "type.googleapis.com/com.example.shoppingcart.persistence.ItemRemoved");
//! assert!(any::is::<ItemRemoved>(&event));
//! assert_eq!(any::unpack::<ItemRemoved>(&event)?.product_id, "apple");
//! # Ok::<(), any::Error>(())
//! ```

use prost::Name;
use prost_types::Any;

/// The type URL prefix of protobuf messages.
pub const TYPE_URL_PREFIX: &str = statehouse_schemas::protocol::PROTOBUF_TYPE_URL_PREFIX;

/// Why an `Any` could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `Any` holds another message type.
    #[error("expected a {expected}, got type URL '{type_url}'")]
    UnexpectedType {
        /// The full name of the expected message.
        expected: String,
        /// The type URL found.
        type_url: String,
    },
    /// The type matched but the bytes are not a valid message of that type.
    #[error("cannot decode a {type_name}: {source}")]
    Decode {
        /// The full name of the message.
        type_name: String,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
}

impl Error {
    /// An error for an `Any` whose type no handler expects, e.g. an unknown
    /// event in [`Entity::apply`](crate::eventsourced::Entity::apply).
    pub fn unknown_type(any: &Any) -> Self {
        Self::UnexpectedType {
            expected: "known message type".to_owned(),
            type_url: any.type_url.clone(),
        }
    }
}

/// The type URL of `M`: `type.googleapis.com/<full name>`.
///
/// Built from [`Name::full_name`], so it is right even for messages generated
/// without a type URL domain.
pub fn type_url<M: Name>() -> String {
    format!("{TYPE_URL_PREFIX}{}", M::full_name())
}

/// Packs a message into an `Any` with the `type.googleapis.com/` URL.
pub fn pack<M: Name>(message: &M) -> Any {
    Any {
        type_url: type_url::<M>(),
        value: message.encode_to_vec(),
    }
}

/// The full message name of an `Any`: its type URL after the last `/`.
pub fn type_name(any: &Any) -> &str {
    any.type_url
        .rsplit_once('/')
        .map_or(any.type_url.as_str(), |(_, name)| name)
}

/// Whether `any` holds an `M` (any URL host is accepted, as for `Any` in general).
pub fn is<M: Name>(any: &Any) -> bool {
    type_name(any) == M::full_name()
}

/// Unpacks an `M`, checking the type URL first.
pub fn unpack<M: Name + Default>(any: &Any) -> Result<M, Error> {
    if !is::<M>(any) {
        return Err(Error::UnexpectedType {
            expected: M::full_name(),
            type_url: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| Error::Decode {
        type_name: M::full_name(),
        source,
    })
}

/// Unpacks an `M` if `any` holds one: `Ok(None)` for another type, an error
/// only if the type matches but the bytes do not decode.
pub fn unpack_if<M: Name + Default>(any: &Any) -> Result<Option<M>, Error> {
    if is::<M>(any) {
        unpack(any).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use statehouse_schemas::shoppingcart::{AddLineItem, Cart};

    use super::*;

    #[test]
    fn round_trips_and_rejects_other_types() {
        let add = AddLineItem {
            user_id: "u".into(),
            product_id: "p".into(),
            name: "Pear".into(),
            quantity: 2,
        };
        let packed = pack(&add);
        assert_eq!(
            packed.type_url,
            "type.googleapis.com/com.example.shoppingcart.AddLineItem"
        );
        assert_eq!(type_name(&packed), "com.example.shoppingcart.AddLineItem");
        assert_eq!(unpack::<AddLineItem>(&packed).ok(), Some(add.clone()));
        assert!(matches!(unpack_if::<Cart>(&packed), Ok(None)));
        assert!(matches!(
            unpack::<Cart>(&packed),
            Err(Error::UnexpectedType { .. })
        ));

        // Another host is still the same type; garbage bytes are a decode error.
        let foreign = Any {
            type_url: "example.org/com.example.shoppingcart.AddLineItem".into(),
            value: vec![0xff],
        };
        assert!(is::<AddLineItem>(&foreign));
        assert!(matches!(
            unpack::<AddLineItem>(&foreign),
            Err(Error::Decode { .. })
        ));

        let empty = pack(&());
        assert_eq!(empty.type_url, "type.googleapis.com/google.protobuf.Empty");
        assert!(empty.value.is_empty());
    }
}
