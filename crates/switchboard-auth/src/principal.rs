//! Who is calling: a [`Principal`], and the topic rules of agents.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchboard_bus::Pattern;
use switchboard_core::UnixMillis;

use crate::scope::{Role, Scope, Scopes};

/// What kind of caller a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person or an admin tool, holding an API key with an operator or
    /// admin role.
    Operator,
    /// A registered agent, holding a token from its client credentials (or
    /// a verified client certificate).
    Agent,
    /// A service or CI job, holding an API key.
    Service,
}

impl PrincipalKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Operator => "operator",
            PrincipalKind::Agent => "agent",
            PrincipalKind::Service => "service",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// `agent-001` for an agent; `key:{id}` for an API key.
    pub id: Arc<str>,
    /// What it is.
    pub kind: PrincipalKind,
    /// Its role.
    pub role: Role,
    /// What it may do: its role's scopes, narrowed by its credential.
    pub scopes: Scopes,
    /// For agents: the topics it may publish and subscribe to.
    pub acl: Option<Arc<TopicAcl>>,
    /// The token's id (`jti`) when authenticated by a JWT.
    pub token_id: Option<Arc<str>>,
    /// When the credential stops being accepted, if it does.
    pub expires_at: Option<UnixMillis>,
}

impl Principal {
    /// An operator with the admin role and every scope, known as `id`: the
    /// admin token's principal, and every caller's when authentication is
    /// off.
    pub fn admin(id: &str) -> Self {
        Self {
            id: id.into(),
            kind: PrincipalKind::Operator,
            role: Role::Admin,
            scopes: Scopes::all(),
            acl: None,
            token_id: None,
            expires_at: None,
        }
    }

    /// Whether the principal holds `scope`.
    pub fn can(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// The agent id, when the principal is an agent.
    pub fn agent_id(&self) -> Option<&str> {
        (self.kind == PrincipalKind::Agent).then_some(&*self.id)
    }

    /// Whether the principal may publish on `topic`; the error says why
    /// not.
    pub fn may_publish(&self, topic: &str) -> Result<(), String> {
        let Some(acl) = &self.acl else {
            return Ok(());
        };
        if acl.publish.iter().any(|p| p.matches(topic)) {
            Ok(())
        } else {
            Err(format!(
                "agent {} may not publish on {topic:?}: its ACL allows publishing on {}",
                self.id,
                acl.publish_list()
            ))
        }
    }

    /// Whether the principal may subscribe to `pattern`: the pattern must
    /// lie within one pattern of its ACL, and an agent never sees another
    /// agent's inbox (`inbox.{id}`); the error says why not.
    pub fn may_subscribe(&self, pattern: &Pattern) -> Result<(), String> {
        let Some(agent) = self.agent_id() else {
            return Ok(());
        };
        if touches_other_inbox(agent, pattern) {
            return Err(format!(
                "{:?} would include other agents' inboxes; agent {agent} may read only inbox.{agent}",
                pattern.as_str()
            ));
        }
        let Some(acl) = &self.acl else {
            return Ok(());
        };
        if acl.subscribe.iter().any(|g| g.covers(pattern)) {
            Ok(())
        } else {
            Err(format!(
                "agent {} may not subscribe to {:?}: its ACL allows subscribing to {}",
                self.id,
                pattern.as_str(),
                acl.subscribe_list()
            ))
        }
    }
}

/// Whether a pattern can match `inbox.{other}` for an agent other than
/// `agent`.
fn touches_other_inbox(agent: &str, pattern: &Pattern) -> bool {
    let Ok(all_inboxes) = Pattern::parse("inbox.>") else {
        return true;
    };
    if !pattern.overlaps(&all_inboxes) {
        return false;
    }
    // Only the agent's own inbox (and topics under it) is allowed.
    let own = [format!("inbox.{agent}"), format!("inbox.{agent}.>")];
    !own.iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .any(|p| p.covers(pattern))
}

/// The topics an agent may publish and subscribe to, as patterns. The
/// placeholder `{agent_id}` stands for the agent's own id.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicAcl {
    /// A publish is allowed when one of these matches its topic.
    pub publish: Vec<Pattern>,
    /// A subscription is allowed when one of these covers its pattern.
    pub subscribe: Vec<Pattern>,
}

/// A [`TopicAcl`] as written: patterns that may hold `{agent_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclTemplate {
    /// Patterns to publish on.
    pub publish: Vec<String>,
    /// Patterns to subscribe to.
    pub subscribe: Vec<String>,
}

impl Default for AclTemplate {
    /// Every topic; agents' inboxes stay private whatever the ACL says.
    fn default() -> Self {
        Self {
            publish: vec![">".into()],
            subscribe: vec![">".into()],
        }
    }
}

impl AclTemplate {
    /// Checks every pattern; each error names its list and index.
    pub fn check(&self, field: &str) -> Result<(), Vec<switchboard_core::FieldError>> {
        let mut errs = switchboard_core::FieldErrors::new();
        for (list, name) in [(&self.publish, "publish"), (&self.subscribe, "subscribe")] {
            for (i, p) in list.iter().enumerate() {
                if let Err(reason) = Pattern::parse(&p.replace("{agent_id}", "x")) {
                    errs.push(format!("{field}.{name}[{i}]"), reason);
                }
            }
        }
        errs.finish()
    }

    /// The ACL for one agent.
    pub fn for_agent(&self, agent_id: &str) -> TopicAcl {
        let build = |list: &[String]| {
            list.iter()
                .filter_map(|p| Pattern::parse(&p.replace("{agent_id}", agent_id)).ok())
                .collect()
        };
        TopicAcl {
            publish: build(&self.publish),
            subscribe: build(&self.subscribe),
        }
    }
}

impl TopicAcl {
    fn publish_list(&self) -> String {
        list(&self.publish)
    }

    fn subscribe_list(&self) -> String {
        list(&self.subscribe)
    }
}

fn list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "nothing".into();
    }
    patterns
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(acl: AclTemplate) -> Principal {
        Principal {
            id: "a1".into(),
            kind: PrincipalKind::Agent,
            role: Role::Agent,
            scopes: Role::Agent.scopes(),
            acl: Some(Arc::new(acl.for_agent("a1"))),
            token_id: None,
            expires_at: None,
        }
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).expect("pattern")
    }

    #[test]
    fn inboxes_stay_private() {
        let a = agent(AclTemplate::default());
        for ok in ["inbox.a1", "inbox.a1.x", "task.>", "reply.*"] {
            assert!(a.may_subscribe(&pat(ok)).is_ok(), "{ok}");
        }
        for bad in [">", "inbox.*", "inbox.a2", "*.a2", "inbox.>"] {
            assert!(a.may_subscribe(&pat(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn acl_limits_topics() {
        let a = agent(AclTemplate {
            publish: vec!["jobs.{agent_id}.>".into()],
            subscribe: vec!["jobs.*.done".into(), "inbox.{agent_id}".into()],
        });
        assert!(a.may_publish("jobs.a1.done").is_ok());
        assert!(a.may_publish("jobs.a2.done").is_err());
        assert!(a.may_subscribe(&pat("jobs.x.done")).is_ok());
        assert!(a.may_subscribe(&pat("jobs.*.done")).is_ok());
        assert!(a.may_subscribe(&pat("jobs.>")).is_err());
        assert!(a.may_subscribe(&pat("inbox.a1")).is_ok());
    }

    #[test]
    fn template_errors_name_the_pattern() {
        let t = AclTemplate {
            publish: vec!["ok.>".into(), "bad..x".into()],
            subscribe: vec![">.x".into()],
        };
        let errs = t.check("acl").expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["acl.publish[1]", "acl.subscribe[0]"]);
    }
}
