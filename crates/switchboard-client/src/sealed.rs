//! Sealed messages from the agent's side: registering keys (with proof of
//! possession), and sending, opening and answering messages that only
//! their recipient can read.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard_client::{Client, sealed::Channel};
//! use switchboard_seal::AgentKeys;
//! let keys = AgentKeys::generate("alice")?;
//! let hub = Client::new("http://127.0.0.1:7878")?.with_token("alice's token");
//! hub.register_keys(&keys, None).await?;
//! let alice = Channel::new(hub, keys);
//! let reply = alice.request("bob", b"what is 6 x 7?", 5_000).await?;
//! println!("{}", String::from_utf8_lossy(&reply.plaintext));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Map, Value};
use switchboard_seal::{
    AgentKeys, CONTENT_TYPE, Kind, Metadata, PublicKeys, ReplayGuard, SealError, SealedMessage,
};
use switchboard_wire::{
    AgentKey, AgentKeys as KeyDirectory, CloudEvent, KeyChallenge, KeyChallengeRequest,
    MessageSent, Payload, PublishEvent, RegisterKeysRequest, RevokeKeyRequest, SendMessageRequest,
};

use crate::{Client, ClientError, encode};

/// What can go wrong with a sealed message.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// The message, a key or a proof was refused here.
    #[error("{code}: {0}", code = .0.code())]
    Seal(#[from] SealError),
    /// The hub refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The event does not carry a sealed message.
    #[error("{0}")]
    NotSealed(String),
}

impl SealedError {
    /// A stable code: the seal error's, or the hub's problem code.
    pub fn code(&self) -> String {
        match self {
            Self::Seal(e) => e.code().to_owned(),
            Self::Client(e) => e
                .problem()
                .map_or_else(|| "HUB_ERROR".to_owned(), |p| p.code.clone()),
            Self::NotSealed(_) => "NOT_SEALED".to_owned(),
        }
    }
}

impl Client {
    /// An agent's public keys (current pair and history).
    pub async fn agent_keys(&self, agent_id: &str) -> Result<KeyDirectory, ClientError> {
        let path = format!("api/v1/agents/{}/keys", encode(agent_id));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// Registers `keys` for their agent, proving possession of both
    /// private keys; `current` (the keys registered now, if any) signs a
    /// rotation.
    pub async fn register_keys(
        &self,
        keys: &AgentKeys,
        current: Option<&AgentKeys>,
    ) -> Result<AgentKey, SealedError> {
        let agent = keys.agent_id();
        let public = keys.public();
        let path = format!("api/v1/agents/{}/keys/challenge", encode(agent));
        let challenge: KeyChallenge = self
            .send(
                Method::POST,
                &path,
                &[],
                Some(&KeyChallengeRequest {
                    signing_key: public.signing_b64(),
                    encryption_key: public.encryption_b64(),
                }),
            )
            .await?
            .1;
        let nonce = switchboard_seal::open_challenge(
            keys,
            &challenge.challenge_id,
            &switchboard_seal::Challenge {
                enc: challenge.enc,
                ciphertext: challenge.ciphertext,
            },
        )?;
        let statement = switchboard_seal::registration_statement(
            agent,
            &challenge.challenge_id,
            &nonce,
            public,
        );
        let path = format!("api/v1/agents/{}/keys", encode(agent));
        let req = RegisterKeysRequest {
            challenge_id: challenge.challenge_id,
            signing_key: public.signing_b64(),
            encryption_key: public.encryption_b64(),
            signature: switchboard_seal::b64(&keys.sign(&statement)),
            rotation_signature: current.map(|c| switchboard_seal::b64(&c.sign(&statement))),
        };
        Ok(self.send(Method::POST, &path, &[], Some(&req)).await?.1)
    }

    /// Revokes one of an agent's key pairs.
    pub async fn revoke_keys(
        &self,
        agent_id: &str,
        fingerprint: &str,
        reason: Option<String>,
    ) -> Result<AgentKey, ClientError> {
        let path = format!(
            "api/v1/agents/{}/keys/{}",
            encode(agent_id),
            encode(fingerprint)
        );
        Ok(self
            .send(
                Method::DELETE,
                &path,
                &[],
                Some(&RevokeKeyRequest { reason }),
            )
            .await?
            .1)
    }
}

/// A sealed message, opened.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Who sent it (verified).
    pub from: String,
    /// Its id.
    pub id: String,
    /// Message, request or reply.
    pub kind: Kind,
    /// The correlation id.
    pub correlation_id: String,
    /// When it was sealed (Unix ms).
    pub sent_at_ms: i64,
    /// Where a request's reply goes.
    pub reply_to: Option<String>,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
}

/// How long fetched public keys are used before they are fetched again,
/// unless the channel is told otherwise. A key the cache does not show as
/// current is fetched again at once; a revocation is seen by a recipient
/// within this time (the hub refuses to route for a revoked key at once).
pub const DEFAULT_DIRECTORY_TTL: Duration = Duration::from_secs(5);

/// An agent's end of sealed messaging: its keys, the directory of others'
/// public keys (fetched from the hub, cached briefly), and its replay
/// guard.
pub struct Channel {
    client: Client,
    keys: AgentKeys,
    directory: Mutex<HashMap<String, (Instant, KeyDirectory)>>,
    ttl: Duration,
    guard: Mutex<ReplayGuard>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("agent", &self.keys.agent_id())
            .finish_non_exhaustive()
    }
}

/// The replay window a channel accepts by default (either way of now).
pub const DEFAULT_WINDOW_MS: i64 = 5 * 60 * 1000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn public_of(k: &AgentKey) -> Result<PublicKeys, SealedError> {
    Ok(PublicKeys::from_b64(&k.signing_key, &k.encryption_key)?)
}

impl Channel {
    /// A channel for the agent `keys` belong to; `client` must carry that
    /// agent's credential.
    pub fn new(client: Client, keys: AgentKeys) -> Self {
        Self::with_window(client, keys, DEFAULT_WINDOW_MS)
    }

    /// The same, accepting messages sent up to `window_ms` from now.
    pub fn with_window(client: Client, keys: AgentKeys, window_ms: i64) -> Self {
        Self {
            client,
            keys,
            directory: Mutex::new(HashMap::new()),
            ttl: DEFAULT_DIRECTORY_TTL,
            guard: Mutex::new(ReplayGuard::new(window_ms)),
        }
    }

    /// Uses fetched public keys for at most `ttl` (zero: asks the hub for
    /// the sender's keys on every message).
    pub fn with_directory_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// This agent's keys.
    pub fn keys(&self) -> &AgentKeys {
        &self.keys
    }

    async fn directory(&self, agent: &str, fresh: bool) -> Result<KeyDirectory, SealedError> {
        if !fresh {
            let cached = self
                .directory
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(agent)
                .filter(|(at, _)| at.elapsed() < self.ttl)
                .map(|(_, d)| d.clone());
            if let Some(d) = cached {
                return Ok(d);
            }
        }
        let d = self.client.agent_keys(agent).await?;
        self.directory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(agent.to_owned(), (Instant::now(), d.clone()));
        Ok(d)
    }

    async fn recipient(&self, agent: &str) -> Result<PublicKeys, SealedError> {
        let d = self.directory(agent, false).await?;
        let current = d.current.ok_or_else(|| {
            SealError::WrongRecipient(format!("agent {agent} has no registered keys"))
        })?;
        public_of(&current)
    }

    /// The public keys `fingerprint` names among `agent`'s, refused when
    /// they were revoked or rotated out.
    async fn sender(&self, agent: &str, fingerprint: &str) -> Result<PublicKeys, SealedError> {
        let mut d = self.directory(agent, false).await?;
        let known = |d: &KeyDirectory| {
            d.keys
                .iter()
                .find(|k| k.fingerprint == fingerprint)
                .cloned()
        };
        let mut rec = known(&d);
        // Unknown or no longer current: the cache may be behind.
        if rec.as_ref().is_none_or(|k| k.status != "current") {
            d = self.directory(agent, true).await?;
            rec = known(&d);
        }
        let rec = rec.ok_or_else(|| SealError::UnknownKey(fingerprint.to_owned()))?;
        match rec.status.as_str() {
            "current" => public_of(&rec),
            "revoked" => Err(SealError::KeyRevoked(fingerprint.to_owned()).into()),
            _ => Err(SealError::KeyRotated(fingerprint.to_owned()).into()),
        }
    }

    /// Seals `plaintext` to `to` (its current keys).
    pub async fn seal(
        &self,
        to: &str,
        kind: Kind,
        correlation_id: Option<String>,
        plaintext: &[u8],
    ) -> Result<SealedMessage, SealedError> {
        let recipient = self.recipient(to).await?;
        let id = switchboard_seal::new_message_id()?;
        let meta = Metadata {
            correlation_id: correlation_id.unwrap_or_else(|| id.clone()),
            id,
            from: self.keys.agent_id().to_owned(),
            to: to.to_owned(),
            kind,
            sent_at_ms: now_ms(),
        };
        Ok(SealedMessage::seal(
            &self.keys, &recipient, meta, plaintext,
        )?)
    }

    /// Sends a sealed one-way message to `to`'s inbox.
    pub async fn send(&self, to: &str, plaintext: &[u8]) -> Result<MessageSent, SealedError> {
        let sealed = self.seal(to, Kind::Message, None, plaintext).await?;
        Ok(self
            .client
            .send_message(&SendMessageRequest {
                sealed: Some(sealed),
                ..Default::default()
            })
            .await?)
    }

    /// Sends a sealed request to `to` and opens its sealed reply (which
    /// must come from `to`, for this request).
    pub async fn request(
        &self,
        to: &str,
        plaintext: &[u8],
        timeout_ms: u64,
    ) -> Result<Opened, SealedError> {
        let sealed = self.seal(to, Kind::Request, None, plaintext).await?;
        let correlation = sealed.correlation_id.clone();
        let answer = self
            .client
            .request(&SendMessageRequest {
                sealed: Some(sealed),
                timeout_ms: Some(timeout_ms),
                ..Default::default()
            })
            .await?;
        let reply = self.open(&answer.reply).await?;
        if reply.from != to || reply.kind != Kind::Reply || reply.correlation_id != correlation {
            return Err(SealError::WrongRecipient(format!(
                "the reply is a {} from {} for {}, not a reply from {to} for {correlation}",
                reply.kind.as_str(),
                reply.from,
                reply.correlation_id
            ))
            .into());
        }
        Ok(reply)
    }

    /// Verifies and decrypts a sealed message from an event: addressed to
    /// this agent and its current keys, signed by the sender's current
    /// keys, inside the window, and not seen before.
    pub async fn open(&self, event: &CloudEvent) -> Result<Opened, SealedError> {
        if event.datacontenttype != CONTENT_TYPE {
            return Err(SealedError::NotSealed(format!(
                "event {} is {}, not a sealed message",
                event.id, event.datacontenttype
            )));
        }
        let data = event
            .data
            .clone()
            .ok_or_else(|| SealedError::NotSealed(format!("event {} has no data", event.id)))?;
        let sealed: SealedMessage = serde_json::from_value(data)
            .map_err(|e| SealedError::NotSealed(format!("event {}: {e}", event.id)))?;
        let reply_to = event
            .extensions
            .get("replyto")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.open_sealed(&sealed, reply_to).await
    }

    /// [`Channel::open`] for a sealed message itself.
    pub async fn open_sealed(
        &self,
        sealed: &SealedMessage,
        reply_to: Option<String>,
    ) -> Result<Opened, SealedError> {
        sealed.check_form()?;
        let sender = self.sender(&sealed.from, &sealed.sender_key).await?;
        let plaintext = sealed.open(&self.keys, &sender)?;
        self.guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(&sealed.from, &sealed.id, sealed.sent_at, now_ms())?;
        Ok(Opened {
            from: sealed.from.clone(),
            id: sealed.id.clone(),
            kind: sealed.kind,
            correlation_id: sealed.correlation_id.clone(),
            sent_at_ms: sealed.sent_at,
            reply_to,
            plaintext,
        })
    }

    /// Answers a sealed request: the reply is sealed to its sender and
    /// published on its reply topic.
    pub async fn reply(&self, request: &Opened, plaintext: &[u8]) -> Result<(), SealedError> {
        let Some(topic) = &request.reply_to else {
            return Err(SealedError::NotSealed(format!(
                "message {} from {} is not a request: it has no reply topic",
                request.id, request.from
            )));
        };
        let sealed = self
            .seal(
                &request.from,
                Kind::Reply,
                Some(request.correlation_id.clone()),
                plaintext,
            )
            .await?;
        let mut extensions = Map::new();
        extensions.insert(
            "correlationid".into(),
            Value::String(request.correlation_id.clone()),
        );
        extensions.insert("targetagent".into(), Value::String(request.from.clone()));
        let event = PublishEvent {
            source: Some(format!("/agents/{}", self.keys.agent_id())),
            event_type: Some("reply".into()),
            topic: Some(topic.clone()),
            datacontenttype: Some(CONTENT_TYPE.into()),
            data: Some(Payload::from(serde_json::to_value(&sealed).map_err(
                |e| SealedError::NotSealed(format!("the reply as JSON: {e}")),
            )?)),
            extensions,
            ..Default::default()
        };
        self.client.publish(&[event]).await?;
        Ok(())
    }
}
