//! Direct messages and request-response between agents.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::CloudEvent;

/// `POST /api/v1/messages` (a direct message) and `POST /api/v1/requests`
/// (a request that waits for its reply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// The recipient agent's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Or: any live agent of this type (the least loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_type: Option<String>,
    /// The sending agent's id, if an agent sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The event type (default `message`, or `request` for requests).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// What the message is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Instead of `data`: a sealed message (end-to-end encrypted to the
    /// recipient, signed by the sending agent; `docs/sealed-messages.md`).
    /// It names the recipient, the sender and the correlation id itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub sealed: Option<switchboard_seal::SealedMessage>,
    /// Ties the message to its reply (made when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Requests only: how long to wait for the reply (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A direct message, stored in the recipient's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageSent {
    /// The message's event id.
    pub id: String,
    /// The recipient.
    pub to: String,
    /// Its inbox topic (`inbox.{agent id}`).
    pub topic: String,
    /// Its offset in the log.
    pub offset: u64,
    /// The correlation id.
    pub correlation_id: String,
}

/// The reply to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestReply {
    /// The agent asked.
    pub to: String,
    /// The correlation id.
    pub correlation_id: String,
    /// Milliseconds from the request to the reply.
    pub elapsed_ms: u64,
    /// The reply event.
    pub reply: CloudEvent,
}
