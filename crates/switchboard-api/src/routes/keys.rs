//! `/api/v1/agents/{id}/keys`: agents' public keys for sealed messages.
//!
//! Registration is two calls: a challenge (a nonce the hub encrypts to the
//! offered encryption key) and the registration (signed proof that the
//! agent read it with the offered keys; when it already has keys, their
//! signature too). The directory (`GET`) is readable by every principal
//! that may read the registry: it holds public keys only.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use switchboard_auth::{AgentIdentity, AgentKeyRecord, Auth, KeyRegistration};
use switchboard_registry::Registry;
use switchboard_wire::{
    AgentKey, AgentKeys, KeyChallenge, KeyChallengeRequest, Problem, RegisterKeysRequest,
    RevokeKeyRequest,
};

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::extract::{AppJson, RawBody};

fn key(r: AgentKeyRecord) -> AgentKey {
    AgentKey {
        fingerprint: r.fingerprint,
        signing_key: r.signing_key,
        encryption_key: r.encryption_key,
        status: r.status.as_str().to_owned(),
        created_at: convert::time(r.created_at),
        rotated_at: r.rotated_at.map(convert::time),
        revoked_at: r.revoked_at.map(convert::time),
        revoked_reason: r.revoked_reason,
        signed_by: r.signed_by,
    }
}

fn keys(agent_id: &str, identity: Option<AgentIdentity>) -> AgentKeys {
    let records = identity.map(|i| i.keys).unwrap_or_default();
    let current = records
        .iter()
        .find(|k| k.status == switchboard_auth::KeyStatus::Current)
        .cloned()
        .map(key);
    AgentKeys {
        agent_id: agent_id.to_owned(),
        current,
        keys: records.into_iter().map(key).collect(),
    }
}

/// Ask for a key registration challenge: the answer carries a nonce
/// encrypted to the offered encryption key. An agent may register keys
/// only for itself.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/keys/challenge",
    security(("bearer" = ["agents:write"])),
    tag = "keys",
    params(("id" = String, Path, description = "Agent id")),
    request_body = KeyChallengeRequest,
    responses(
        (status = 201, description = "The challenge (valid 5 minutes)", body = KeyChallenge),
        (status = 403, description = "Another agent's keys", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Keys that are not Ed25519/X25519 public keys", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_key_challenge(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
    AppJson(body): AppJson<KeyChallengeRequest>,
) -> Result<(StatusCode, AppJson<KeyChallenge>), ApiError> {
    caller.require_self_or_staff(&id, "register keys for")?;
    registry.get(&id).await?;
    let c = auth.key_challenge(&id, &body.signing_key, &body.encryption_key)?;
    Ok((
        StatusCode::CREATED,
        AppJson(KeyChallenge {
            challenge_id: c.challenge_id,
            enc: c.sealed_nonce.enc,
            ciphertext: c.sealed_nonce.ciphertext,
            expires_at: convert::time(c.expires_at),
        }),
    ))
}

/// Register the agent's keys, answering a challenge. When the agent has
/// current keys this is a rotation: `rotation_signature` (by the current
/// signing key) is required, and the current pair becomes `rotated`.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/keys",
    security(("bearer" = ["agents:write"])),
    tag = "keys",
    params(("id" = String, Path, description = "Agent id")),
    request_body = RegisterKeysRequest,
    responses(
        (status = 201, description = "Registered; now current", body = AgentKey),
        (status = 403, description = "Another agent's keys", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No or a wrong proof of possession (PROOF_INVALID), or malformed keys", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register_agent_keys(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
    AppJson(body): AppJson<RegisterKeysRequest>,
) -> Result<(StatusCode, AppJson<AgentKey>), ApiError> {
    caller.require_self_or_staff(&id, "register keys for")?;
    registry.get(&id).await?;
    let rec = auth
        .register_keys(
            &id,
            KeyRegistration {
                challenge_id: body.challenge_id,
                signing_key: body.signing_key,
                encryption_key: body.encryption_key,
                signature: body.signature,
                rotation_signature: body.rotation_signature,
            },
        )
        .await?;
    tracing::info!(agent = %id, fingerprint = %rec.fingerprint, "agent keys registered");
    Ok((StatusCode::CREATED, AppJson(key(rec))))
}

/// The agent's public keys: the current pair and every earlier one.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/keys",
    security(("bearer" = ["agents:read"])),
    tag = "keys",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The keys (none if it never registered any)", body = AgentKeys),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_agent_keys(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    Path(id): Path<String>,
) -> Result<AppJson<AgentKeys>, ApiError> {
    registry.get(&id).await?;
    Ok(AppJson(keys(&id, auth.identity(&id))))
}

/// Revoke one of the agent's key pairs: nothing it signs is accepted from
/// now on. Revoking the current pair leaves the agent without keys until
/// it registers new ones (no rotation signature is then needed).
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}/keys/{fingerprint}",
    security(("bearer" = ["agents:write"])),
    tag = "keys",
    params(
        ("id" = String, Path, description = "Agent id"),
        ("fingerprint" = String, Path, description = "The pair's fingerprint"),
    ),
    request_body(content = RevokeKeyRequest, description = "Optional"),
    responses(
        (status = 200, description = "Revoked", body = AgentKey),
        (status = 403, description = "Another agent's keys", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_agent_keys(
    State(auth): State<Auth>,
    caller: Caller,
    Path((id, fingerprint)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<AppJson<AgentKey>, ApiError> {
    caller.require_self_or_staff(&id, "revoke keys of")?;
    let req: RevokeKeyRequest = super::auth::optional_json(&headers, &body)?;
    let rec = auth.revoke_keys(&id, &fingerprint, req.reason).await?;
    tracing::info!(agent = %id, fingerprint = %rec.fingerprint, "agent keys revoked");
    Ok(AppJson(key(rec)))
}
