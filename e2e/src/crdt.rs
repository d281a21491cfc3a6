//! The CRDT tests' tools: a processor's internal API as a router that picked that processor
//! calls it (`Processor/Handle`, `Processor/HandleStreamed`) for the Go TCK user function's CRDT
//! model, requests, and the model's values.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use statehouse_schemas::statehouse::processor::v1::{
    HandleRequest, HandleResponse, handle_response,
};
use tonic::transport::Channel;

use crate::proto::tck::crdt::{
    self as model, Request, RequestAction, Response, State, StreamedRequest, Update,
    UpdateWriteConsistency, request_action, state, update,
};

/// The service the TCK user function runs as in these tests.
pub const SERVICE: &str = "tck";
const PROCESS: &str = "/cloudstate.tck.model.crdt.CrdtTckModel/Process";
const STREAMED: &str = "/cloudstate.tck.model.crdt.CrdtTckModel/ProcessStreamed";

/// A processor's internal API.
#[derive(Clone)]
pub struct Direct(ProcessorClient<Channel>);

/// The elements of a subscription.
pub type Elements = tonic::Streaming<HandleResponse>;

impl Direct {
    /// The processor listening on `127.0.0.1:<internal_port>` (connects on first use).
    pub fn connect(internal_port: u16) -> Self {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{internal_port}"))
            .expect("a valid endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Direct(ProcessorClient::new(channel))
    }

    fn handle(method: &str, entity_id: &str, payload: Vec<u8>) -> HandleRequest {
        HandleRequest {
            service: SERVICE.into(),
            method: method.into(),
            entity_id: entity_id.into(),
            payload: Bytes::from(payload),
            partition: -1,
            ..HandleRequest::default()
        }
    }

    /// `Process`: the entity's value afterwards, or the failure's text.
    pub async fn process(&self, r: Request) -> Result<Option<State>, String> {
        let mut request = tonic::Request::new(Self::handle(PROCESS, &r.id, r.encode_to_vec()));
        request.set_timeout(Duration::from_secs(15));
        let response = self
            .0
            .clone()
            .handle(request)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        match response.outcome {
            Some(handle_response::Outcome::Reply(reply)) => Ok(Response::decode(reply.payload)
                .expect("a model response")
                .state),
            Some(handle_response::Outcome::Failure(f)) => Err(f.description),
            None => Ok(None),
        }
    }

    /// `Process` with no actions until it answers (a starting processor serves CRDTs once it
    /// caught up with the topic), for at most 60 s; `Entity deleted` is an answer.
    pub async fn answer(&self, id: &str) -> Result<Option<State>, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.process(request(id, vec![])).await {
                Err(e) if e != "Entity deleted" && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    /// `ProcessStreamed`: the stream of values.
    pub async fn subscribe(&self, r: StreamedRequest) -> Elements {
        let first = Self::handle(STREAMED, &r.id, r.encode_to_vec());
        self.0
            .clone()
            .handle_streamed(futures::stream::iter([first]))
            .await
            .expect("the processor accepts the subscription")
            .into_inner()
    }
}

/// The next value of a subscription within `within` (`None`: the stream ended).
pub async fn next(stream: &mut Elements, within: Duration) -> Option<Option<State>> {
    let element = tokio::time::timeout(within, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no element within {within:?}"))
        .expect("the stream is ok")?;
    match element.outcome {
        Some(handle_response::Outcome::Reply(reply)) => Some(
            Response::decode(reply.payload)
                .expect("a model response")
                .state,
        ),
        other => panic!("an element without a reply: {other:?}"),
    }
}

pub fn request(id: &str, actions: Vec<request_action::Action>) -> Request {
    Request {
        id: id.into(),
        actions: actions
            .into_iter()
            .map(|a| RequestAction { action: Some(a) })
            .collect(),
    }
}

/// An update at LOCAL.
pub fn up(u: update::Update) -> request_action::Action {
    up_at(u, UpdateWriteConsistency::Local)
}

pub fn up_at(u: update::Update, consistency: UpdateWriteConsistency) -> request_action::Action {
    request_action::Action::Update(Update {
        update: Some(u),
        write_consistency: consistency as i32,
    })
}

pub fn delete() -> request_action::Action {
    request_action::Action::Delete(model::Delete {})
}

pub fn value(v: state::Value) -> Option<State> {
    Some(State { value: Some(v) })
}

pub fn gcounter(v: u64) -> Option<State> {
    value(state::Value::Gcounter(model::GCounterValue { value: v }))
}

pub fn pncounter(v: i64) -> Option<State> {
    value(state::Value::Pncounter(model::PnCounterValue { value: v }))
}

pub fn orset(elements: &[&str]) -> Option<State> {
    value(state::Value::Orset(model::OrSetValue {
        elements: elements.iter().map(|e| e.to_string()).collect(),
    }))
}

pub fn vote(self_vote: bool, votes_for: i32, total_voters: i32) -> Option<State> {
    value(state::Value::Vote(model::VoteValue {
        self_vote,
        votes_for,
        total_voters,
    }))
}
