//! Tokens, credentials, keys and the audit log.

use reqwest::Method;
use serde::Deserialize;
use switchboard_wire::{
    AgentCredentials, ApiKey, ApiKeyCreated, ApiKeyList, AuditPage, AuditVerification,
    CreateApiKeyRequest, RevokeRequest, RotateCredentialsRequest, RotateKeyRequest, SigningKey,
    SigningKeyList, TokenResponse, TopicAcl, Whoami,
};

use crate::{Client, ClientError, encode};

/// An OAuth2 error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Client {
    /// Exchanges an agent's client credentials for a token (OAuth2 client
    /// credentials, HTTP Basic). Use the token with [`Client::with_token`].
    pub async fn issue_token(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, ClientError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let resp = self
            .http
            .post(self.url("api/v1/auth/token")?)
            .basic_auth(client_id, Some(client_secret))
            .form(&form)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                detail: e.to_string(),
            });
        }
        let detail = match serde_json::from_slice::<OAuthError>(&bytes) {
            Ok(e) => format!("{}: {}", e.error, e.error_description),
            Err(_) => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        };
        Err(ClientError::Unexpected {
            status: status.as_u16(),
            detail,
        })
    }

    /// Who the hub takes this client's credential to be.
    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/auth/whoami", &[], None)
            .await?
            .1)
    }

    /// Revokes a token (the caller's own, or any by `jti` as an admin).
    pub async fn revoke_token(&self, req: &RevokeRequest) -> Result<(), ClientError> {
        self.send::<_, serde_json::Value>(Method::POST, "api/v1/auth/revoke", &[], Some(req))
            .await?;
        Ok(())
    }

    /// Makes an API key; the answer holds the key, shown once.
    pub async fn create_api_key(
        &self,
        req: &CreateApiKeyRequest,
    ) -> Result<ApiKeyCreated, ClientError> {
        Ok(self
            .send(Method::POST, "api/v1/auth/api-keys", &[], Some(req))
            .await?
            .1)
    }

    /// Every API key.
    pub async fn list_api_keys(&self) -> Result<ApiKeyList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/auth/api-keys", &[], None)
            .await?
            .1)
    }

    /// Revokes an API key.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey, ClientError> {
        let path = format!("api/v1/auth/api-keys/{}", encode(id));
        Ok(self
            .send::<(), _>(Method::DELETE, &path, &[], None)
            .await?
            .1)
    }

    /// The hub's signing keys.
    pub async fn list_signing_keys(&self) -> Result<SigningKeyList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/auth/keys", &[], None)
            .await?
            .1)
    }

    /// Makes a new signing key (`EdDSA` or `RS256`; the hub's default when
    /// `None`).
    pub async fn rotate_signing_key(
        &self,
        alg: Option<&str>,
        drop_previous: bool,
    ) -> Result<SigningKey, ClientError> {
        let req = RotateKeyRequest {
            alg: alg.map(str::to_owned),
            drop_previous,
        };
        Ok(self
            .send(Method::POST, "api/v1/auth/keys/rotate", &[], Some(&req))
            .await?
            .1)
    }

    /// Gives an agent a new client secret; the old ones work for
    /// `grace_seconds` more.
    pub async fn rotate_credentials(
        &self,
        agent_id: &str,
        grace_seconds: Option<u64>,
    ) -> Result<AgentCredentials, ClientError> {
        let path = format!("api/v1/agents/{}/credentials", encode(agent_id));
        let req = RotateCredentialsRequest { grace_seconds };
        Ok(self.send(Method::POST, &path, &[], Some(&req)).await?.1)
    }

    /// Revokes every secret and token of an agent.
    pub async fn revoke_credentials(&self, agent_id: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/agents/{}/credentials", encode(agent_id));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// An agent's topic ACL.
    pub async fn get_acl(&self, agent_id: &str) -> Result<TopicAcl, ClientError> {
        let path = format!("api/v1/agents/{}/acl", encode(agent_id));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// Sets an agent's topic ACL.
    pub async fn set_acl(&self, agent_id: &str, acl: &TopicAcl) -> Result<TopicAcl, ClientError> {
        let path = format!("api/v1/agents/{}/acl", encode(agent_id));
        Ok(self.send(Method::PUT, &path, &[], Some(acl)).await?.1)
    }

    /// A page of the audit log after `after`.
    pub async fn audit_page(
        &self,
        after: u64,
        limit: u32,
        principal: Option<&str>,
    ) -> Result<AuditPage, ClientError> {
        let mut q = vec![("after", after.to_string()), ("limit", limit.to_string())];
        if let Some(p) = principal {
            q.push(("principal", p.to_owned()));
        }
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/audit", &q, None)
            .await?
            .1)
    }

    /// The hub's own check of the audit chain.
    pub async fn audit_verify(&self) -> Result<AuditVerification, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/audit/verify", &[], None)
            .await?
            .1)
    }

    /// The JSON Web Key Set.
    pub async fn jwks(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, ".well-known/jwks.json", &[], None)
            .await?
            .1)
    }
}
