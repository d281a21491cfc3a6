//! The generated protobuf code and the descriptor set: wire numbers checked
//! against hand-built bytes, the services and extensions the gateway and
//! processor rely on, and a real gRPC round trip over loopback.

use bytes::Bytes;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, Value};
use prost_types::{Any, FileDescriptorSet};
use statehouse_schemas::{
    FILE_DESCRIPTOR_SET,
    cloudstate::{
        self, ClientAction, Command, Metadata, MetadataEntry, Reply, SideEffect,
        action::ActionCommand,
        crdt::{self, CrdtDelta, CrdtReply, CrdtStateAction, CrdtWriteConsistency, GCounterDelta},
        eventsourced::{
            EventSourcedInit, EventSourcedReply, EventSourcedSnapshot, EventSourcedStreamIn,
            EventSourcedStreamOut, event_sourced_stream_in, event_sourced_stream_out,
        },
        metadata_entry,
    },
    protocol, shoppingcart,
    statehouse::processor::v1::NotOwner,
};

fn any(type_name: &str, value: &[u8]) -> Any {
    Any {
        type_url: protocol::type_url(type_name),
        value: value.to_vec(),
    }
}

#[test]
fn command_round_trips_and_uses_the_protocol_field_numbers() {
    let command = Command {
        entity_id: "cart-1".into(),
        id: 7,
        name: "AddItem".into(),
        payload: Some(any("com.example.shoppingcart.AddLineItem", b"\x0a\x01u")),
        streamed: true,
        metadata: Some(Metadata {
            entries: vec![MetadataEntry {
                key: "ce-type".into(),
                value: Some(metadata_entry::Value::BytesValue(Bytes::from_static(
                    b"\x01",
                ))),
            }],
        }),
    };
    let bytes = command.encode_to_vec();
    assert_eq!(Command::decode(bytes.as_slice()).unwrap(), command);

    // entity_id = 1 (string), id = 2 (varint), name = 3, streamed = 5.
    let hand_built = [
        0x0a, 0x02, b'e', b'1', // entity_id "e1"
        0x10, 0x2a, // id 42
        0x1a, 0x01, b'X', // name "X"
        0x28, 0x01, // streamed true
    ];
    let decoded = Command::decode(hand_built.as_slice()).unwrap();
    assert_eq!(decoded.entity_id, "e1");
    assert_eq!(decoded.id, 42);
    assert_eq!(decoded.name, "X");
    assert!(decoded.streamed);
    assert_eq!(decoded.metadata, None);

    // MetadataEntry: key = 1, string_value = 2, bytes_value = 3.
    let entry = MetadataEntry::decode([0x0a, 0x01, b'k', 0x1a, 0x01, 0xff].as_slice()).unwrap();
    assert_eq!(entry.key, "k");
    assert_eq!(
        entry.value,
        Some(metadata_entry::Value::BytesValue(Bytes::from_static(&[
            0xff
        ])))
    );
}

#[test]
fn crdt_reply_side_effects_are_field_4_and_field_3_is_unused() {
    // side_effects = 4: one SideEffect{service_name: "s", synchronous: true}.
    let with_side_effect = [0x08, 0x05, 0x22, 0x05, 0x0a, 0x01, b's', 0x20, 0x01];
    let reply = CrdtReply::decode(with_side_effect.as_slice()).unwrap();
    assert_eq!(reply.command_id, 5);
    assert_eq!(reply.side_effects.len(), 1);
    assert_eq!(reply.side_effects[0].service_name, "s");
    assert!(reply.side_effects[0].synchronous);

    // The same bytes under field 3 are skipped as an unknown field.
    let under_field_3 = [0x08, 0x05, 0x1a, 0x05, 0x0a, 0x01, b's', 0x20, 0x01];
    let reply = CrdtReply::decode(under_field_3.as_slice()).unwrap();
    assert_eq!(reply.command_id, 5);
    assert!(reply.side_effects.is_empty());
    assert_eq!(reply.state_action, None);

    // state_action = 5, streamed = 6; write_consistency = 3 inside it.
    let reply = CrdtReply {
        command_id: 1,
        state_action: Some(CrdtStateAction {
            action: Some(crdt::crdt_state_action::Action::Update(CrdtDelta {
                delta: Some(crdt::crdt_delta::Delta::Gcounter(GCounterDelta {
                    increment: 3,
                })),
            })),
            write_consistency: CrdtWriteConsistency::All as i32,
        }),
        streamed: true,
        ..Default::default()
    };
    let bytes = reply.encode_to_vec();
    assert_eq!(bytes[..2], [0x08, 0x01]);
    assert_eq!(bytes[2], 0x2a, "state_action is field 5, length-delimited");
    assert_eq!(
        bytes[bytes.len() - 2..],
        [0x30, 0x01],
        "streamed is field 6"
    );
    assert_eq!(CrdtReply::decode(bytes.as_slice()).unwrap(), reply);
}

#[test]
fn stream_messages_use_the_protocol_oneof_numbers() {
    let init = EventSourcedStreamIn {
        message: Some(event_sourced_stream_in::Message::Init(EventSourcedInit {
            service_name: "com.example.shoppingcart.ShoppingCart".into(),
            entity_id: "u1".into(),
            snapshot: Some(EventSourcedSnapshot {
                snapshot_sequence: 5,
                snapshot: Some(any("com.example.shoppingcart.persistence.Cart", b"")),
            }),
        })),
    };
    let bytes = init.encode_to_vec();
    assert_eq!(bytes[0], 0x0a, "init is field 1");
    assert_eq!(
        EventSourcedStreamIn::decode(bytes.as_slice()).unwrap(),
        init
    );

    let command = EventSourcedStreamIn {
        message: Some(event_sourced_stream_in::Message::Command(Command::default())),
    };
    assert_eq!(command.encode_to_vec(), [0x1a, 0x00], "command is field 3");

    let reply = EventSourcedStreamOut {
        message: Some(event_sourced_stream_out::Message::Reply(
            EventSourcedReply {
                command_id: 1,
                client_action: Some(ClientAction {
                    action: Some(cloudstate::client_action::Action::Reply(Reply::default())),
                }),
                side_effects: vec![SideEffect::default()],
                events: vec![any(
                    "com.example.shoppingcart.persistence.ItemAdded",
                    b"\x0a\x00",
                )],
                snapshot: None,
            },
        )),
    };
    let decoded = EventSourcedStreamOut::decode(reply.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, reply);

    // ActionCommand has no field 1: service_name is field 2.
    let action = ActionCommand {
        service_name: "x".into(),
        ..Default::default()
    };
    assert_eq!(action.encode_to_vec(), [0x12, 0x01, b'x']);
}

fn method_paths(set: &FileDescriptorSet) -> Vec<(String, bool, bool)> {
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push((
                    format!("{}.{}/{}", file.package(), service.name(), method.name()),
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    paths
}

#[test]
fn descriptor_set_holds_the_services_and_extensions() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let paths = method_paths(&set);
    for expected in [
        ("cloudstate.EntityDiscovery/discover", false, false),
        ("cloudstate.EntityDiscovery/reportError", false, false),
        ("cloudstate.eventsourced.EventSourced/handle", true, true),
        ("cloudstate.valueentity.ValueEntity/handle", true, true),
        ("cloudstate.crdt.Crdt/handle", true, true),
        ("cloudstate.action.ActionProtocol/handleUnary", false, false),
        (
            "cloudstate.action.ActionProtocol/handleStreamedIn",
            true,
            false,
        ),
        (
            "cloudstate.action.ActionProtocol/handleStreamedOut",
            false,
            true,
        ),
        (
            "cloudstate.action.ActionProtocol/handleStreamed",
            true,
            true,
        ),
        (
            "cloudstate.function.StatelessFunction/handleUnary",
            false,
            false,
        ),
        ("statehouse.processor.v1.Processor/Handle", false, false),
        (
            "statehouse.processor.v1.Processor/HandleStreamed",
            true,
            true,
        ),
        ("statehouse.admin.v1.Admin/DescribeService", false, false),
        (
            "statehouse.projection.v1.ProjectionHandler/HandleBatch",
            false,
            false,
        ),
        (
            "com.example.shoppingcart.ShoppingCart/AddItem",
            false,
            false,
        ),
        (
            "com.example.shoppingcart.ShoppingCart/GetCart",
            false,
            false,
        ),
    ] {
        let found = paths.iter().find(|(path, ..)| path == expected.0);
        assert_eq!(
            found,
            Some(&(expected.0.to_owned(), expected.1, expected.2)),
            "{}",
            expected.0
        );
    }

    let extensions: Vec<(String, String, i32)> = set
        .file
        .iter()
        .flat_map(|file| {
            file.extension.iter().map(move |ext| {
                (
                    format!("{}.{}", file.package(), ext.name()),
                    ext.extendee().to_owned(),
                    ext.number(),
                )
            })
        })
        .collect();
    for (name, extendee, number) in [
        (
            "cloudstate.entity_key",
            ".google.protobuf.FieldOptions",
            1080,
        ),
        (
            "cloudstate.legacy_entity_key",
            ".google.protobuf.FieldOptions",
            50002,
        ),
        (
            "cloudstate.eventing",
            ".google.protobuf.MethodOptions",
            1081,
        ),
        (
            "google.api.http",
            ".google.protobuf.MethodOptions",
            72_295_728,
        ),
    ] {
        assert!(
            extensions.contains(&(name.to_owned(), extendee.to_owned(), number)),
            "{name} = {number} on {extendee} missing from {extensions:?}"
        );
    }
    assert_eq!(protocol::ENTITY_KEY_EXTENSION, 1080);
    assert_eq!(protocol::LEGACY_ENTITY_KEY_EXTENSION, 50002);
    assert_eq!(protocol::EVENTING_EXTENSION, 1081);
    assert_eq!(protocol::HTTP_EXTENSION, 72_295_728);

    // The well-known types are included, so the set is self-contained.
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    assert!(names.contains(&"google/protobuf/any.proto"));
    assert!(names.contains(&"google/protobuf/descriptor.proto"));
}

#[test]
fn custom_options_survive_in_the_descriptor_set() {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let entity_key = pool.get_extension_by_name("cloudstate.entity_key").unwrap();
    let http = pool.get_extension_by_name("google.api.http").unwrap();

    let add = pool
        .get_message_by_name("com.example.shoppingcart.AddLineItem")
        .unwrap();
    let keys: Vec<String> = add
        .fields()
        .filter(|field| field.options().get_extension(&entity_key).as_ref() == &Value::Bool(true))
        .map(|field| field.name().to_owned())
        .collect();
    assert_eq!(keys, ["user_id"]);

    let cart = pool
        .get_service_by_name("com.example.shoppingcart.ShoppingCart")
        .unwrap();
    let get_cart = cart.methods().find(|m| m.name() == "GetCart").unwrap();
    let options = get_cart.options();
    let rule = options.get_extension(&http);
    let rule = rule.as_message().unwrap();
    assert_eq!(
        rule.get_field_by_name("get").unwrap().as_str(),
        Some("/carts/{user_id}")
    );
    let bindings = rule.get_field_by_name("additional_bindings").unwrap();
    let binding = bindings.as_list().unwrap()[0].as_message().unwrap().clone();
    assert_eq!(
        binding.get_field_by_name("get").unwrap().as_str(),
        Some("/carts/{user_id}/items")
    );
    assert_eq!(
        binding.get_field_by_name("response_body").unwrap().as_str(),
        Some("items")
    );

    let add_item = cart.methods().find(|m| m.name() == "AddItem").unwrap();
    let options = add_item.options();
    let rule = options.get_extension(&http);
    let rule = rule.as_message().unwrap();
    assert_eq!(
        rule.get_field_by_name("post").unwrap().as_str(),
        Some("/cart/{user_id}/items/add")
    );
    assert_eq!(rule.get_field_by_name("body").unwrap().as_str(), Some("*"));

    // The domain proto keeps its camelCase field names.
    let item_removed = pool
        .get_message_by_name("com.example.shoppingcart.persistence.ItemRemoved")
        .unwrap();
    assert_eq!(item_removed.get_field(1).unwrap().name(), "productId");
}

#[test]
fn generated_names_match_the_protocol() {
    use statehouse_schemas::cloudstate::{
        action::action_protocol_server, crdt::crdt_server, entity_discovery_server,
        eventsourced::event_sourced_server, valueentity::value_entity_server,
    };
    assert_eq!(event_sourced_server::SERVICE_NAME, protocol::EVENT_SOURCED);
    assert_eq!(value_entity_server::SERVICE_NAME, protocol::VALUE_ENTITY);
    assert_eq!(crdt_server::SERVICE_NAME, protocol::CRDT);
    assert_eq!(action_protocol_server::SERVICE_NAME, protocol::ACTION);
    assert_eq!(
        entity_discovery_server::SERVICE_NAME,
        "cloudstate.EntityDiscovery"
    );
    assert_eq!(
        EventSourcedStreamIn::type_url(),
        "type.googleapis.com/cloudstate.eventsourced.EventSourcedStreamIn"
    );
    assert_eq!(
        shoppingcart::AddLineItem::full_name(),
        "com.example.shoppingcart.AddLineItem"
    );
    assert_eq!(
        shoppingcart::persistence::ItemAdded::type_url(),
        protocol::type_url("com.example.shoppingcart.persistence.ItemAdded")
    );
    assert_eq!(
        protocol::grpc_path(protocol::EVENT_SOURCED, "handle"),
        "/cloudstate.eventsourced.EventSourced/handle"
    );
}

#[test]
fn not_owner_rides_in_the_status_details() {
    let not_owner = NotOwner {
        service: "shopping-cart".into(),
        partition: 3,
        owner_endpoint: "http://10.0.0.8:9100".into(),
        owner_epoch: 12,
        owner_processor_id: "processor-1".into(),
    };
    let status = not_owner.clone().into_status(
        tonic::Code::FailedPrecondition,
        "not the owner of partition 3",
    );
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "not the owner of partition 3");
    assert_eq!(NotOwner::from_status(&status), Some(not_owner));
    assert_eq!(
        NotOwner::from_status(&tonic::Status::unavailable("no details")),
        None
    );
}

mod loopback {
    //! A real gRPC server and client of generated services, over TCP.

    use std::net::SocketAddr;

    use statehouse_schemas::{
        FILE_DESCRIPTOR_SET,
        cloudstate::{
            EntitySpec, ProxyInfo, ServiceInfo, UserFunctionError,
            entity_discovery_client::EntityDiscoveryClient,
            entity_discovery_server::{EntityDiscovery, EntityDiscoveryServer},
        },
        statehouse::processor::v1::{
            HandleRequest, HandleResponse, NotOwner,
            processor_client::ProcessorClient,
            processor_server::{Processor, ProcessorServer},
        },
    };
    use tonic::{
        Request, Response, Status, codegen::tokio_stream::wrappers::TcpListenerStream,
        transport::Server,
    };

    use super::*;

    struct UserFunction;

    #[tonic::async_trait]
    impl EntityDiscovery for UserFunction {
        async fn discover(
            &self,
            request: Request<ProxyInfo>,
        ) -> Result<Response<EntitySpec>, Status> {
            let info = request.into_inner();
            Ok(Response::new(EntitySpec {
                proto: Bytes::from_static(FILE_DESCRIPTOR_SET),
                entities: vec![cloudstate::Entity {
                    entity_type: info.supported_entity_types[0].clone(),
                    service_name: "com.example.shoppingcart.ShoppingCart".into(),
                    persistence_id: "shopping-cart".into(),
                    passivation_strategy: None,
                }],
                service_info: Some(ServiceInfo {
                    protocol_major_version: 0,
                    protocol_minor_version: 2,
                    ..Default::default()
                }),
            }))
        }

        async fn report_error(
            &self,
            _: Request<UserFunctionError>,
        ) -> Result<Response<()>, Status> {
            Ok(Response::new(()))
        }
    }

    struct FencedProcessor;

    #[tonic::async_trait]
    impl Processor for FencedProcessor {
        async fn handle(
            &self,
            request: Request<HandleRequest>,
        ) -> Result<Response<HandleResponse>, Status> {
            let request = request.into_inner();
            Err(NotOwner {
                service: request.service,
                partition: request.partition,
                owner_endpoint: "http://elsewhere:9100".into(),
                owner_epoch: 2,
                owner_processor_id: "p2".into(),
            }
            .into_status(tonic::Code::Unavailable, "not owner"))
        }

        type HandleStreamedStream =
            tonic::codegen::tokio_stream::Empty<Result<HandleResponse, Status>>;

        async fn handle_streamed(
            &self,
            _: Request<tonic::Streaming<HandleRequest>>,
        ) -> Result<Response<Self::HandleStreamedStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn erase(
            &self,
            _: Request<statehouse_schemas::statehouse::processor::v1::EraseRequest>,
        ) -> Result<Response<statehouse_schemas::statehouse::processor::v1::EraseResponse>, Status>
        {
            Err(Status::unimplemented("not in this test"))
        }
    }

    #[tokio::test]
    async fn generated_clients_and_servers_talk_over_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            Server::builder()
                .add_service(EntityDiscoveryServer::new(UserFunction))
                .add_service(ProcessorServer::new(FencedProcessor))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let endpoint = format!("http://{addr}");

        let mut discovery = EntityDiscoveryClient::connect(endpoint.clone())
            .await
            .unwrap();
        let spec = discovery
            .discover(ProxyInfo {
                protocol_major_version: protocol::MAJOR_VERSION,
                protocol_minor_version: protocol::MINOR_VERSION,
                proxy_name: "statehouse".into(),
                proxy_version: "test".into(),
                supported_entity_types: vec![protocol::EVENT_SOURCED.into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.proto.as_ref(), FILE_DESCRIPTOR_SET);
        assert_eq!(spec.entities[0].entity_type, protocol::EVENT_SOURCED);
        assert_eq!(spec.service_info.unwrap().protocol_minor_version, 2);
        discovery
            .report_error(UserFunctionError {
                message: "x".into(),
            })
            .await
            .unwrap();

        let mut processor = ProcessorClient::connect(endpoint).await.unwrap();
        let status = processor
            .handle(HandleRequest {
                service: "shopping-cart".into(),
                method: "/com.example.shoppingcart.ShoppingCart/AddItem".into(),
                partition: 5,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let not_owner = NotOwner::from_status(&status).expect("NotOwner detail crosses the wire");
        assert_eq!(not_owner.partition, 5);
        assert_eq!(not_owner.owner_endpoint, "http://elsewhere:9100");

        server.abort();
    }
}
