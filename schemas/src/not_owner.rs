//! `NotOwner` as a gRPC status detail.

use bytes::Bytes;
use prost::{Message, Name};

use crate::{google::rpc::Status as RpcStatus, statehouse::processor::v1::NotOwner};

impl NotOwner {
    /// A status with `code` (UNAVAILABLE or FAILED_PRECONDITION) that carries
    /// this as a `google.rpc.Status` detail, so that a router can retry at
    /// the new owner.
    pub fn into_status(self, code: tonic::Code, message: impl Into<String>) -> tonic::Status {
        let message = message.into();
        let details = RpcStatus {
            code: code as i32,
            message: message.clone(),
            details: vec![prost_types::Any {
                type_url: Self::type_url(),
                value: self.encode_to_vec(),
            }],
        };
        tonic::Status::with_details(code, message, Bytes::from(details.encode_to_vec()))
    }

    /// The `NotOwner` detail of a status, if it has one.
    pub fn from_status(status: &tonic::Status) -> Option<NotOwner> {
        let details = RpcStatus::decode(status.details()).ok()?;
        let type_url = Self::type_url();
        details
            .details
            .iter()
            .find(|any| any.type_url == type_url)
            .and_then(|any| NotOwner::decode(any.value.as_slice()).ok())
    }
}
