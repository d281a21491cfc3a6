//! The real Cloudstate SDK user functions, spoken to directly (no Statehouse processor yet):
//! discovery (`cloudstate.EntityDiscovery/discover`) and the event-sourced protocol
//! (`cloudstate.eventsourced.EventSourced/handle`), as the processor will use them.
//!
//! * Go: `github.com/cloudstateio/go-support` v0.3.0, its shopping cart example (protocol 0.2).
//! * Python: our shopping cart on PyPI `cloudstate==0.1.1` (legacy protocol, reports 0.0).
//!
//! Needs `bash e2e/user-functions/install.sh` (run by `.ci/run`); fails loudly without it.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::channel::mpsc;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use prost_types::Any;
use statehouse_schemas::cloudstate::client_action::Action;
use statehouse_schemas::cloudstate::entity_discovery_client::EntityDiscoveryClient;
use statehouse_schemas::cloudstate::eventsourced::event_sourced_client::EventSourcedClient;
use statehouse_schemas::cloudstate::eventsourced::{
    EventSourcedEvent, EventSourcedInit, EventSourcedReply, EventSourcedStreamIn,
    EventSourcedStreamOut, event_sourced_stream_in, event_sourced_stream_out,
};
use statehouse_schemas::cloudstate::{Command, EntitySpec, ProxyInfo, UserFunctionError};
use statehouse_schemas::shoppingcart::persistence::{self as domain, ItemAdded, ItemRemoved};
use statehouse_schemas::shoppingcart::{
    AddLineItem, Cart, GetShoppingCart, LineItem, RemoveLineItem,
};
use statehouse_test_support::user_function::{
    EVENT_SOURCED_ENTITY_TYPE, Kind, SHOPPING_CART_SERVICE, UserFunction,
};

const TIMEOUT: Duration = Duration::from_secs(15);
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// What each SDK puts in `EntitySpec.proto` (file names, in order). The processor must cope
/// with both: Go sends the service file, its imports (transitively) and the domain file; Python
/// sends the service file plus a fixed list — no domain file, not in dependency order.
fn expected_descriptor_files(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::GoShoppingCart => vec![
            "shoppingcart.proto",
            "google/protobuf/empty.proto",
            "cloudstate/entity_key.proto",
            "google/protobuf/descriptor.proto",
            "cloudstate/eventing.proto",
            "google/api/annotations.proto",
            "google/api/http.proto",
            "google/api/httpbody.proto",
            "google/protobuf/any.proto",
            "domain.proto",
        ],
        Kind::PythonShoppingCart => vec![
            "shoppingcart/shoppingcart.proto",
            "google/protobuf/empty.proto",
            "cloudstate/entity_key.proto",
            "google/protobuf/descriptor.proto",
            "google/api/annotations.proto",
            "google/api/http.proto",
        ],
        Kind::RustShoppingCart | Kind::GoTck => not_official(),
    }
}

fn proxy_info() -> ProxyInfo {
    ProxyInfo {
        protocol_major_version: 0,
        protocol_minor_version: 2,
        proxy_name: "statehouse".into(),
        proxy_version: env!("CARGO_PKG_VERSION").into(),
        supported_entity_types: vec![EVENT_SOURCED_ENTITY_TYPE.into()],
    }
}

async fn discover(uf: &UserFunction) -> EntitySpec {
    let mut client = tokio::time::timeout(TIMEOUT, EntityDiscoveryClient::connect(uf.endpoint()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: connect timed out; log {}",
                uf.kind(),
                uf.log_path().display()
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: connect: {e}; log {}",
                uf.kind(),
                uf.log_path().display()
            )
        });
    tokio::time::timeout(TIMEOUT, client.discover(proxy_info()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: discover timed out; log {}",
                uf.kind(),
                uf.log_path().display()
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: discover: {e}; log {}",
                uf.kind(),
                uf.log_path().display()
            )
        })
        .into_inner()
}

/// The FieldOptions extension numbers set to `true` on a field, whether or not the descriptor
/// set also holds the extension's definition (then it decodes as an extension, else unknown).
fn true_bool_options(options: &DynamicMessage) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for (ext, value) in options.extensions() {
        if matches!(value, Value::Bool(true)) {
            set.insert(ext.number());
        }
    }
    for field in options.unknown_fields() {
        let mut bytes = Vec::new();
        field.encode(&mut bytes);
        if field.wire_type() == prost::encoding::WireType::Varint && bytes.last() == Some(&1) {
            set.insert(field.number());
        }
    }
    set
}

fn check_discovery(kind: Kind, uf: &UserFunction, spec: &EntitySpec) {
    let log = uf.log_path().display();
    // Entities.
    assert_eq!(
        spec.entities.len(),
        1,
        "{kind}: entities {:?}; log {log}",
        spec.entities
    );
    let entity = &spec.entities[0];
    assert_eq!(entity.service_name, SHOPPING_CART_SERVICE, "{kind}");
    assert_eq!(entity.entity_type, EVENT_SOURCED_ENTITY_TYPE, "{kind}");
    assert_eq!(entity.persistence_id, kind.persistence_id(), "{kind}");

    // Service info.
    let info = spec
        .service_info
        .as_ref()
        .unwrap_or_else(|| panic!("{kind}: no service_info"));
    assert_eq!(
        (info.protocol_major_version, info.protocol_minor_version),
        kind.protocol_version(),
        "{kind}: protocol version in {info:?}"
    );
    match kind {
        Kind::GoShoppingCart => {
            assert_eq!(info.service_name, "shopping-cart");
            assert_eq!(info.support_library_name, "cloudstate-go-support");
        }
        Kind::PythonShoppingCart => {
            assert_eq!(
                info.service_name, "",
                "the Python SDK sends no service name"
            );
            assert_eq!(info.support_library_name, "cloudstate-python-support");
        }
        Kind::RustShoppingCart | Kind::GoTck => not_official(),
    }
    println!("{kind}: service_info {info:?}");

    // The descriptor set: its files, as sent.
    let set = prost_types::FileDescriptorSet::decode(spec.proto.as_ref())
        .unwrap_or_else(|e| panic!("{kind}: EntitySpec.proto is not a FileDescriptorSet: {e}"));
    let files: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    println!("{kind}: descriptor set files {files:?}");
    assert_eq!(
        files,
        expected_descriptor_files(kind),
        "{kind}: descriptor set files"
    );

    // It resolves (prost-reflect accepts any file order) and holds the service.
    let pool = DescriptorPool::decode(spec.proto.as_ref())
        .unwrap_or_else(|e| panic!("{kind}: descriptor set does not resolve: {e}"));
    let service = pool
        .get_service_by_name(SHOPPING_CART_SERVICE)
        .unwrap_or_else(|| panic!("{kind}: {SHOPPING_CART_SERVICE} is not in the descriptor set"));
    let methods: Vec<(String, String, String)> = service
        .methods()
        .map(|m| {
            (
                m.name().to_owned(),
                m.input().full_name().to_owned(),
                m.output().full_name().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            (
                "AddItem",
                "com.example.shoppingcart.AddLineItem",
                "google.protobuf.Empty"
            ),
            (
                "RemoveItem",
                "com.example.shoppingcart.RemoveLineItem",
                "google.protobuf.Empty"
            ),
            (
                "GetCart",
                "com.example.shoppingcart.GetShoppingCart",
                "com.example.shoppingcart.Cart"
            ),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())),
        "{kind}: methods"
    );
    for method in service.methods() {
        assert!(
            !method.is_client_streaming() && !method.is_server_streaming(),
            "{kind}: unary"
        );
        // Entity key: user_id, marked with the SDK's extension number.
        let input = method.input();
        let key = input
            .get_field_by_name("user_id")
            .unwrap_or_else(|| panic!("{kind}: user_id"));
        assert_eq!(key.number(), 1);
        assert_eq!(
            true_bool_options(&key.options()),
            BTreeSet::from([kind.entity_key_extension()]),
            "{kind}: {}.user_id key option",
            input.full_name()
        );
        for other in input.fields().filter(|f| f.name() != "user_id") {
            assert!(
                true_bool_options(&other.options()).is_empty(),
                "{kind}: {}",
                other.full_name()
            );
        }
        // The google.api.http rule survives.
        let http = pool
            .get_extension_by_name("google.api.http")
            .unwrap_or_else(|| panic!("{kind}: google.api.http is not in the descriptor set"));
        assert!(
            method.options().has_extension(&http),
            "{kind}: {} has no HTTP rule",
            method.name()
        );
    }
    let ext = pool
        .all_extensions()
        .find(|e| e.number() == kind.entity_key_extension())
        .unwrap_or_else(|| panic!("{kind}: the key extension is not defined in the set"));
    assert_eq!(ext.full_name(), "cloudstate.entity_key", "{kind}");
    assert_eq!(
        ext.containing_message().full_name(),
        "google.protobuf.FieldOptions"
    );

    // The domain (event) types: only Go includes them.
    let has_domain = pool
        .get_message_by_name("com.example.shoppingcart.persistence.ItemAdded")
        .is_some();
    assert_eq!(
        has_domain,
        kind == Kind::GoShoppingCart,
        "{kind}: domain types in the set"
    );
}

// ---- the event-sourced stream ---------------------------------------------------------------

fn any<M: prost::Message>(full_name: &str, msg: &M) -> Any {
    Any {
        type_url: format!("{TYPE_URL_PREFIX}{full_name}"),
        value: msg.encode_to_vec(),
    }
}

fn unpack<M: prost::Message + Default>(any: &Any, full_name: &str) -> M {
    assert_eq!(
        any.type_url,
        format!("{TYPE_URL_PREFIX}{full_name}"),
        "payload type"
    );
    M::decode(any.value.as_slice()).expect("payload decodes")
}

/// One `EventSourced/handle` stream for one entity, kept open.
struct EntityStream {
    kind: Kind,
    log: String,
    entity_id: String,
    tx: mpsc::UnboundedSender<EventSourcedStreamIn>,
    /// The call, until its response headers arrive. The Go SDK sends them only with the first
    /// reply, so the call must not be awaited before a command was sent.
    call: Option<tokio::task::JoinHandle<Result<tonic::Response<OutStream>, tonic::Status>>>,
    rx: Option<OutStream>,
    next_id: i64,
}

type OutStream = tonic::Streaming<EventSourcedStreamOut>;

impl EntityStream {
    /// Opens the stream and sends init (no snapshot) then `events` (sequence 1..).
    async fn open(uf: &UserFunction, entity_id: &str, events: Vec<Any>) -> EntityStream {
        let log = uf.log_path().display().to_string();
        let mut client = EventSourcedClient::connect(uf.endpoint())
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e}; log {log}", uf.kind()));
        let (tx, rx) = mpsc::unbounded();
        let send = |m| EventSourcedStreamIn { message: Some(m) };
        tx.unbounded_send(send(event_sourced_stream_in::Message::Init(
            EventSourcedInit {
                service_name: SHOPPING_CART_SERVICE.into(),
                entity_id: entity_id.into(),
                snapshot: None,
            },
        )))
        .unwrap();
        for (i, payload) in events.into_iter().enumerate() {
            tx.unbounded_send(send(event_sourced_stream_in::Message::Event(
                EventSourcedEvent {
                    sequence: i as i64 + 1,
                    payload: Some(payload),
                },
            )))
            .unwrap();
        }
        let call = tokio::spawn(async move { client.handle(rx).await });
        EntityStream {
            kind: uf.kind(),
            log,
            entity_id: entity_id.into(),
            tx,
            call: Some(call),
            rx: None,
            next_id: 1,
        }
    }

    /// The response stream, once the call's response headers arrived.
    async fn responses(&mut self) -> &mut OutStream {
        if let Some(call) = self.call.take() {
            let (kind, log) = (self.kind, &self.log);
            let response = tokio::time::timeout(TIMEOUT, call)
                .await
                .unwrap_or_else(|_| {
                    panic!("{kind}: no response headers within {TIMEOUT:?}; log {log}")
                })
                .expect("the handle call task")
                .unwrap_or_else(|e| panic!("{kind}: handle: {e}; log {log}"));
            self.rx = Some(response.into_inner());
        }
        self.rx.as_mut().expect("response stream")
    }

    /// Sends one command (ids 1, 2, ...) and returns its reply.
    async fn command(&mut self, name: &str, payload: Any) -> EventSourcedReply {
        let id = self.next_id;
        self.next_id += 1;
        self.tx
            .unbounded_send(EventSourcedStreamIn {
                message: Some(event_sourced_stream_in::Message::Command(Command {
                    entity_id: self.entity_id.clone(),
                    id,
                    name: name.into(),
                    payload: Some(payload),
                    streamed: false,
                    metadata: None,
                })),
            })
            .unwrap();
        let (kind, log) = (self.kind, self.log.clone());
        let out = tokio::time::timeout(TIMEOUT, self.responses().await.message())
            .await
            .unwrap_or_else(|_| panic!("{kind}: no reply to {name} within {TIMEOUT:?}; log {log}"))
            .unwrap_or_else(|e| panic!("{kind}: stream failed on {name}: {e}; log {log}"))
            .unwrap_or_else(|| panic!("{kind}: stream ended before replying to {name}; log {log}"));
        match out.message {
            Some(event_sourced_stream_out::Message::Reply(reply)) => {
                assert_eq!(reply.command_id, id, "{kind}: reply to {name}");
                reply
            }
            other => panic!("{kind}: expected a reply to {name}, got {other:?}; log {log}"),
        }
    }

    async fn add(&mut self, product: &str, name: &str, quantity: i32) -> EventSourcedReply {
        let cmd = AddLineItem {
            user_id: self.entity_id.clone(),
            product_id: product.into(),
            name: name.into(),
            quantity,
        };
        self.command("AddItem", any("com.example.shoppingcart.AddLineItem", &cmd))
            .await
    }

    async fn remove(&mut self, product: &str) -> EventSourcedReply {
        let cmd = RemoveLineItem {
            user_id: self.entity_id.clone(),
            product_id: product.into(),
        };
        self.command(
            "RemoveItem",
            any("com.example.shoppingcart.RemoveLineItem", &cmd),
        )
        .await
    }

    async fn get_cart(&mut self) -> Vec<(String, String, i32)> {
        let cmd = GetShoppingCart {
            user_id: self.entity_id.clone(),
        };
        let reply = self
            .command(
                "GetCart",
                any("com.example.shoppingcart.GetShoppingCart", &cmd),
            )
            .await;
        assert!(
            reply.events.is_empty(),
            "{}: GetCart emits nothing",
            self.kind
        );
        let cart: Cart = unpack(
            reply_payload(self.kind, &reply),
            "com.example.shoppingcart.Cart",
        );
        cart.items
            .into_iter()
            .map(
                |LineItem {
                     product_id,
                     name,
                     quantity,
                 }| (product_id, name, quantity),
            )
            .collect()
    }

    /// Half-closes the request stream; the user function ends its side.
    async fn close(mut self) {
        self.tx.close_channel();
        let end = tokio::time::timeout(TIMEOUT, self.responses().await.message()).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "{}: expected the stream to end after half-close, got {end:?}; log {}",
            self.kind,
            self.log
        );
    }
}

fn reply_payload(kind: Kind, reply: &EventSourcedReply) -> &Any {
    match reply.client_action.as_ref().and_then(|a| a.action.as_ref()) {
        Some(Action::Reply(r)) => r
            .payload
            .as_ref()
            .unwrap_or_else(|| panic!("{kind}: empty reply")),
        other => panic!("{kind}: expected a reply action, got {other:?}"),
    }
}

fn failure_of(kind: Kind, reply: &EventSourcedReply) -> String {
    match reply.client_action.as_ref().and_then(|a| a.action.as_ref()) {
        Some(Action::Failure(f)) => {
            assert_eq!(f.command_id, reply.command_id, "{kind}: failure command id");
            assert!(!f.restart, "{kind}: failure asks for a restart");
            f.description.clone()
        }
        other => panic!("{kind}: expected a failure, got {other:?}"),
    }
}

fn assert_empty_reply(kind: Kind, reply: &EventSourcedReply) {
    let payload = reply_payload(kind, reply);
    let () = unpack(payload, "google.protobuf.Empty");
}

fn item_added(kind: Kind, reply: &EventSourcedReply) -> (String, String, i32) {
    assert_eq!(reply.events.len(), 1, "{kind}: events {:?}", reply.events);
    let added: ItemAdded = unpack(
        &reply.events[0],
        "com.example.shoppingcart.persistence.ItemAdded",
    );
    let item = added
        .item
        .unwrap_or_else(|| panic!("{kind}: ItemAdded without item"));
    (item.product_id, item.name, item.quantity)
}

fn t(product: &str, name: &str, quantity: i32) -> (String, String, i32) {
    (product.into(), name.into(), quantity)
}

async fn shopping_cart_commands(kind: Kind) {
    let uf = UserFunction::start(kind);
    let cart_id = statehouse_test_support::unique("cart");
    let mut s = EntityStream::open(&uf, &cart_id, vec![]).await;

    // AddItem: one ItemAdded event and an Empty reply.
    let reply = s.add("apple", "Apple", 2).await;
    assert_eq!(item_added(kind, &reply), t("apple", "Apple", 2));
    assert_empty_reply(kind, &reply);
    assert!(
        reply.snapshot.is_none() && reply.side_effects.is_empty(),
        "{kind}: {reply:?}"
    );

    // A quantity <= 0 fails with the sample's text, without events.
    for quantity in [-1, 0] {
        let reply = s.add("pear", "Pear", quantity).await;
        assert_eq!(
            failure_of(kind, &reply),
            kind.add_negative_quantity_failure("pear")
        );
        assert!(reply.events.is_empty(), "{kind}: a failure emits nothing");
    }

    // Adding an existing product adds to its quantity; items stay in insertion order.
    assert_eq!(
        item_added(kind, &s.add("banana", "Banana", 1).await),
        t("banana", "Banana", 1)
    );
    assert_eq!(
        item_added(kind, &s.add("apple", "Apple", 3).await),
        t("apple", "Apple", 3)
    );
    assert_eq!(
        s.get_cart().await,
        [t("apple", "Apple", 5), t("banana", "Banana", 1)]
    );

    // RemoveItem of a missing product fails; of a present one emits ItemRemoved.
    let reply = s.remove("kiwi").await;
    assert_eq!(
        failure_of(kind, &reply),
        kind.remove_missing_item_failure("kiwi")
    );
    assert!(reply.events.is_empty());
    let reply = s.remove("apple").await;
    assert_empty_reply(kind, &reply);
    assert_eq!(reply.events.len(), 1, "{kind}");
    let removed: ItemRemoved = unpack(
        &reply.events[0],
        "com.example.shoppingcart.persistence.ItemRemoved",
    );
    assert_eq!(removed.product_id, "apple");
    assert_eq!(s.get_cart().await, [t("banana", "Banana", 1)]);
    s.close().await;

    // Recovery: a new stream replays the journal (init without snapshot, events 1..n).
    let item = |p: &str, n: &str, q| domain::LineItem {
        product_id: p.into(),
        name: n.into(),
        quantity: q,
    };
    let journal = vec![
        any(
            "com.example.shoppingcart.persistence.ItemAdded",
            &ItemAdded {
                item: Some(item("a", "A", 1)),
            },
        ),
        any(
            "com.example.shoppingcart.persistence.ItemAdded",
            &ItemAdded {
                item: Some(item("b", "B", 2)),
            },
        ),
        any(
            "com.example.shoppingcart.persistence.ItemAdded",
            &ItemAdded {
                item: Some(item("a", "A", 4)),
            },
        ),
        any(
            "com.example.shoppingcart.persistence.ItemRemoved",
            &ItemRemoved {
                product_id: "b".into(),
            },
        ),
        any(
            "com.example.shoppingcart.persistence.ItemAdded",
            &ItemAdded {
                item: Some(item("c", "C", 1)),
            },
        ),
    ];
    let other_id = statehouse_test_support::unique("cart");
    let mut s = EntityStream::open(&uf, &other_id, journal).await;
    assert_eq!(s.get_cart().await, [t("a", "A", 5), t("c", "C", 1)]);
    assert_eq!(item_added(kind, &s.add("b", "B", 1).await), t("b", "B", 1));
    assert_eq!(
        s.get_cart().await,
        [t("a", "A", 5), t("c", "C", 1), t("b", "B", 1)]
    );
    s.close().await;
}

async fn discovery(kind: Kind) {
    let uf = UserFunction::start(kind);
    let spec = discover(&uf).await;
    check_discovery(kind, &uf, &spec);
    // Discovery is repeatable (the processor re-discovers after restarts).
    assert_eq!(
        discover(&uf).await,
        spec,
        "{kind}: a second discovery differs"
    );

    // reportError, which the processor calls when it rejects a spec.
    let mut client = EntityDiscoveryClient::connect(uf.endpoint())
        .await
        .expect("connect");
    let error = UserFunctionError {
        message: "statehouse: test error".into(),
    };
    let answer = tokio::time::timeout(TIMEOUT, client.report_error(error))
        .await
        .expect("in time");
    println!("{kind}: reportError answered {answer:?}");
    match kind {
        Kind::GoShoppingCart => assert!(answer.is_ok(), "{kind}: {answer:?}"),
        // The Python SDK's handler returns None: INTERNAL "Failed to serialize response!".
        Kind::PythonShoppingCart => match answer {
            Err(status) => assert_eq!(status.code(), tonic::Code::Internal, "{kind}: {status:?}"),
            Ok(ok) => panic!("{kind}: reportError succeeded: {ok:?}"),
        },
        Kind::RustShoppingCart | Kind::GoTck => not_official(),
    }
}

#[tokio::test]
async fn go_sdk_discovery() {
    discovery(Kind::GoShoppingCart).await;
}

#[tokio::test]
async fn python_sdk_discovery() {
    discovery(Kind::PythonShoppingCart).await;
}

#[tokio::test]
async fn go_sdk_event_sourced_shopping_cart() {
    shopping_cart_commands(Kind::GoShoppingCart).await;
}

#[tokio::test]
async fn python_sdk_event_sourced_shopping_cart() {
    shopping_cart_commands(Kind::PythonShoppingCart).await;
}

#[test]
fn user_functions_restart_on_the_same_port() {
    for kind in Kind::ALL {
        let mut uf = UserFunction::start(kind);
        let (port, pid) = (uf.port(), uf.pid());
        uf.restart();
        assert_eq!(uf.port(), port, "{kind}");
        assert_ne!(uf.pid(), pid, "{kind}");
        assert!(uf.is_running(), "{kind}");
        uf.kill();
        assert!(!uf.is_running() && uf.pid().is_none(), "{kind}");
        assert!(
            std::net::TcpStream::connect(uf.addr()).is_err(),
            "{kind}: still listening after kill"
        );
    }
}

/// These tests pin the official SDKs' behaviour; the Rust SDK has its own protocol tests.
fn not_official() -> ! {
    panic!(
        "sdk_discovery covers the official SDKs' shopping carts; see sdk/tests for the Rust SDK and e2e/tests/tck.rs for the TCK user function"
    )
}
