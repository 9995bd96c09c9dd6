//! The vault: secrets and the master key.

use reqwest::Method;
use switchboard_wire::{
    PutSecretRequest, Secret, SecretList, SecretPolicy, SecretValue, VaultRotation, VaultStatus,
};

use crate::{Client, ClientError, encode};

impl Client {
    /// Writes a new version of a secret; `policy` replaces who may read it.
    pub async fn put_secret(
        &self,
        name: &str,
        value: &str,
        policy: Option<SecretPolicy>,
    ) -> Result<Secret, ClientError> {
        let path = format!("api/v1/secrets/{}", encode(name));
        let body = PutSecretRequest {
            value: value.to_owned(),
            policy,
        };
        Ok(self.send(Method::PUT, &path, &[], Some(&body)).await?.1)
    }

    /// Reads a secret's value (the latest version unless `version`).
    pub async fn get_secret(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<SecretValue, ClientError> {
        let path = format!("api/v1/secrets/{}", encode(name));
        let query: Vec<(&str, String)> = version
            .map(|v| ("version", v.to_string()))
            .into_iter()
            .collect();
        Ok(self
            .send::<(), _>(Method::GET, &path, &query, None)
            .await?
            .1)
    }

    /// A secret's policy and versions (no value).
    pub async fn describe_secret(&self, name: &str) -> Result<Secret, ClientError> {
        let path = format!("api/v1/secrets/{}/versions", encode(name));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// Replaces who may read a secret.
    pub async fn set_secret_policy(
        &self,
        name: &str,
        policy: &SecretPolicy,
    ) -> Result<Secret, ClientError> {
        let path = format!("api/v1/secrets/{}/policy", encode(name));
        Ok(self.send(Method::PUT, &path, &[], Some(policy)).await?.1)
    }

    /// Deletes a secret and every version.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/secrets/{}", encode(name));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// A page of secrets by name, after `after`.
    pub async fn list_secrets(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<SecretList, ClientError> {
        let mut query = Vec::new();
        if let Some(a) = after {
            query.push(("after", a.to_owned()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/secrets", &query, None)
            .await?
            .1)
    }

    /// The vault's state.
    pub async fn vault_status(&self) -> Result<VaultStatus, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/vault", &[], None)
            .await?
            .1)
    }

    /// Rotates the master key (the hub reads its key file again).
    pub async fn rotate_vault(&self) -> Result<VaultRotation, ClientError> {
        Ok(self
            .send::<(), _>(Method::POST, "api/v1/vault/rotate", &[], None)
            .await?
            .1)
    }
}
