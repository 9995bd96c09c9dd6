//! `/api/v1/secrets` and `/api/v1/vault`: the credential vault.
//!
//! Writing, describing and deleting secrets needs `secrets:write`
//! (operators, admins); reading a value needs `secrets:read` and the
//! secret's policy (admins always; agents and roles it names). Every call
//! here is audited, reads included (`access::finish`). The vault's state
//! and master key rotation are for admins.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use switchboard_core::FieldError;
use switchboard_vault::{ReadPolicy, Reader, SecretInfo, SecretMeta, Vault};
use switchboard_wire::{
    Problem, PutSecretRequest, Secret, SecretList, SecretPolicy, SecretValue, SecretVersion,
    VaultRotation, VaultStatus, WrappedCount,
};

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::extract::AppJson;

/// The page size when `limit` is absent.
const DEFAULT_PAGE: u32 = 100;

fn policy_in(p: SecretPolicy) -> ReadPolicy {
    ReadPolicy {
        agents: p.agents,
        roles: p.roles,
    }
}

fn policy_out(p: ReadPolicy) -> SecretPolicy {
    SecretPolicy {
        agents: p.agents,
        roles: p.roles,
    }
}

fn secret(m: SecretMeta, versions: Vec<SecretVersion>) -> Secret {
    Secret {
        name: m.name,
        policy: policy_out(m.policy),
        latest_version: m.latest_version,
        created_at: convert::time(m.created_at),
        updated_at: convert::time(m.updated_at),
        versions,
    }
}

fn described(info: SecretInfo) -> Secret {
    let versions = info
        .versions
        .into_iter()
        .map(|(version, at, by)| SecretVersion {
            version,
            created_at: convert::time(at),
            created_by: by,
        })
        .collect();
    secret(info.meta, versions)
}

fn reader(caller: &Caller) -> Result<Reader<'_>, ApiError> {
    let p = caller
        .principal()
        .ok_or_else(|| ApiError::forbidden("reading a secret needs a credential"))?;
    Ok(Reader {
        id: &p.id,
        role: p.role.as_str(),
        agent: p.agent_id().is_some(),
    })
}

/// Write a new version of a secret (creating it). The value is encrypted
/// with a fresh data key, wrapped by the master key; `policy` replaces
/// who may read it.
#[utoipa::path(
    put,
    path = "/api/v1/secrets/{name}",
    security(("bearer" = ["secrets:write"])),
    tag = "vault",
    params(("name" = String, Path, description = "Secret name")),
    request_body = PutSecretRequest,
    responses(
        (status = 201, description = "The new version, described", body = Secret),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No master key (VAULT_UNAVAILABLE) or the wrong one (VAULT_LOCKED)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_secret(
    State(vault): State<Vault>,
    caller: Caller,
    Path(name): Path<String>,
    AppJson(body): AppJson<PutSecretRequest>,
) -> Result<(StatusCode, AppJson<Secret>), ApiError> {
    let by = caller
        .principal()
        .map_or_else(|| "anonymous".to_owned(), |p| p.id.to_string());
    let value = zeroize::Zeroizing::new(body.value.into_bytes());
    let info = vault
        .put(&name, &value, body.policy.map(policy_in), &by)
        .await?;
    Ok((StatusCode::CREATED, AppJson(described(info))))
}

/// Read a secret's value: the latest version, or `?version=N`. Allowed to
/// admins and to the agents and roles its policy names.
#[utoipa::path(
    get,
    path = "/api/v1/secrets/{name}",
    security(("bearer" = ["secrets:read"])),
    tag = "vault",
    params(
        ("name" = String, Path, description = "Secret name"),
        ("version" = Option<u64>, Query, description = "A version (default: the latest)"),
    ),
    responses(
        (status = 200, description = "The value", body = SecretValue),
        (status = 403, description = "Not granted by the secret's policy", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such secret or version", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No master key (VAULT_UNAVAILABLE) or the wrong one (VAULT_LOCKED)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_secret(
    State(vault): State<Vault>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<AppJson<SecretValue>, ApiError> {
    let mut version = None;
    let mut errs = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "version" => match v.parse::<u64>() {
                Ok(n) if n >= 1 => version = Some(n),
                _ => errs.push(FieldError::new("version", "must be a whole number from 1")),
            },
            other => errs.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_query(errs));
    }
    let r = vault.get(&name, version, reader(&caller)?).await?;
    let value = String::from_utf8(r.value.to_vec())
        .map_err(|_| ApiError::internal(format!("version {} of {name} is not UTF-8", r.version)))?;
    Ok(AppJson(SecretValue {
        name: r.name,
        version: r.version,
        created_at: convert::time(r.created_at),
        value,
    }))
}

/// Describe a secret: its policy and versions, never a value.
#[utoipa::path(
    get,
    path = "/api/v1/secrets/{name}/versions",
    security(("bearer" = ["secrets:write"])),
    tag = "vault",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 200, description = "The secret", body = Secret),
        (status = 404, description = "No such secret", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn describe_secret(
    State(vault): State<Vault>,
    Path(name): Path<String>,
) -> Result<AppJson<Secret>, ApiError> {
    Ok(AppJson(described(vault.describe(&name).await?)))
}

/// Replace who may read a secret.
#[utoipa::path(
    put,
    path = "/api/v1/secrets/{name}/policy",
    security(("bearer" = ["secrets:write"])),
    tag = "vault",
    params(("name" = String, Path, description = "Secret name")),
    request_body = SecretPolicy,
    responses(
        (status = 200, description = "The secret", body = Secret),
        (status = 404, description = "No such secret", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_secret_policy(
    State(vault): State<Vault>,
    Path(name): Path<String>,
    AppJson(body): AppJson<SecretPolicy>,
) -> Result<AppJson<Secret>, ApiError> {
    Ok(AppJson(described(
        vault.set_policy(&name, policy_in(body)).await?,
    )))
}

/// Delete a secret and every version.
#[utoipa::path(
    delete,
    path = "/api/v1/secrets/{name}",
    security(("bearer" = ["secrets:write"])),
    tag = "vault",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such secret", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_secret(
    State(vault): State<Vault>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    vault.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List secrets by name (no values). Agents see only the secrets granted
/// to them.
#[utoipa::path(
    get,
    path = "/api/v1/secrets",
    security(("bearer" = ["secrets:read"])),
    tag = "vault",
    params(
        ("after" = Option<String>, Query, description = "Names after this one (the next_after of the previous page)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 500 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page", body = SecretList),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_secrets(
    State(vault): State<Vault>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<AppJson<SecretList>, ApiError> {
    let (mut after, mut limit) = (None, DEFAULT_PAGE);
    let mut errs = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "after" => after = Some(v.into_owned()),
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=switchboard_vault::MAX_PAGE).contains(&n) => limit = n,
                _ => errs.push(FieldError::new(
                    "limit",
                    format!("must be 1 to {}", switchboard_vault::MAX_PAGE),
                )),
            },
            other => errs.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_query(errs));
    }
    let page = vault.list(after.as_deref(), limit).await?;
    let full = page.len() == limit as usize;
    let next_after = if full {
        page.last().map(|m| m.name.clone())
    } else {
        None
    };
    let r = reader(&caller)?;
    let secrets = page
        .into_iter()
        .filter(|m| {
            m.policy.allows(r)
                || caller
                    .principal()
                    .is_some_and(|p| p.can(switchboard_auth::Scope::SecretsWrite))
        })
        .map(|m| secret(m, Vec::new()))
        .collect();
    Ok(AppJson(SecretList {
        secrets,
        next_after,
    }))
}

/// The vault's state: ready, locked (the master key does not match what
/// is stored) or unavailable (no master key), and what each master key
/// wraps.
#[utoipa::path(
    get,
    path = "/api/v1/vault",
    security(("bearer" = ["admin"])),
    tag = "vault",
    responses((status = 200, description = "The state", body = VaultStatus))
)]
pub(crate) async fn vault_status(
    State(vault): State<Vault>,
) -> Result<AppJson<VaultStatus>, ApiError> {
    let s = vault.status().await?;
    Ok(AppJson(VaultStatus {
        state: s.state.to_owned(),
        reason: s.reason,
        current_key_id: s.current_key_id,
        key_ids: s.key_ids,
        wrapped: s
            .wrapped
            .into_iter()
            .map(|(master_key_id, versions)| WrappedCount {
                master_key_id,
                versions,
            })
            .collect(),
    }))
}

/// Rotate the master key: the hub reads its key file again, makes the
/// first key current, and rewraps every data key with it while reads go
/// on. Refused (409, nothing changed) when the file lacks a key that
/// wraps stored secrets. Then the old key can be removed from the file.
#[utoipa::path(
    post,
    path = "/api/v1/vault/rotate",
    security(("bearer" = ["admin"])),
    tag = "vault",
    responses(
        (status = 200, description = "Rotated", body = VaultRotation),
        (status = 409, description = "The key file lacks a key in use (ROTATION_REFUSED)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No master key configured", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn rotate_vault(
    State(vault): State<Vault>,
) -> Result<AppJson<VaultRotation>, ApiError> {
    let r = vault.rotate().await?;
    Ok(AppJson(VaultRotation {
        current_key_id: r.current_key_id,
        rewrapped: r.rewrapped,
    }))
}
