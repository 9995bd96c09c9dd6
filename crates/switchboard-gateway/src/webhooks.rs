//! Webhooks, signed and verified per the Standard Webhooks specification:
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`, keyed by the secret's bytes; a secret is
//! written `whsec_<base64>`).
//!
//! Outbound: a webhook subscribes a URL to topics. Each is a consumer
//! group (`webhook-{name}`), so delivery is at least once, redelivered
//! with the group's backoff and dead-lettered after `max_attempts`; a
//! worker per webhook posts each event (its CloudEvents JSON) signed, and
//! acknowledges a 2xx. Every attempt goes to the delivery log.
//!
//! Inbound: a hook has a secret and a topic. A request to
//! `POST /api/v1/hooks/{name}` is accepted only with a valid signature and
//! a timestamp within the tolerance (so an old request cannot be
//! replayed); its `webhook-id` becomes the event's id, so the bus's
//! deduplication answers a repeat without publishing it twice.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use switchboard_bus::groups::{Backoff, BackoffKind, ConsumerSpec, GroupSpec, GroupStart, Outcome};
use switchboard_bus::{Event, Filter, NewEvent, Pattern};
use switchboard_core::{FieldErrors, StorageError, UnixMillis, ident};
use tokio_util::sync::CancellationToken;

use crate::store::DeliveryRecord;
use crate::{Gateway, GatewayError};

/// The store kind of outbound webhooks.
pub(crate) const OUTBOUND: &str = "webhook";
/// The store kind of inbound hooks.
pub(crate) const INBOUND: &str = "hook";
/// The prefix of a webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Delivery attempts kept in the log per webhook.
const LOG_KEEP: u32 = 1000;

/// Signs `body` as message `id` at `timestamp` (Unix seconds): the
/// `webhook-signature` value.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The key bytes of a `whsec_…` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(b64)
        .map_err(|_| "must be whsec_ followed by base64".to_owned())?;
    if key.len() < 16 {
        return Err("must hold at least 16 bytes of key".into());
    }
    Ok(key)
}

/// A new random secret.
pub fn new_secret() -> String {
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// Checks an inbound request's signature and timestamp; returns its id.
pub fn verify(
    key: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now_s: i64,
) -> Result<String, String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the {name} header is missing"))
    };
    let id = get("webhook-id")?;
    let ts: i64 = get("webhook-timestamp")?
        .parse()
        .map_err(|_| "webhook-timestamp must be Unix seconds".to_owned())?;
    let signatures = get("webhook-signature")?;
    let tol = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if (now_s - ts).abs() > tol {
        return Err(format!(
            "webhook-timestamp is {}s from now, more than the {tol}s allowed (an old or replayed request)",
            now_s - ts
        ));
    }
    let expected = sign(key, id, ts, body);
    let matched = signatures
        .split(' ')
        .filter(|s| s.starts_with("v1,"))
        .any(|s| s.as_bytes().ct_eq(expected.as_bytes()).into());
    if !matched {
        return Err("no webhook-signature matches the body and the hook's secret".into());
    }
    if id.len() > 256 {
        return Err("webhook-id is longer than 256 characters".into());
    }
    Ok(id.to_owned())
}

/// An outbound webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSpec {
    /// Its name.
    pub name: String,
    /// Where events are posted.
    pub url: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// A payload filter (see the bus's filters).
    #[serde(default)]
    pub filter: serde_json::Map<String, serde_json::Value>,
    /// The signing secret (`whsec_…`).
    pub secret: String,
    /// Deliveries of one event before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's delay; later ones grow exponentially.
    #[serde(with = "ms")]
    pub retry_after: Duration,
    /// How long the receiver has to answer.
    #[serde(with = "ms")]
    pub timeout: Duration,
}

impl WebhookSpec {
    /// Checks every field.
    pub fn check(&self, errs: &mut FieldErrors) {
        if let Err(r) = ident::check(&self.name) {
            errs.push("name", r);
        }
        match self.url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => errs.push("url", "must be an absolute http or https URL"),
        }
        if self.topics.is_empty() {
            errs.push("topics", "give at least one topic pattern");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(r) = Pattern::parse(t) {
                errs.push(format!("topics[{i}]"), r);
            }
        }
        if let Err(r) = Filter::parse(&self.filter) {
            errs.push("filter", r);
        }
        if let Err(r) = secret_key(&self.secret) {
            errs.push("secret", r);
        }
        if !(1..=100).contains(&self.max_attempts) {
            errs.push("max_attempts", "must be 1 to 100");
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(120) {
            errs.push("timeout_ms", "must be 1 to 120000");
        }
        if self.retry_after.is_zero() {
            errs.push("retry_after_ms", "must be at least 1");
        }
    }

    fn group(&self) -> String {
        format!("webhook-{}", self.name)
    }
}

/// An inbound hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Its name (`POST /api/v1/hooks/{name}`).
    pub name: String,
    /// The secret senders sign with (`whsec_…`).
    pub secret: String,
    /// The topic its requests are published on.
    pub topic: String,
    /// How far a request's timestamp may be from now.
    #[serde(with = "ms")]
    pub tolerance: Duration,
}

impl HookSpec {
    /// Checks every field.
    pub fn check(&self, errs: &mut FieldErrors) {
        if let Err(r) = ident::check(&self.name) {
            errs.push("name", r);
        }
        if let Err(r) = secret_key(&self.secret) {
            errs.push("secret", r);
        }
        if let Err(r) = switchboard_bus::topic::check_topic(&self.topic) {
            errs.push("topic", r);
        }
        if self.tolerance.is_zero() || self.tolerance > Duration::from_secs(3600) {
            errs.push("tolerance_ms", "must be 1 to 3600000");
        }
    }
}

/// The webhooks in memory.
#[derive(Default)]
pub struct Webhooks {
    outbound: RwLock<HashMap<String, (WebhookSpec, CancellationToken)>>,
    inbound: RwLock<HashMap<String, HookSpec>>,
}

impl Webhooks {
    pub(crate) fn load(docs: Vec<(String, String)>) -> Result<Self, GatewayError> {
        let w = Webhooks::default();
        for (kind, doc) in docs {
            let corrupt = |e: serde_json::Error| {
                GatewayError::Storage(StorageError::new(
                    switchboard_core::StorageErrorKind::Corrupt,
                    format!("gateway {kind}: {e}"),
                ))
            };
            if kind == OUTBOUND {
                let spec: WebhookSpec = serde_json::from_str(&doc).map_err(corrupt)?;
                w.write_out()
                    .insert(spec.name.clone(), (spec, CancellationToken::new()));
            } else {
                let spec: HookSpec = serde_json::from_str(&doc).map_err(corrupt)?;
                w.write_in().insert(spec.name.clone(), spec);
            }
        }
        Ok(w)
    }

    fn write_out(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (WebhookSpec, CancellationToken)>> {
        self.outbound
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_in(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HookSpec>> {
        self.inbound
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every outbound webhook, by name.
    pub fn outbound(&self) -> Vec<WebhookSpec> {
        let mut v: Vec<_> = self
            .outbound
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|(s, _)| s.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every inbound hook, by name.
    pub fn inbound(&self) -> Vec<HookSpec> {
        let mut v: Vec<_> = self
            .inbound
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn hook(&self, name: &str) -> Option<HookSpec> {
        self.inbound
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

/// What an accepted inbound hook request became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The event's id (the `webhook-id`).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its offset in the log.
    pub offset: u64,
}

impl Gateway {
    /// Creates or replaces an outbound webhook and starts delivering to it.
    /// Changing its topics or filter starts it over from now.
    pub async fn put_webhook(&self, spec: WebhookSpec) -> Result<WebhookSpec, GatewayError> {
        let mut errs = FieldErrors::new();
        spec.check(&mut errs);
        errs.finish().map_err(GatewayError::Invalid)?;
        let _w = self.0.writes.lock().await;
        let previous = self
            .0
            .webhooks
            .outbound
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&spec.name)
            .map(|(s, stop)| (s.clone(), stop.clone()));
        let group = group_spec(&spec)?;
        if let Some((old, stop)) = &previous {
            stop.cancel();
            if old.topics != spec.topics
                || old.filter != spec.filter
                || old.max_attempts != spec.max_attempts
                || old.retry_after != spec.retry_after
                || old.timeout != spec.timeout
            {
                let _ = self.0.groups.delete(&old.group()).await;
            }
        }
        self.0
            .groups
            .create(group, GroupStart::Now)
            .await
            .map_err(|e| {
                GatewayError::BadRequest(format!("cannot create the webhook's consumer group: {e}"))
            })?;
        let doc =
            serde_json::to_string(&spec).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        self.0.store.put_gateway(OUTBOUND, &spec.name, &doc).await?;
        let stop = self.0.stop.child_token();
        self.0
            .webhooks
            .write_out()
            .insert(spec.name.clone(), (spec.clone(), stop.clone()));
        self.spawn_delivery(spec.clone(), stop);
        Ok(spec)
    }

    /// Removes an outbound webhook, its group and what was pending.
    pub async fn delete_webhook(&self, name: &str) -> Result<(), GatewayError> {
        let _w = self.0.writes.lock().await;
        let Some((spec, stop)) = self.0.webhooks.write_out().remove(name) else {
            return Err(GatewayError::NotFound {
                kind: "webhook",
                name: name.to_owned(),
            });
        };
        stop.cancel();
        let _ = self.0.groups.delete(&spec.group()).await;
        self.0.store.delete_gateway(OUTBOUND, name).await?;
        Ok(())
    }

    /// A webhook's delivery log, newest first.
    pub async fn deliveries(
        &self,
        name: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, GatewayError> {
        if !self
            .0
            .webhooks
            .outbound
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(name)
        {
            return Err(GatewayError::NotFound {
                kind: "webhook",
                name: name.to_owned(),
            });
        }
        Ok(self.0.store.deliveries(name, limit).await?)
    }

    /// Creates or replaces an inbound hook.
    pub async fn put_hook(&self, spec: HookSpec) -> Result<HookSpec, GatewayError> {
        let mut errs = FieldErrors::new();
        spec.check(&mut errs);
        errs.finish().map_err(GatewayError::Invalid)?;
        let _w = self.0.writes.lock().await;
        let doc =
            serde_json::to_string(&spec).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        self.0.store.put_gateway(INBOUND, &spec.name, &doc).await?;
        self.0
            .webhooks
            .write_in()
            .insert(spec.name.clone(), spec.clone());
        Ok(spec)
    }

    /// Removes an inbound hook.
    pub async fn delete_hook(&self, name: &str) -> Result<(), GatewayError> {
        let _w = self.0.writes.lock().await;
        if self.0.webhooks.write_in().remove(name).is_none() {
            return Err(GatewayError::NotFound {
                kind: "hook",
                name: name.to_owned(),
            });
        }
        self.0.store.delete_gateway(INBOUND, name).await?;
        Ok(())
    }

    /// Verifies an inbound request to hook `name` and publishes it.
    pub async fn receive_hook(
        &self,
        name: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Received, GatewayError> {
        let hook = self
            .0
            .webhooks
            .hook(name)
            .ok_or_else(|| GatewayError::NotFound {
                kind: "hook",
                name: name.to_owned(),
            })?;
        let key = secret_key(&hook.secret).map_err(GatewayError::Unverified)?;
        let now = chrono_now_s();
        let id =
            verify(&key, headers, body, hook.tolerance, now).map_err(GatewayError::Unverified)?;
        let data: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
        });
        let event_type = data
            .get("type")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 255)
            .map_or_else(|| format!("hook.{name}"), str::to_owned);
        let mut event = NewEvent::hub(
            &hook.topic,
            &format!("/switchboard/hooks/{name}"),
            &id,
            now * 1000,
            data,
        );
        event.id = id.clone();
        event.event_type = event_type;
        let stored =
            self.0.bus.publish(vec![event]).await.map_err(|e| {
                GatewayError::BadRequest(format!("the hook's event was refused: {e}"))
            })?;
        match stored.into_iter().next() {
            Some(switchboard_bus::Accepted::Stored(e)) => Ok(Received {
                id,
                topic: e.topic.clone(),
                offset: e.offset,
            }),
            _ => Err(GatewayError::BadRequest(
                "the hook's event was not stored".into(),
            )),
        }
    }

    /// Starts delivering to every webhook loaded at start.
    pub fn start_webhooks(&self) {
        for (spec, stop) in self
            .0
            .webhooks
            .outbound
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            self.spawn_delivery(spec.clone(), stop.clone());
        }
    }

    fn spawn_delivery(&self, spec: WebhookSpec, stop: CancellationToken) {
        let gateway = self.clone();
        self.0.tasks.spawn_on(
            async move {
                gateway.deliver(spec, stop).await;
            },
            &self.0.runtime,
        );
    }

    async fn deliver(&self, spec: WebhookSpec, stop: CancellationToken) {
        let group = spec.group();
        let key = match secret_key(&spec.secret) {
            Ok(k) => Arc::new(k),
            Err(error) => {
                tracing::error!(webhook = %spec.name, %error, "webhook secret unusable; not delivering");
                return;
            }
        };
        let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
        'attach: loop {
            let consumer = self
                .0
                .groups
                .consume(
                    &group,
                    ConsumerSpec {
                        priority: 0,
                        max_in_flight: 16,
                    },
                )
                .await;
            let mut consumer = match consumer {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(webhook = %spec.name, %error, "cannot attach to the webhook's group; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue 'attach,
                    }
                }
            };
            loop {
                let d = tokio::select! {
                    () = stop.cancelled() => return,
                    d = consumer.next() => d,
                };
                let Some(d) = d else { continue 'attach };
                let Ok(slot) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let (gateway, spec, key) = (self.clone(), spec.clone(), key.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    gateway
                        .deliver_one(&spec, &key, &d.event, d.offset, d.attempt)
                        .await;
                });
            }
        }
    }

    async fn deliver_one(
        &self,
        spec: &WebhookSpec,
        key: &[u8],
        event: &Event,
        offset: u64,
        attempt: u32,
    ) {
        let body = Bytes::from((self.0.render)(event).as_bytes().to_vec());
        let id = format!("msg_{offset}");
        let ts = chrono_now_s();
        let started = Instant::now();
        let req = Request::post(spec.url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", "switchboard-webhooks")
            .header("webhook-id", id.as_str())
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(key, &id, ts, &body))
            .body(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
        let outcome = match req {
            Err(e) => Err(e.to_string()),
            Ok(req) => {
                match tokio::time::timeout(spec.timeout, self.0.hook_client.request(req)).await {
                    Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.is_success() {
                            Ok(status.as_u16())
                        } else {
                            Err(format!("answered {status}"))
                        }
                    }
                }
            }
        };
        let record = DeliveryRecord {
            webhook: spec.name.clone(),
            offset,
            event_id: event.id.clone(),
            attempt,
            at: chrono_now_ms(),
            status: match &outcome {
                Ok(s) => Some(*s),
                Err(e) => e
                    .strip_prefix("answered ")
                    .and_then(|s| s.split(' ').next())
                    .and_then(|s| s.parse().ok()),
            },
            error: outcome.as_ref().err().cloned(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(error) = self.0.store.log_deliveries(&[record], LOG_KEEP).await {
            tracing::warn!(webhook = %spec.name, %error, "delivery log write failed");
        }
        self.0.metrics.webhook_delivery(&spec.name, outcome.is_ok());
        let settle = match outcome {
            Ok(_) => Outcome::Ack,
            Err(error) => Outcome::Nack { error, delay: None },
        };
        if let Err(error) = self.0.groups.settle(&spec.group(), offset, settle).await {
            tracing::debug!(webhook = %spec.name, offset, %error, "settling a delivery failed");
        }
    }
}

fn group_spec(spec: &WebhookSpec) -> Result<GroupSpec, GatewayError> {
    let patterns = spec
        .topics
        .iter()
        .map(|t| Pattern::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(GatewayError::BadRequest)?;
    let mut g = GroupSpec::new(spec.group(), patterns);
    g.filter = spec.filter.clone();
    g.max_deliveries = spec.max_attempts;
    // Past the receiver's timeout, the delivery is tried again.
    g.ack_wait = spec.timeout + Duration::from_secs(5);
    g.backoff = Backoff {
        kind: BackoffKind::Exponential,
        initial: spec.retry_after,
        max: Duration::from_secs(3600),
        jitter: 0.2,
    };
    Ok(g)
}

fn chrono_now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn chrono_now_s() -> i64 {
    chrono_now_ms() / 1000
}

mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's test vectors.
    #[test]
    fn signs_like_the_specification() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verification_checks_signature_time_and_headers() {
        let key = secret_key(&new_secret()).expect("key");
        let body = br#"{"type":"invoice.paid"}"#;
        let now = 1_700_000_000;
        let headers = |id: &str, ts: i64, sig: String| {
            let mut h = HeaderMap::new();
            h.insert("webhook-id", id.parse().expect("id"));
            h.insert("webhook-timestamp", ts.to_string().parse().expect("ts"));
            h.insert("webhook-signature", sig.parse().expect("sig"));
            h
        };
        let tol = Duration::from_secs(300);
        let good = headers(
            "msg_1",
            now,
            format!("v1,bm90IGl0 {}", sign(&key, "msg_1", now, body)),
        );
        assert_eq!(verify(&key, &good, body, tol, now), Ok("msg_1".into()));
        // Another body, another id, an old time, a wrong key: refused.
        assert!(verify(&key, &good, b"{}", tol, now).is_err());
        let moved = headers("msg_2", now, sign(&key, "msg_1", now, body));
        assert!(verify(&key, &moved, body, tol, now).is_err());
        let old = headers("msg_1", now - 301, sign(&key, "msg_1", now - 301, body));
        assert!(
            verify(&key, &old, body, tol, now)
                .expect_err("old")
                .contains("replayed")
        );
        let other = secret_key(&new_secret()).expect("key");
        assert!(verify(&other, &good, body, tol, now).is_err());
        assert!(verify(&key, &HeaderMap::new(), body, tol, now).is_err());
    }
}
