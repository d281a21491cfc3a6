//! gRPC server reflection, v1 and v1alpha (`docs/protocol.md`, "Exposing services to clients"),
//! over the registry's descriptors.
//!
//! * `list_services`: the reflection service itself (of the version asked), then every user
//!   service, sorted — the exact order the Cloudstate TCK checks.
//! * `file_by_filename`, `file_containing_symbol` (a service, method, message, enum or
//!   extension), `file_containing_extension`: the file and its transitive imports, encoded with
//!   their options. An unknown symbol gets an *empty* `FileDescriptorResponse`, not an error
//!   (the TCK checks this); an unknown file or extension gets a NOT_FOUND error response.
//! * `all_extension_numbers_of_type`: the extension numbers the descriptors know.

use std::collections::HashSet;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use prost_reflect::{DescriptorPool, FileDescriptor};
use tonic::{Code, Request, Response, Status, Streaming};

use statehouse_runtime::router::Registry;

/// A question, whatever the protocol version.
enum Question {
    File(String),
    Symbol(String),
    Extension {
        containing_type: String,
        number: i32,
    },
    ExtensionNumbers(String),
    ListServices,
    Nothing,
}

/// An answer, whatever the protocol version.
enum Answer {
    Files(Vec<Vec<u8>>),
    ExtensionNumbers {
        base_type_name: String,
        numbers: Vec<i32>,
    },
    Services(Vec<String>),
    Error {
        code: Code,
        message: String,
    },
}

fn answer(registry: &Registry, reflection_service: &str, question: Question) -> Answer {
    let routes = registry.routes();
    let pools = routes.indexes().iter().map(|index| index.pool());
    match question {
        Question::ListServices => {
            let mut services = vec![reflection_service.to_string()];
            services.extend(routes.grpc_services().map(str::to_string));
            Answer::Services(services)
        }
        Question::File(name) => match pools.clone().find_map(|pool| pool.get_file_by_name(&name)) {
            Some(file) => Answer::Files(with_imports(file)),
            None => Answer::Error {
                code: Code::NotFound,
                message: format!("file {name:?} not found"),
            },
        },
        Question::Symbol(symbol) => Answer::Files(
            pools
                .clone()
                .find_map(|pool| file_of_symbol(pool, &symbol))
                .map(with_imports)
                .unwrap_or_default(),
        ),
        Question::Extension {
            containing_type,
            number,
        } => {
            let found = pools.clone().find_map(|pool| {
                let message = pool.get_message_by_name(&containing_type)?;
                let number = u32::try_from(number).ok()?;
                message
                    .extensions()
                    .find(|e| e.number() == number)
                    .map(|e| e.parent_file())
            });
            match found {
                Some(file) => Answer::Files(with_imports(file)),
                None => Answer::Error {
                    code: Code::NotFound,
                    message: format!("no extension {number} of {containing_type:?}"),
                },
            }
        }
        Question::ExtensionNumbers(type_name) => {
            let mut found = false;
            let mut numbers = Vec::new();
            for pool in pools {
                if let Some(message) = pool.get_message_by_name(&type_name) {
                    found = true;
                    numbers.extend(
                        message
                            .extensions()
                            .filter_map(|e| i32::try_from(e.number()).ok()),
                    );
                }
            }
            numbers.sort_unstable();
            numbers.dedup();
            if found {
                Answer::ExtensionNumbers {
                    base_type_name: type_name,
                    numbers,
                }
            } else {
                Answer::Error {
                    code: Code::NotFound,
                    message: format!("type {type_name:?} not found"),
                }
            }
        }
        Question::Nothing => Answer::Error {
            code: Code::InvalidArgument,
            message: "the request asks nothing".into(),
        },
    }
}

fn file_of_symbol(pool: &DescriptorPool, symbol: &str) -> Option<FileDescriptor> {
    let symbol = symbol.strip_prefix('.').unwrap_or(symbol);
    if let Some(service) = pool.get_service_by_name(symbol) {
        return Some(service.parent_file());
    }
    if let Some(message) = pool.get_message_by_name(symbol) {
        return Some(message.parent_file());
    }
    if let Some(e) = pool.get_enum_by_name(symbol) {
        return Some(e.parent_file());
    }
    if let Some(extension) = pool.get_extension_by_name(symbol) {
        return Some(extension.parent_file());
    }
    // `pkg.Service.Method`, `pkg.Message.field`
    let (parent, member) = symbol.rsplit_once('.')?;
    if let Some(service) = pool.get_service_by_name(parent)
        && service.methods().any(|m| m.name() == member)
    {
        return Some(service.parent_file());
    }
    let message = pool.get_message_by_name(parent)?;
    message
        .get_field_by_name(member)
        .map(|_| message.parent_file())
}

/// A file, then its imports (transitively), each once, encoded with their options.
fn with_imports(file: FileDescriptor) -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![file];
    while let Some(file) = stack.pop() {
        if !seen.insert(file.name().to_string()) {
            continue;
        }
        out.push(file.encode_to_vec());
        stack.extend(file.dependencies());
    }
    out
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Implements one version of the reflection service (the versions differ only in package).
macro_rules! reflection_version {
    ($module:ident, $service_name:literal) => {
        pub(crate) mod $module {
            use statehouse_schemas::grpc::reflection::$module as pb;

            use super::*;

            pub(crate) use pb::server_reflection_server::ServerReflectionServer as Server;

            /// The reflection service of this version.
            #[derive(Clone)]
            pub(crate) struct Reflection {
                pub(crate) registry: Registry,
            }

            /// The full name of this version's reflection service.
            pub(crate) const SERVICE: &str = $service_name;

            fn question(request: &pb::ServerReflectionRequest) -> Question {
                use pb::server_reflection_request::MessageRequest as Q;
                match &request.message_request {
                    Some(Q::FileByFilename(name)) => Question::File(name.clone()),
                    Some(Q::FileContainingSymbol(symbol)) => Question::Symbol(symbol.clone()),
                    Some(Q::FileContainingExtension(e)) => Question::Extension {
                        containing_type: e.containing_type.clone(),
                        number: e.extension_number,
                    },
                    Some(Q::AllExtensionNumbersOfType(t)) => Question::ExtensionNumbers(t.clone()),
                    Some(Q::ListServices(_)) => Question::ListServices,
                    None => Question::Nothing,
                }
            }

            fn response(
                request: pb::ServerReflectionRequest,
                answer: Answer,
            ) -> pb::ServerReflectionResponse {
                use pb::server_reflection_response::MessageResponse as R;
                let message = match answer {
                    Answer::Files(files) => R::FileDescriptorResponse(pb::FileDescriptorResponse {
                        file_descriptor_proto: files.into_iter().map(Into::into).collect(),
                    }),
                    Answer::ExtensionNumbers {
                        base_type_name,
                        numbers,
                    } => R::AllExtensionNumbersResponse(pb::ExtensionNumberResponse {
                        base_type_name,
                        extension_number: numbers,
                    }),
                    Answer::Services(names) => R::ListServicesResponse(pb::ListServiceResponse {
                        service: names
                            .into_iter()
                            .map(|name| pb::ServiceResponse { name })
                            .collect(),
                    }),
                    Answer::Error { code, message } => R::ErrorResponse(pb::ErrorResponse {
                        error_code: code as i32,
                        error_message: message,
                    }),
                };
                pb::ServerReflectionResponse {
                    valid_host: request.host.clone(),
                    original_request: Some(request),
                    message_response: Some(message),
                }
            }

            /// One answer per question (also usable without a stream, in tests).
            pub(crate) fn ask(
                registry: &Registry,
                request: pb::ServerReflectionRequest,
            ) -> pb::ServerReflectionResponse {
                let answer = answer(registry, SERVICE, question(&request));
                response(request, answer)
            }

            #[tonic::async_trait]
            impl pb::server_reflection_server::ServerReflection for Reflection {
                type ServerReflectionInfoStream = ResponseStream<pb::ServerReflectionResponse>;

                async fn server_reflection_info(
                    &self,
                    request: Request<Streaming<pb::ServerReflectionRequest>>,
                ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                    let registry = self.registry.clone();
                    // Answers are computed as the client reads them: no queue to bound.
                    let answers = request
                        .into_inner()
                        .map(move |question| question.map(|q| ask(&registry, q)));
                    Ok(Response::new(Box::pin(answers)))
                }
            }
        }
    };
}

reflection_version!(v1, "grpc.reflection.v1.ServerReflection");
reflection_version!(v1alpha, "grpc.reflection.v1alpha.ServerReflection");

#[cfg(test)]
mod tests {
    use prost::Message;
    use statehouse_schemas::grpc::reflection::{v1 as pb1, v1alpha as pb};

    use super::*;

    fn registry() -> Registry {
        crate::fuzzing::shopping_cart_registry()
    }

    fn ask(
        registry: &Registry,
        q: pb::server_reflection_request::MessageRequest,
    ) -> pb::server_reflection_response::MessageResponse {
        v1alpha::ask(
            registry,
            pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(q),
            },
        )
        .message_response
        .unwrap()
    }

    #[test]
    fn list_services_puts_reflection_first_then_sorted_services() {
        use pb::server_reflection_request::MessageRequest as Q;
        use pb::server_reflection_response::MessageResponse as R;
        let registry = registry();
        let R::ListServicesResponse(list) = ask(&registry, Q::ListServices(String::new())) else {
            panic!("not a service list");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "grpc.reflection.v1alpha.ServerReflection",
                "cloudstate.EntityDiscovery",
                "com.example.shoppingcart.ShoppingCart"
            ]
        );
        let v1 = v1::ask(
            &registry,
            pb1::ServerReflectionRequest {
                host: "h".into(),
                message_request: Some(
                    pb1::server_reflection_request::MessageRequest::ListServices(String::new()),
                ),
            },
        );
        assert_eq!(v1.valid_host, "h");
        let Some(pb1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            v1.message_response
        else {
            panic!("not a service list");
        };
        assert_eq!(list.service[0].name, "grpc.reflection.v1.ServerReflection");
        assert_eq!(list.service.len(), 3);
    }

    #[test]
    fn files_come_with_their_imports_and_unknown_symbols_are_empty() {
        use pb::server_reflection_request::MessageRequest as Q;
        use pb::server_reflection_response::MessageResponse as R;
        let registry = registry();
        let names = |r: R| -> Vec<String> {
            let R::FileDescriptorResponse(files) = r else {
                panic!("not files");
            };
            files
                .file_descriptor_proto
                .iter()
                .map(|b| {
                    prost_types::FileDescriptorProto::decode(b.as_ref())
                        .unwrap()
                        .name()
                        .to_string()
                })
                .collect()
        };
        let files = names(ask(
            &registry,
            Q::FileContainingSymbol("com.example.shoppingcart.ShoppingCart".into()),
        ));
        assert_eq!(files[0], "shoppingcart/shoppingcart.proto");
        for import in [
            "google/api/annotations.proto",
            "google/api/http.proto",
            "cloudstate/entity_key.proto",
            "google/protobuf/descriptor.proto",
            "google/protobuf/empty.proto",
        ] {
            assert!(
                files.iter().any(|f| f == import),
                "{import} missing from {files:?}"
            );
        }
        let method = names(ask(
            &registry,
            Q::FileContainingSymbol("com.example.shoppingcart.ShoppingCart.AddItem".into()),
        ));
        assert_eq!(method[0], "shoppingcart/shoppingcart.proto");
        let message = names(ask(
            &registry,
            Q::FileContainingSymbol("com.example.shoppingcart.Cart".into()),
        ));
        assert_eq!(message[0], "shoppingcart/shoppingcart.proto");
        assert!(
            names(ask(
                &registry,
                Q::FileContainingSymbol("no.such.Symbol".into())
            ))
            .is_empty()
        );
        let by_name = names(ask(
            &registry,
            Q::FileByFilename("google/api/http.proto".into()),
        ));
        assert_eq!(by_name, ["google/api/http.proto"]);
        assert!(matches!(
            ask(&registry, Q::FileByFilename("nope.proto".into())),
            R::ErrorResponse(pb::ErrorResponse { error_code: 5, .. })
        ));
        // The entity key option survives in the served file.
        let R::FileDescriptorResponse(files) = ask(
            &registry,
            Q::FileByFilename("shoppingcart/shoppingcart.proto".into()),
        ) else {
            panic!("not files");
        };
        let pool = DescriptorPool::decode(statehouse_schemas::FILE_DESCRIPTOR_SET).unwrap();
        let mut check = DescriptorPool::new();
        for name in [
            "google/protobuf/descriptor.proto",
            "google/protobuf/empty.proto",
            "google/api/http.proto",
            "google/api/annotations.proto",
            "cloudstate/entity_key.proto",
        ] {
            check
                .decode_file_descriptor_proto(
                    pool.get_file_by_name(name)
                        .unwrap()
                        .encode_to_vec()
                        .as_slice(),
                )
                .unwrap();
        }
        check
            .decode_file_descriptor_proto(files.file_descriptor_proto[0].as_ref())
            .unwrap();
        let field = check
            .get_message_by_name("com.example.shoppingcart.AddLineItem")
            .unwrap()
            .get_field_by_name("user_id")
            .unwrap();
        let key = check
            .get_extension_by_name("cloudstate.entity_key")
            .unwrap();
        assert!(field.options().has_extension(&key));

        let R::AllExtensionNumbersResponse(numbers) = ask(
            &registry,
            Q::AllExtensionNumbersOfType("google.protobuf.FieldOptions".into()),
        ) else {
            panic!("not extension numbers");
        };
        assert!(numbers.extension_number.contains(&1080), "{numbers:?}");
        let R::FileDescriptorResponse(ext) = ask(
            &registry,
            Q::FileContainingExtension(pb::ExtensionRequest {
                containing_type: "google.protobuf.FieldOptions".into(),
                extension_number: 1080,
            }),
        ) else {
            panic!("not files");
        };
        assert_eq!(
            prost_types::FileDescriptorProto::decode(ext.file_descriptor_proto[0].as_ref())
                .unwrap()
                .name(),
            "cloudstate/entity_key.proto"
        );
    }
}
