//! Entry points for the fuzz targets (`fuzz/`, `docs/fuzzing.md`); not an API.
//!
//! [`entity_key`] runs a request through the entity-key extraction the gateway and the
//! processors route with, and checks it against the slow path: the wire scan of the key fields
//! must give the id a full decode gives. It panics only when that breaks; errors are answers.

use prost_reflect::DynamicMessage;

use crate::method_index::MethodIndex;

/// Entity-key extraction. Input: one byte picking a keyed method of `index` (sorted by path),
/// then the encoded request message.
///
/// Checks: whenever the request decodes as the method's input type, [`MethodInfo::entity_id`]
/// (wire scan, full decode only as a fallback) gives exactly the id of the decoded message's
/// key fields, or the same error; an id is never empty.
///
/// [`MethodInfo::entity_id`]: crate::method_index::MethodInfo::entity_id
pub fn entity_key(index: &MethodIndex, data: &[u8]) {
    let Some((&selector, request)) = data.split_first() else {
        return;
    };
    let mut methods: Vec<_> = index
        .methods()
        .filter(|m| !m.key_fields.is_empty())
        .collect();
    if methods.is_empty() {
        return;
    }
    methods.sort_by(|a, b| a.path.cmp(&b.path));
    let method = methods[usize::from(selector) % methods.len()];
    let scanned = method.entity_id(request);
    if let Ok(id) = &scanned {
        assert!(!id.is_empty(), "an entity id is never empty");
    }
    if DynamicMessage::decode(method.input.clone(), request).is_ok() {
        let decoded = method
            .decoded_key_values(request)
            .and_then(|values| method.id_of(&values));
        match (&scanned, &decoded) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the wire scan and a full decode agree"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("the wire scan gave {scanned:?}, a full decode {decoded:?}"),
        }
    }
}
