//! Tests of the method index: the shopping cart as shipped, hand-built sets for the legacy and
//! multi-key cases, and every validation error.

use std::collections::{HashMap, HashSet};

use prost::Message;
use protox::file::{ChainFileResolver, DescriptorSetFileResolver, File, FileResolver};
use statehouse_schemas::cloudstate::{
    Entity, EntityPassivationStrategy, TimeoutPassivationStrategy, entity_passivation_strategy,
};
use statehouse_schemas::google::api::http_rule::Pattern;
use statehouse_schemas::shoppingcart::AddLineItem;
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};

use super::*;

const CART: &str = "com.example.shoppingcart.ShoppingCart";
const ALL_TYPES: &[&str] = &[
    protocol::EVENT_SOURCED,
    protocol::VALUE_ENTITY,
    protocol::CRDT,
    protocol::ACTION,
];

fn entity(entity_type: &str, service: &str) -> Entity {
    Entity {
        entity_type: entity_type.into(),
        service_name: service.into(),
        persistence_id: format!("{service}-pid"),
        passivation_strategy: None,
    }
}

/// Proto sources by file name, falling back to the files Statehouse ships.
struct Sources(HashMap<&'static str, &'static str>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `open` (with `sources` and the shipped protos as the import path) into an encoded
/// descriptor set; with `include_imports` false the set lacks the imports, like the sets some
/// SDKs send.
fn compile(
    sources: &[(&'static str, &'static str)],
    open: &[&str],
    include_imports: bool,
) -> Vec<u8> {
    let shipped = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let mut resolver = ChainFileResolver::new();
    resolver.add(Sources(sources.iter().copied().collect()));
    resolver.add(DescriptorSetFileResolver::new(shipped));
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(include_imports);
    compiler.open_files(open).unwrap();
    compiler.encode_file_descriptor_set()
}

fn file_names(index: &MethodIndex) -> Vec<String> {
    index.pool().files().map(|f| f.name().to_string()).collect()
}

#[test]
fn shopping_cart_is_indexed_with_keys_rules_and_ids() {
    let mut cart = entity(protocol::EVENT_SOURCED, CART);
    cart.passivation_strategy = Some(EntityPassivationStrategy {
        strategy: Some(entity_passivation_strategy::Strategy::Timeout(
            TimeoutPassivationStrategy { timeout: 100 },
        )),
    });
    let index = MethodIndex::build(FILE_DESCRIPTOR_SET, &[cart], ALL_TYPES).unwrap();
    assert_eq!(index.services().collect::<Vec<_>>(), [CART]);

    let add = index
        .method("/com.example.shoppingcart.ShoppingCart/AddItem")
        .unwrap();
    assert_eq!(add.service, CART);
    assert_eq!(add.name, "AddItem");
    assert_eq!(
        add.input.full_name(),
        "com.example.shoppingcart.AddLineItem"
    );
    assert_eq!(add.output.full_name(), "google.protobuf.Empty");
    assert!(add.is_unary());
    assert_eq!(
        add.key_fields.iter().map(|f| f.name()).collect::<Vec<_>>(),
        ["user_id"]
    );
    assert_eq!(add.entity.persistence_id, format!("{CART}-pid"));
    assert_eq!(
        add.entity.passivation_timeout,
        Some(Duration::from_millis(100))
    );
    assert_eq!(add.entity.kind(), Some(EntityKind::EventSourced));
    assert_eq!(add.http_rules.len(), 1);
    assert_eq!(
        add.http_rules[0].pattern,
        Some(Pattern::Post("/cart/{user_id}/items/add".into()))
    );
    assert_eq!(add.http_rules[0].body, "*");

    let get = index.method_by_name(CART, "GetCart").unwrap();
    assert_eq!(get.path, "/com.example.shoppingcart.ShoppingCart/GetCart");
    let patterns: Vec<_> = get
        .http_rules
        .iter()
        .map(|r| r.pattern.clone().unwrap())
        .collect();
    assert_eq!(
        patterns,
        [
            Pattern::Get("/carts/{user_id}".into()),
            Pattern::Get("/carts/{user_id}/items".into())
        ]
    );
    assert_eq!(get.http_rules[1].response_body, "items");
    assert!(
        get.http_rules
            .iter()
            .all(|r| r.additional_bindings.is_empty())
    );
    assert!(index.method_by_name(CART, "Nope").is_none());
    assert!(
        index
            .method("/cloudstate.EntityDiscovery/discover")
            .is_none(),
        "only entity services"
    );

    let request = AddLineItem {
        user_id: "u1".into(),
        product_id: "p".into(),
        name: "n".into(),
        quantity: 2,
    };
    assert_eq!(add.entity_id(&request.encode_to_vec()).unwrap(), "u1");
    let empty = add
        .entity_id(&AddLineItem::default().encode_to_vec())
        .unwrap_err();
    assert!(matches!(empty, Error::EmptyEntityKey { .. }), "{empty}");
    assert!(empty.to_string().contains("user_id"), "{empty}");
    let garbage = add.entity_id(&[0x0a, 0x05, b'u']).unwrap_err();
    assert!(
        matches!(garbage, Error::MalformedRequest { .. }),
        "{garbage}"
    );
    assert!(garbage.to_string().contains("AddLineItem"), "{garbage}");

    // The completed set decodes on its own and holds every file once.
    let pool = DescriptorPool::decode(index.file_descriptor_set()).unwrap();
    assert!(pool.get_service_by_name(CART).is_some());
    let names = file_names(&index);
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

const PYTHON_ENTITY_KEY: &str = r#"
syntax = "proto3";
package cloudstate;
import "google/protobuf/descriptor.proto";
extend google.protobuf.FieldOptions { bool entity_key = 50002; }
"#;

const LEGACY_ORDERS: &str = r#"
syntax = "proto3";
package legacy.orders;
import "cloudstate/entity_key.proto";
import "google/protobuf/empty.proto";
message PlaceOrder {
  string item = 1;
  string customer = 2 [(cloudstate.entity_key) = true];
}
service Orders {
  rpc Place(PlaceOrder) returns (google.protobuf.Empty);
}
"#;

/// The Python SDK case: its own `cloudstate/entity_key.proto` declares the key as 50002. Sent
/// with its imports, 50002 is a known extension; sent without (as the SDK does), Statehouse adds
/// its own `entity_key.proto` (1080) and 50002 stays an unknown field. Both find the key.
#[test]
fn legacy_50002_keys_are_found_as_known_or_unknown_options() {
    let sources = [
        ("cloudstate/entity_key.proto", PYTHON_ENTITY_KEY),
        ("legacy/orders.proto", LEGACY_ORDERS),
    ];
    let orders = [entity(protocol::EVENT_SOURCED, "legacy.orders.Orders")];
    let request = {
        let mut bytes = Vec::new();
        prost::encoding::string::encode(1, &"book".to_string(), &mut bytes);
        prost::encoding::string::encode(2, &"alice".to_string(), &mut bytes);
        bytes
    };
    for include_imports in [true, false] {
        let set = compile(&sources, &["legacy/orders.proto"], include_imports);
        let index = MethodIndex::build(&set, &orders, ALL_TYPES).unwrap();
        let place = index.method("/legacy.orders.Orders/Place").unwrap();
        assert_eq!(
            place
                .key_fields
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>(),
            ["customer"],
            "include_imports = {include_imports}"
        );
        assert_eq!(place.entity_id(&request).unwrap(), "alice");
        let known = index
            .pool()
            .get_extension_by_name("cloudstate.entity_key")
            .unwrap()
            .number();
        // With the imports the SDK's file is used, without them Statehouse's.
        assert_eq!(known, if include_imports { 50002 } else { 1080 });
        let names = file_names(&index);
        assert!(
            names.contains(&"google/protobuf/empty.proto".to_string()),
            "{names:?}"
        );
    }
}

const INVENTORY: &str = r#"
syntax = "proto3";
package shop;
import "cloudstate/entity_key.proto";
import "cloudstate/legacy_entity_key.proto";
import "google/api/annotations.proto";
enum Zone { ZONE_UNSPECIFIED = 0; NORTH = 1; }
message Stock {
  string warehouse = 2 [(cloudstate.entity_key) = true];
  int64 sku = 1 [(cloudstate.legacy_entity_key) = true];
  int32 amount = 3;
}
message Zoned { Zone zone = 1 [(cloudstate.entity_key) = true]; }
message Nested { Stock stock = 1 [(cloudstate.entity_key) = true]; }
message Nothing {}
service Inventory {
  rpc Adjust(Stock) returns (Stock) {
    option (google.api.http) = { patch: "/stock/{warehouse}/{sku}" body: "*" };
  }
  rpc Locate(Zoned) returns (Nothing);
}
service Counter { rpc Watch(Stock) returns (stream Stock); }
service Uploads { rpc Upload(stream Stock) returns (Stock); }
service Keyless { rpc Ping(Nothing) returns (Nothing); }
service MessageKey { rpc Get(Nested) returns (Nothing); }
service TooDeep {
  rpc Get(Stock) returns (Stock) {
    option (google.api.http) = {
      get: "/a"
      additional_bindings { get: "/b" additional_bindings { get: "/c" } }
    };
  }
}
"#;

fn inventory_set() -> Vec<u8> {
    // Without imports: entity_key, legacy_entity_key and google.api come from Statehouse.
    compile(
        &[("shop/inventory.proto", INVENTORY)],
        &["shop/inventory.proto"],
        false,
    )
}

#[test]
fn multiple_keys_join_in_declaration_order_and_shapes_follow_the_entity_type() {
    let set = inventory_set();
    let index = MethodIndex::build(
        &set,
        &[
            entity(protocol::VALUE_ENTITY, "shop.Inventory"),
            entity(protocol::CRDT, "shop.Counter"),
            entity(protocol::ACTION, "shop.Keyless"),
        ],
        ALL_TYPES,
    )
    .unwrap();
    assert_eq!(
        index.services().collect::<Vec<_>>(),
        ["shop.Counter", "shop.Inventory", "shop.Keyless"]
    );
    let adjust = index.method("/shop.Inventory/Adjust").unwrap();
    assert_eq!(
        adjust
            .key_fields
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>(),
        ["warehouse", "sku"],
        "declaration order, 1080 and 50002 alike"
    );
    let mut stock = Vec::new();
    prost::encoding::int64::encode(1, &42, &mut stock);
    prost::encoding::string::encode(2, &"w1".to_string(), &mut stock);
    assert_eq!(adjust.entity_id(&stock).unwrap(), "w1-42");
    assert_eq!(
        adjust.http_rules[0].pattern,
        Some(Pattern::Patch("/stock/{warehouse}/{sku}".into()))
    );

    let locate = index.method("/shop.Inventory/Locate").unwrap();
    assert_eq!(
        locate.entity_id(&[0x08, 0x01]).unwrap(),
        "NORTH",
        "enums by name"
    );
    // Only strings (and bytes) can be empty: an unset enum or number is its default.
    assert_eq!(locate.entity_id(&[]).unwrap(), "ZONE_UNSPECIFIED");

    let watch = index.method("/shop.Counter/Watch").unwrap();
    assert!(
        watch.server_streaming && !watch.client_streaming,
        "CRDTs may stream out"
    );

    // Actions: no key, the request is not even decoded; the default HTTP rule.
    let ping = index.method("/shop.Keyless/Ping").unwrap();
    assert!(ping.key_fields.is_empty());
    assert_eq!(ping.entity_id(&[0xff, 0xff]).unwrap(), "");
    assert_eq!(ping.http_rules.len(), 1);
    assert_eq!(
        ping.http_rules[0].pattern,
        Some(Pattern::Post("/shop.Keyless/Ping".into()))
    );
    assert_eq!(ping.http_rules[0].body, "*");
}

#[test]
fn invalid_specs_are_refused_with_clear_messages() {
    let set = inventory_set();
    let build = |entities: &[Entity]| MethodIndex::build(&set, entities, ALL_TYPES).unwrap_err();

    let err =
        MethodIndex::build(b"\xff\xff", &[entity(protocol::ACTION, "x.Y")], ALL_TYPES).unwrap_err();
    assert!(matches!(err, Error::DescriptorSet(_)), "{err}");

    let err = build(&[]);
    assert!(matches!(err, Error::NoEntities), "{err}");

    let err = build(&[entity(protocol::EVENT_SOURCED, "shop.Missing")]);
    assert_eq!(
        err.to_string(),
        "entity service \"shop.Missing\" is not defined in the descriptor set"
    );

    let err = MethodIndex::build(
        &set,
        &[entity(protocol::CRDT, "shop.Counter")],
        &[protocol::EVENT_SOURCED, protocol::ACTION],
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnsupportedEntityType { .. }), "{err}");
    assert!(err.to_string().contains("cloudstate.crdt.Crdt"), "{err}");

    let err = build(&[entity(protocol::EVENT_SOURCED, "shop.Counter")]);
    assert_eq!(
        err.to_string(),
        "/shop.Counter/Watch is server-streaming, but cloudstate.eventsourced.EventSourced \
         entities do not support server-streaming methods"
    );
    let err = build(&[entity(protocol::CRDT, "shop.Uploads")]);
    assert!(
        matches!(
            &err,
            Error::StreamingNotAllowed {
                shape: "client-streaming",
                ..
            }
        ),
        "{err}"
    );

    let err = build(&[entity(protocol::EVENT_SOURCED, "shop.Keyless")]);
    assert!(matches!(err, Error::MissingEntityKey { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("shop.Nothing has no entity key field"),
        "{err}"
    );

    let err = build(&[entity(protocol::VALUE_ENTITY, "shop.MessageKey")]);
    assert!(matches!(err, Error::BadKeyField { .. }), "{err}");

    let err = build(&[entity(protocol::ACTION, "shop.TooDeep")]);
    assert!(
        matches!(err, Error::NestedAdditionalBindings { .. }),
        "{err}"
    );

    let err = build(&[
        entity(protocol::ACTION, "shop.Keyless"),
        entity(protocol::ACTION, "shop.Keyless"),
    ]);
    assert!(matches!(err, Error::DuplicateService { .. }), "{err}");
}

fn file(name: &str, dependencies: &[&str]) -> prost_types::FileDescriptorProto {
    prost_types::FileDescriptorProto {
        name: Some(name.into()),
        package: Some(name.trim_end_matches(".proto").into()),
        dependency: dependencies.iter().map(|d| d.to_string()).collect(),
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

#[test]
fn dependencies_resolve_in_any_order_and_missing_or_cyclic_ones_are_named() {
    // Files after the files that import them, and an import Statehouse supplies.
    let mut a = file("a.proto", &["b.proto", "google/protobuf/timestamp.proto"]);
    a.service.push(prost_types::ServiceDescriptorProto {
        name: Some("Svc".into()),
        method: vec![prost_types::MethodDescriptorProto {
            name: Some("Call".into()),
            input_type: Some(".google.protobuf.Timestamp".into()),
            output_type: Some(".google.protobuf.Timestamp".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let set = prost_types::FileDescriptorSet {
        file: vec![a, file("b.proto", &["c.proto"]), file("c.proto", &[])],
    };
    let index = MethodIndex::build(
        &set.encode_to_vec(),
        &[entity(protocol::ACTION, "a.Svc")],
        ALL_TYPES,
    )
    .unwrap();
    assert!(index.method("/a.Svc/Call").is_some());
    assert!(file_names(&index).contains(&"google/protobuf/timestamp.proto".to_string()));

    let missing = prost_types::FileDescriptorSet {
        file: vec![file("a.proto", &["lost/domain.proto"])],
    };
    let err = MethodIndex::build(
        &missing.encode_to_vec(),
        &[entity(protocol::ACTION, "a.Svc")],
        ALL_TYPES,
    )
    .unwrap_err();
    assert!(matches!(err, Error::MissingDependency { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("a.proto imports lost/domain.proto"),
        "{err}"
    );

    let cycle = prost_types::FileDescriptorSet {
        file: vec![
            file("a.proto", &["b.proto"]),
            file("b.proto", &["c.proto"]),
            file("c.proto", &["a.proto"]),
        ],
    };
    let err = MethodIndex::build(
        &cycle.encode_to_vec(),
        &[entity(protocol::ACTION, "a.Svc")],
        ALL_TYPES,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the descriptor set has an import cycle: a.proto -> b.proto -> c.proto -> a.proto"
    );
}

const SCALARS: &str = r#"
syntax = "proto3";
package shop;
import "cloudstate/entity_key.proto";
import "google/protobuf/empty.proto";
message Nested { string text = 1; }
message Keys {
  int32 a = 1 [(cloudstate.entity_key) = true];
  int64 b = 2 [(cloudstate.entity_key) = true];
  uint32 c = 3 [(cloudstate.entity_key) = true];
  uint64 d = 4 [(cloudstate.entity_key) = true];
  sint32 e = 5 [(cloudstate.entity_key) = true];
  sint64 f = 6 [(cloudstate.entity_key) = true];
  bool g = 7 [(cloudstate.entity_key) = true];
  fixed32 h = 8 [(cloudstate.entity_key) = true];
  fixed64 i = 9 [(cloudstate.entity_key) = true];
  sfixed32 j = 10 [(cloudstate.entity_key) = true];
  sfixed64 k = 11 [(cloudstate.entity_key) = true];
  float l = 12 [(cloudstate.entity_key) = true];
  double m = 13 [(cloudstate.entity_key) = true];
  string n = 14 [(cloudstate.entity_key) = true];
  bytes o = 15 [(cloudstate.entity_key) = true];
  Nested other = 16;
  repeated string more = 17;
}
service Scalars { rpc Put(Keys) returns (google.protobuf.Empty); }
"#;

/// The id a full decode gives (the way `entity_id` worked before it scanned the wire).
fn decoded_id(method: &MethodInfo, request: &[u8]) -> Result<String, Error> {
    let message = DynamicMessage::decode(method.input.clone(), request).map_err(|source| {
        Error::MalformedRequest {
            message: method.input.full_name().to_string(),
            source,
        }
    })?;
    let mut id = String::new();
    for (i, field) in method.key_fields.iter().enumerate() {
        if i > 0 {
            id.push('-');
        }
        push_key_value(&mut id, field, &message.get_field(field))?;
    }
    Ok(id)
}

#[test]
fn scanning_the_key_fields_gives_what_a_full_decode_gives() {
    use prost::encoding::{self, WireType};
    let set = compile(
        &[("shop/scalars.proto", SCALARS)],
        &["shop/scalars.proto"],
        false,
    );
    let index = MethodIndex::build(
        &set,
        &[entity(protocol::VALUE_ENTITY, "shop.Scalars")],
        ALL_TYPES,
    )
    .unwrap();
    let put = index.method("/shop.Scalars/Put").unwrap();
    assert_eq!(put.key_fields.len(), 15);

    let full = |sign: i64, text: &str| {
        let mut b = Vec::new();
        encoding::int32::encode(1, &(sign as i32 * 7), &mut b);
        encoding::int64::encode(2, &(sign << 40), &mut b);
        encoding::uint32::encode(3, &u32::MAX, &mut b);
        encoding::uint64::encode(4, &u64::MAX, &mut b);
        encoding::sint32::encode(5, &(sign as i32 * 3), &mut b);
        encoding::sint64::encode(6, &(sign * 5), &mut b);
        encoding::bool::encode(7, &true, &mut b);
        encoding::fixed32::encode(8, &9, &mut b);
        encoding::fixed64::encode(9, &10, &mut b);
        encoding::sfixed32::encode(10, &(sign as i32 * 11), &mut b);
        encoding::sfixed64::encode(11, &(sign * 12), &mut b);
        encoding::float::encode(12, &(sign as f32 * 1.5), &mut b);
        encoding::double::encode(13, &(sign as f64 * 2.25), &mut b);
        encoding::string::encode(14, &text.to_string(), &mut b);
        encoding::bytes::encode(15, &b"raw".to_vec(), &mut b);
        encoding::string::encode(17, &"x".to_string(), &mut b);
        b
    };
    let mut nested_first = Vec::new();
    encoding::message::encode(16, &AddLineItem::default(), &mut nested_first);
    nested_first.extend(full(1, "tail"));
    let mut repeated = full(1, "first");
    // The last occurrence of a scalar wins.
    encoding::string::encode(14, &"second".to_string(), &mut repeated);
    encoding::int32::encode(1, &-1, &mut repeated);
    // A bool encoded as a large varint, an unknown field of each wire type.
    let mut odd = full(-1, "ünïcode");
    encoding::uint64::encode(7, &300, &mut odd);
    encoding::encode_key(99, WireType::ThirtyTwoBit, &mut odd);
    odd.extend([1, 2, 3, 4]);
    encoding::encode_key(98, WireType::SixtyFourBit, &mut odd);
    odd.extend([0; 8]);
    encoding::bytes::encode(97, &vec![0xff; 3], &mut odd);

    for request in [
        full(1, "a"),
        full(-1, "b"),
        nested_first,
        repeated,
        odd,
        Vec::new(),
    ] {
        let expected = decoded_id(put, &request).unwrap();
        assert!(
            scan_key_values(&put.key_fields, &request).is_some(),
            "scanned without a full decode"
        );
        assert_eq!(put.entity_id(&request).unwrap(), expected);
    }

    // What the scan does not take goes through the full decode: the same errors as before.
    let mut wrong_wire = Vec::new();
    encoding::string::encode(1, &"not an int".to_string(), &mut wrong_wire);
    let mut bad_utf8 = Vec::new();
    encoding::bytes::encode(14, &vec![0xff, 0xfe], &mut bad_utf8);
    let mut group = full(1, "g");
    encoding::encode_key(50, WireType::StartGroup, &mut group);
    encoding::encode_key(50, WireType::EndGroup, &mut group);
    let truncated = full(1, "t")[..20].to_vec();
    for request in [
        wrong_wire,
        bad_utf8,
        group,
        truncated,
        vec![0x00, 0x01],
        vec![0xff; 11],
    ] {
        assert!(scan_key_values(&put.key_fields, &request).is_none());
        assert_eq!(
            put.entity_id(&request).map_err(|e| e.to_string()),
            decoded_id(put, &request).map_err(|e| e.to_string()),
            "{request:?}"
        );
    }
}
