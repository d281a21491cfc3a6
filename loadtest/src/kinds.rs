//! Calls to the kinds beyond event sourcing, for latency measurements: a value-entity update, a
//! CRDT (GCounter) increment at a write consistency and a unary action of the Cloudstate TCK
//! models that the Go SDK's TCK user function serves
//! (`github.com/cloudstateio/go-support` v0.3.0, `tck/cmd/tck_eventsourced`). The request
//! messages are declared here with the TCK's field numbers (no generated client needed).

use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// `cloudstate.tck.model.valueentity.ValueEntityTckModel/Process`.
pub const VALUE_PROCESS: &str = "/cloudstate.tck.model.valueentity.ValueEntityTckModel/Process";
/// `cloudstate.tck.model.action.ActionTckModel/ProcessUnary`.
pub const ACTION_UNARY: &str = "/cloudstate.tck.model.action.ActionTckModel/ProcessUnary";

/// `cloudstate.tck.model.crdt.CrdtTckModel/Process`.
pub const CRDT_PROCESS: &str = "/cloudstate.tck.model.crdt.CrdtTckModel/Process";

/// `crdt.Request{id, actions: [update {gcounter {increment}, write_consistency}]}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CrdtRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, repeated, tag = "2")]
    pub actions: Vec<CrdtAction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CrdtAction {
    #[prost(message, optional, tag = "1")]
    pub update: Option<CrdtUpdate>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CrdtUpdate {
    #[prost(message, optional, tag = "1")]
    pub gcounter: Option<Count>,
    /// 0 LOCAL, 1 MAJORITY, 2 ALL.
    #[prost(int32, tag = "9")]
    pub write_consistency: i32,
}

/// `GCounterUpdate{increment}` and `GCounterValue{value}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Count {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `crdt.Response{state: {gcounter: {value}}}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CrdtResponse {
    #[prost(message, optional, tag = "1")]
    pub state: Option<CrdtState>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CrdtState {
    #[prost(message, optional, tag = "1")]
    pub gcounter: Option<Count>,
}

/// `valueentity.Request{id, actions: [update {value}]}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, repeated, tag = "2")]
    pub actions: Vec<ValueAction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueAction {
    #[prost(message, optional, tag = "1")]
    pub update: Option<Text>,
}

/// A message whose field 1 is a string (`Update`, `Reply`, `Response`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Text {
    #[prost(string, tag = "1")]
    pub value: String,
}

/// `action.Request{groups: [{steps: [reply {message}]}]}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionRequest {
    #[prost(message, repeated, tag = "1")]
    pub groups: Vec<ActionGroup>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionGroup {
    #[prost(message, repeated, tag = "1")]
    pub steps: Vec<ActionStep>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionStep {
    #[prost(message, optional, tag = "1")]
    pub reply: Option<Text>,
}

/// A client of both methods over one channel.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc<Channel>,
}

impl Client {
    pub async fn connect(target: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Channel::from_shared(target.to_string())
            .expect("a valid endpoint")
            .connect()
            .await?;
        Ok(Self {
            grpc: Grpc::new(channel),
        })
    }

    async fn call<Req: prost::Message + 'static, Res: prost::Message + Default + 'static>(
        &mut self,
        path: &'static str,
        request: Req,
    ) -> Result<Res, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, Res>::default();
        let response = self
            .grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(response.into_inner())
    }

    /// Increment GCounter `id` by 1 at `consistency` (0 LOCAL, 1 MAJORITY, 2 ALL); answers the
    /// new value.
    pub async fn increment(&mut self, id: &str, consistency: i32) -> Result<u64, tonic::Status> {
        let request = CrdtRequest {
            id: id.into(),
            actions: vec![CrdtAction {
                update: Some(CrdtUpdate {
                    gcounter: Some(Count { value: 1 }),
                    write_consistency: consistency,
                }),
            }],
        };
        let response: CrdtResponse = self.call(CRDT_PROCESS, request).await?;
        Ok(response
            .state
            .and_then(|s| s.gcounter)
            .map_or(0, |c| c.value))
    }

    /// Set value entity `id` to `value`; answers the new value.
    pub async fn update_value(&mut self, id: &str, value: &str) -> Result<String, tonic::Status> {
        let request = ValueRequest {
            id: id.into(),
            actions: vec![ValueAction {
                update: Some(Text {
                    value: value.into(),
                }),
            }],
        };
        Ok(self.call::<_, Text>(VALUE_PROCESS, request).await?.value)
    }

    /// A unary action that replies `message`.
    pub async fn action(&mut self, message: &str) -> Result<String, tonic::Status> {
        let request = ActionRequest {
            groups: vec![ActionGroup {
                steps: vec![ActionStep {
                    reply: Some(Text {
                        value: message.into(),
                    }),
                }],
            }],
        };
        Ok(self.call::<_, Text>(ACTION_UNARY, request).await?.value)
    }
}
