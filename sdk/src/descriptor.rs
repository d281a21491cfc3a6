//! The file descriptor set sent at discovery.
//!
//! The set is read only as far as needed (file names, packages, imports,
//! service names) and each file is passed on as its original bytes:
//! decoding into `prost_types::FileDescriptorProto` and re-encoding would
//! drop the custom options the proxy relies on (`cloudstate.entity_key`,
//! `google.api.http`, `cloudstate.eventing`).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use prost::Message;

use crate::Error;

/// `google.protobuf.FileDescriptorSet`, files kept as raw bytes.
#[derive(Clone, PartialEq, Message)]
struct RawFileSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

/// The fields of `google.protobuf.FileDescriptorProto` we look at.
#[derive(Clone, PartialEq, Message)]
struct FileHeader {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    package: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceHeader>,
}

/// The fields of `google.protobuf.ServiceDescriptorProto` we look at.
#[derive(Clone, PartialEq, Message)]
struct ServiceHeader {
    #[prost(string, tag = "1")]
    name: String,
}

/// Keeps the files that declare `services` and everything they import,
/// transitively, in the order of the input set, byte for byte.
///
/// Fails if a service is not declared in the set or an import is missing.
pub(crate) fn prune_for_services(set: &[u8], services: &[&str]) -> Result<Bytes, Error> {
    let raw = RawFileSet::decode(set).map_err(Error::InvalidDescriptors)?;
    let headers = raw
        .file
        .iter()
        .map(|bytes| FileHeader::decode(bytes.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::InvalidDescriptors)?;
    let by_name: HashMap<&str, usize> = headers
        .iter()
        .enumerate()
        .map(|(index, header)| (header.name.as_str(), index))
        .collect();

    let mut wanted = Vec::new();
    for service in services {
        let found = headers.iter().position(|header| {
            header.service.iter().any(|declared| {
                let full = if header.package.is_empty() {
                    declared.name.clone()
                } else {
                    format!("{}.{}", header.package, declared.name)
                };
                full == *service
            })
        });
        match found {
            Some(index) => wanted.push(index),
            None => {
                return Err(Error::ServiceNotFound {
                    service: (*service).to_owned(),
                });
            }
        }
    }

    let mut keep = HashSet::new();
    while let Some(index) = wanted.pop() {
        if !keep.insert(index) {
            continue;
        }
        let header = &headers[index];
        for dependency in &header.dependency {
            match by_name.get(dependency.as_str()) {
                Some(&dep) => wanted.push(dep),
                None => {
                    return Err(Error::MissingDependency {
                        file: header.name.clone(),
                        dependency: dependency.clone(),
                    });
                }
            }
        }
    }

    let pruned = RawFileSet {
        file: raw
            .file
            .into_iter()
            .enumerate()
            .filter(|(index, _)| keep.contains(index))
            .map(|(_, bytes)| bytes)
            .collect(),
    };
    Ok(pruned.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use prost_types::{FileDescriptorProto, FileDescriptorSet, ServiceDescriptorProto};

    use super::*;

    fn file(name: &str, package: &str, deps: &[&str], services: &[&str]) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some(package.into()),
            dependency: deps.iter().map(|d| (*d).to_owned()).collect(),
            service: services
                .iter()
                .map(|s| ServiceDescriptorProto {
                    name: Some((*s).to_owned()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(set: &[u8]) -> Vec<String> {
        FileDescriptorSet::decode(set)
            .map(|set| set.file.into_iter().filter_map(|f| f.name).collect())
            .unwrap_or_default()
    }

    #[test]
    fn keeps_the_import_closure_in_order() {
        let set = FileDescriptorSet {
            file: vec![
                file("a.proto", "x", &[], &[]),
                file("unrelated.proto", "y", &[], &["Other"]),
                file("b.proto", "x", &["a.proto"], &[]),
                file("svc.proto", "x.api", &["b.proto"], &["Svc"]),
            ],
        }
        .encode_to_vec();

        let pruned = prune_for_services(&set, &["x.api.Svc"]);
        assert_eq!(
            pruned.as_deref().map(names).ok(),
            Some(vec!["a.proto".into(), "b.proto".into(), "svc.proto".into()])
        );
        assert!(matches!(
            prune_for_services(&set, &["x.Svc"]),
            Err(Error::ServiceNotFound { service }) if service == "x.Svc"
        ));

        let broken = FileDescriptorSet {
            file: vec![file("svc.proto", "x", &["gone.proto"], &["Svc"])],
        }
        .encode_to_vec();
        assert!(matches!(
            prune_for_services(&broken, &["x.Svc"]),
            Err(Error::MissingDependency { dependency, .. }) if dependency == "gone.proto"
        ));
        assert!(matches!(
            prune_for_services(&[0xff, 0xff], &["x.Svc"]),
            Err(Error::InvalidDescriptors(_))
        ));
    }
}
