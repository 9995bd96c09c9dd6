//! The gateway's services, routes and topology; webhooks and hooks.

use reqwest::Method;
use switchboard_wire::{
    Hook, HookConfig, HookList, Route, RouteConfig, RouteList, Service, ServiceConfig, ServiceList,
    Topology, Webhook, WebhookConfig, WebhookDeliveryList, WebhookList,
};

use crate::{Client, ClientError, encode};

impl Client {
    /// Every service.
    pub async fn list_services(&self) -> Result<ServiceList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/gateway/services", &[], None)
            .await?
            .1)
    }

    /// One service.
    pub async fn get_service(&self, name: &str) -> Result<Service, ClientError> {
        let path = format!("api/v1/gateway/services/{}", encode(name));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// Configures a service.
    pub async fn put_service(&self, name: &str, c: &ServiceConfig) -> Result<Service, ClientError> {
        let path = format!("api/v1/gateway/services/{}", encode(name));
        Ok(self.send(Method::PUT, &path, &[], Some(c)).await?.1)
    }

    /// Forgets a service's settings.
    pub async fn delete_service(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/gateway/services/{}", encode(name));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// Every route.
    pub async fn list_routes(&self) -> Result<RouteList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/gateway/routes", &[], None)
            .await?
            .1)
    }

    /// Creates or replaces a route.
    pub async fn put_route(&self, name: &str, c: &RouteConfig) -> Result<Route, ClientError> {
        let path = format!("api/v1/gateway/routes/{}", encode(name));
        Ok(self.send(Method::PUT, &path, &[], Some(c)).await?.1)
    }

    /// Removes a route.
    pub async fn delete_route(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/gateway/routes/{}", encode(name));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// Services, instances and routes as they stand.
    pub async fn topology(&self) -> Result<Topology, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/gateway/topology", &[], None)
            .await?
            .1)
    }

    /// Every outbound webhook.
    pub async fn list_webhooks(&self) -> Result<WebhookList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/webhooks", &[], None)
            .await?
            .1)
    }

    /// Creates or replaces an outbound webhook; the answer holds its secret.
    pub async fn put_webhook(&self, name: &str, c: &WebhookConfig) -> Result<Webhook, ClientError> {
        let path = format!("api/v1/webhooks/{}", encode(name));
        Ok(self.send(Method::PUT, &path, &[], Some(c)).await?.1)
    }

    /// Removes an outbound webhook.
    pub async fn delete_webhook(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/webhooks/{}", encode(name));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// A webhook's delivery log.
    pub async fn webhook_deliveries(
        &self,
        name: &str,
        limit: u32,
    ) -> Result<WebhookDeliveryList, ClientError> {
        let path = format!("api/v1/webhooks/{}/deliveries", encode(name));
        Ok(self
            .send::<(), _>(Method::GET, &path, &[("limit", limit.to_string())], None)
            .await?
            .1)
    }

    /// Every inbound hook.
    pub async fn list_hooks(&self) -> Result<HookList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/hooks", &[], None)
            .await?
            .1)
    }

    /// Creates or replaces an inbound hook; the answer holds its secret.
    pub async fn put_hook(&self, name: &str, c: &HookConfig) -> Result<Hook, ClientError> {
        let path = format!("api/v1/hooks/{}", encode(name));
        Ok(self.send(Method::PUT, &path, &[], Some(c)).await?.1)
    }

    /// Removes an inbound hook.
    pub async fn delete_hook(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/hooks/{}", encode(name));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }
}
