//! Transcoding of the shopping cart's HTTP rules, exactly as the Cloudstate samples call them.

use prost::Message;
use statehouse_schemas::avro::{Entity, ServiceRecord};
use statehouse_schemas::shoppingcart::{
    AddLineItem, Cart, GetShoppingCart, LineItem, RemoveLineItem,
};
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};

use super::*;
use statehouse_runtime::router::Registry;

fn table() -> Table {
    let registry = Registry::new();
    registry
        .apply_service(ServiceRecord {
            service: "shopping-cart".into(),
            descriptor_set: Bytes::from_static(FILE_DESCRIPTOR_SET),
            entities: vec![
                Entity {
                    entity_type: protocol::EVENT_SOURCED.into(),
                    service_name: "com.example.shoppingcart.ShoppingCart".into(),
                    persistence_id: "shopping-cart".into(),
                    passivation_timeout_ms: None,
                },
                Entity {
                    entity_type: protocol::ACTION.into(),
                    service_name: "cloudstate.EntityDiscovery".into(),
                    persistence_id: String::new(),
                    passivation_timeout_ms: None,
                },
            ],
            processors: vec![],
            protocol_major: 0,
            protocol_minor: 2,
            support_library_name: "test".into(),
            support_library_version: "0".into(),
            updated_at_ms: 0,
        })
        .unwrap();
    Table::build(&registry.routes())
}

fn request(table: &Table, method: Method, uri: &str, body: &str) -> Result<(String, Bytes), Error> {
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let (binding, vars) = table.find(&method, path).ok_or_else(|| Error::NoRoute {
        method: method.to_string(),
        path: path.into(),
    })?;
    let message = request_message(binding, vars?, query, body.as_bytes())?;
    Ok((binding.route.method.path.clone(), message))
}

#[test]
fn shopping_cart_requests_become_messages() {
    let table = table();
    let (path, bytes) = request(
        &table,
        Method::POST,
        "/cart/u1/items/add",
        r#"{"productId":"p","name":"n","quantity":2}"#,
    )
    .unwrap();
    assert_eq!(path, "/com.example.shoppingcart.ShoppingCart/AddItem");
    let expected = AddLineItem {
        user_id: "u1".into(),
        product_id: "p".into(),
        name: "n".into(),
        quantity: 2,
    };
    assert_eq!(AddLineItem::decode(bytes.clone()).unwrap(), expected);
    assert_eq!(bytes, expected.encode_to_vec(), "byte-exact");

    // Proto names in the body work too; the path variable wins over the body.
    let (_, bytes) = request(
        &table,
        Method::POST,
        "/cart/u1/items/add",
        r#"{"user_id":"other","product_id":"p","quantity":"3"}"#,
    )
    .unwrap();
    let decoded = AddLineItem::decode(bytes).unwrap();
    assert_eq!((decoded.user_id.as_str(), decoded.quantity), ("u1", 3));

    let (path, bytes) = request(&table, Method::GET, "/carts/u1", "").unwrap();
    assert_eq!(path, "/com.example.shoppingcart.ShoppingCart/GetCart");
    assert_eq!(GetShoppingCart::decode(bytes).unwrap().user_id, "u1");

    // body "": path variables and query parameters.
    let (path, bytes) = request(&table, Method::POST, "/cart/u%201/items/p1/remove", "").unwrap();
    assert_eq!(path, "/com.example.shoppingcart.ShoppingCart/RemoveItem");
    assert_eq!(
        RemoveLineItem::decode(bytes).unwrap(),
        RemoveLineItem {
            user_id: "u 1".into(),
            product_id: "p1".into()
        }
    );
    let (_, bytes) = request(&table, Method::GET, "/carts/u1?user_id=u2", "").unwrap();
    assert_eq!(
        GetShoppingCart::decode(bytes).unwrap().user_id,
        "u1",
        "path beats query"
    );

    // The default rule of a method without google.api.http.
    let (path, _) = request(
        &table,
        Method::POST,
        "/cloudstate.EntityDiscovery/reportError",
        r#"{"message":"x"}"#,
    )
    .unwrap();
    assert_eq!(path, "/cloudstate.EntityDiscovery/reportError");

    // Wrong verb or path: no binding.
    assert!(matches!(
        request(&table, Method::DELETE, "/carts/u1", ""),
        Err(Error::NoRoute { .. })
    ));
    assert!(matches!(
        request(&table, Method::GET, "/carts/u1/x/y", ""),
        Err(Error::NoRoute { .. })
    ));
}

#[test]
fn malformed_requests_are_named() {
    let table = table();
    let err = request(&table, Method::POST, "/cart/u1/items/add", "{not json").unwrap_err();
    assert!(matches!(err, Error::MalformedRequest(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("Malformed request: invalid JSON body"),
        "{err}"
    );
    let err = request(
        &table,
        Method::POST,
        "/cart/u1/items/add",
        r#"{"colour":"red"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
    let err = request(
        &table,
        Method::POST,
        "/cart/u1/items/add",
        r#"{"quantity":"many"}"#,
    )
    .unwrap_err();
    assert!(matches!(err, Error::MalformedRequest(_)), "{err}");
    let err = request(&table, Method::POST, "/cart/u1/items/add", "[1]").unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    let err = request(&table, Method::GET, "/carts/u1?colour=red", "").unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

fn reply(table: &Table, uri: &str, message: &impl Message) -> String {
    let (binding, _) = table.find(&Method::GET, uri).unwrap();
    let (content_type, body) = response_body(binding, &message.encode_to_vec()).unwrap();
    assert_eq!(content_type, "application/json");
    String::from_utf8(body.to_vec()).unwrap()
}

#[test]
fn replies_print_as_compact_proto3_json_with_defaults() {
    let table = table();
    let cart = Cart {
        items: vec![
            LineItem {
                product_id: "p".into(),
                name: "n".into(),
                quantity: 2,
            },
            LineItem::default(),
        ],
    };
    assert_eq!(
        reply(&table, "/carts/u1", &cart),
        r#"{"items":[{"productId":"p","name":"n","quantity":2},{"productId":"","name":"","quantity":0}]}"#
    );
    assert_eq!(
        reply(&table, "/carts/u1/items", &cart),
        r#"[{"productId":"p","name":"n","quantity":2},{"productId":"","name":"","quantity":0}]"#
    );
    assert_eq!(
        reply(&table, "/carts/u1", &Cart::default()),
        r#"{"items":[]}"#
    );
    assert_eq!(reply(&table, "/carts/u1/items", &Cart::default()), "[]");

    let (binding, _) = table.find(&Method::GET, "/carts/u1").unwrap();
    let err = response_body(binding, b"\xff\xff").unwrap_err();
    assert!(matches!(err, Error::BadReply { .. }), "{err}");

    // 64-bit integers print as strings.
    let pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let command = pool
        .get_message_by_name("cloudstate.StreamCancelled")
        .unwrap();
    let mut message = DynamicMessage::new(command);
    message.set_field_by_name("id", ProtoValue::I64(5));
    assert_eq!(
        String::from_utf8(print_message(&message).unwrap()).unwrap(),
        r#"{"entityId":"","id":"5"}"#
    );
}
