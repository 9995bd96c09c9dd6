//! Scopes (what a call needs) and roles (named sets of scopes).
//!
//! A principal holds a [`Scopes`] set: its role's scopes, narrowed by what
//! its API key or token asked for. Every route names the one scope it
//! needs; the check is a bit test.

use std::fmt;
use std::str::FromStr;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read the registry.
    AgentsRead,
    /// Register, heartbeat and remove agents.
    AgentsWrite,
    /// Read tasks.
    TasksRead,
    /// Create, claim, report and cancel tasks.
    TasksWrite,
    /// Read workflows.
    WorkflowsRead,
    /// Create and cancel workflows.
    WorkflowsWrite,
    /// Publish events, send messages and requests.
    EventsPublish,
    /// Read the log, stream events, consume from groups.
    EventsSubscribe,
    /// Delete consumer groups, replay and purge dead letters.
    EventsManage,
    /// Read metrics.
    MetricsRead,
    /// Call agents through the gateway.
    GatewayInvoke,
    /// Read the gateway's services, routes, topology and webhooks.
    GatewayRead,
    /// Configure the gateway's services, routes, webhooks and hooks.
    GatewayManage,
    /// Read the vault's secrets that their policies grant.
    SecretsRead,
    /// Write, describe and delete the vault's secrets and set their
    /// policies.
    SecretsWrite,
    /// Manage credentials, keys and the audit log.
    Admin,
}

impl Scope {
    /// Every scope, in a fixed order.
    pub const ALL: [Scope; 16] = [
        Scope::AgentsRead,
        Scope::AgentsWrite,
        Scope::TasksRead,
        Scope::TasksWrite,
        Scope::WorkflowsRead,
        Scope::WorkflowsWrite,
        Scope::EventsPublish,
        Scope::EventsSubscribe,
        Scope::EventsManage,
        Scope::MetricsRead,
        Scope::GatewayInvoke,
        Scope::GatewayRead,
        Scope::GatewayManage,
        Scope::SecretsRead,
        Scope::SecretsWrite,
        Scope::Admin,
    ];

    /// The scope's name (`agents:read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AgentsRead => "agents:read",
            Scope::AgentsWrite => "agents:write",
            Scope::TasksRead => "tasks:read",
            Scope::TasksWrite => "tasks:write",
            Scope::WorkflowsRead => "workflows:read",
            Scope::WorkflowsWrite => "workflows:write",
            Scope::EventsPublish => "events:publish",
            Scope::EventsSubscribe => "events:subscribe",
            Scope::EventsManage => "events:manage",
            Scope::MetricsRead => "metrics:read",
            Scope::GatewayInvoke => "gateway:invoke",
            Scope::GatewayRead => "gateway:read",
            Scope::GatewayManage => "gateway:manage",
            Scope::SecretsRead => "secrets:read",
            Scope::SecretsWrite => "secrets:write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u16);

impl Scopes {
    /// No scope.
    pub const NONE: Scopes = Scopes(0);

    /// Every scope.
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The scopes in both sets.
    pub fn intersect(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    /// The scopes, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses a space- or comma-separated list (OAuth2's `scope`), where
    /// `resource:*` stands for every scope of that resource.
    pub fn parse(list: &str) -> Result<Scopes, String> {
        let mut set = Scopes::NONE;
        for word in list.split([' ', ',']).filter(|w| !w.is_empty()) {
            set = set.union(Scopes::parse_one(word)?);
        }
        Ok(set)
    }

    fn parse_one(word: &str) -> Result<Scopes, String> {
        if let Some(resource) = word.strip_suffix(":*") {
            let set: Scopes = Scope::ALL
                .into_iter()
                .filter(|s| s.as_str().split(':').next() == Some(resource) && *s != Scope::Admin)
                .collect();
            if set == Scopes::NONE {
                return Err(format!("unknown scope {word:?}"));
            }
            return Ok(set);
        }
        word.parse::<Scope>().map(Scopes::from)
    }

    /// The scopes of both sets.
    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }
}

impl From<Scope> for Scopes {
    fn from(s: Scope) -> Self {
        Scopes(s.bit())
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

impl fmt::Display for Scopes {
    /// Space-separated, as OAuth2 writes scopes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A named set of scopes given to a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including credentials, keys and the audit log.
    Admin,
    /// Runs the hub's work: agents, tasks, workflows, events; no credentials.
    Operator,
    /// An agent: works on tasks, publishes and subscribes, within its own
    /// resources (itself, the tasks it holds, the topics its ACL grants).
    Agent,
    /// Reads everything but credentials; changes nothing.
    Observer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Agent, Role::Observer];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::Observer => "observer",
        }
    }

    /// The scopes the role grants.
    pub fn scopes(self) -> Scopes {
        use Scope::*;
        match self {
            Role::Admin => Scopes::all(),
            Role::Operator => [
                AgentsRead,
                AgentsWrite,
                TasksRead,
                TasksWrite,
                WorkflowsRead,
                WorkflowsWrite,
                EventsPublish,
                EventsSubscribe,
                EventsManage,
                MetricsRead,
                GatewayInvoke,
                GatewayRead,
                GatewayManage,
                SecretsRead,
                SecretsWrite,
            ]
            .into_iter()
            .collect(),
            Role::Agent => [
                AgentsRead,
                AgentsWrite,
                TasksRead,
                TasksWrite,
                WorkflowsRead,
                EventsPublish,
                EventsSubscribe,
                GatewayInvoke,
                SecretsRead,
            ]
            .into_iter()
            .collect(),
            Role::Observer => [
                AgentsRead,
                TasksRead,
                WorkflowsRead,
                EventsSubscribe,
                MetricsRead,
                GatewayRead,
            ]
            .into_iter()
            .collect(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; roles are admin, operator, agent, observer")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_wildcards() {
        let s = Scopes::parse("agents:read workflows:*,events:publish").expect("valid");
        let names: Vec<_> = s.iter().map(Scope::as_str).collect();
        assert_eq!(
            names,
            [
                "agents:read",
                "workflows:read",
                "workflows:write",
                "events:publish"
            ]
        );
        assert_eq!(s.to_string(), names.join(" "));
        assert!(Scopes::parse("agents:fly").is_err());
        assert!(Scopes::parse("nothing:*").is_err());
        assert_eq!(Scopes::parse("").expect("empty"), Scopes::NONE);
    }

    #[test]
    fn roles_nest() {
        assert!(Role::Observer.scopes().is_subset(Role::Operator.scopes()));
        assert!(Role::Agent.scopes().is_subset(Role::Operator.scopes()));
        assert!(Role::Operator.scopes().is_subset(Role::Admin.scopes()));
        assert!(!Role::Operator.scopes().contains(Scope::Admin));
        assert!(!Role::Observer.scopes().contains(Scope::AgentsWrite));
        assert!(!Role::Agent.scopes().contains(Scope::EventsManage));
    }
}
