//! Payload filters: `{"priority": ["high", "critical"], "project.id": "p-1"}`
//! keeps an event when each named field of its data equals one of the
//! values given. A dotted name reaches into nested objects.

use serde_json::{Map, Value};

use crate::event::Data;

/// The most clauses in one filter.
pub const MAX_CLAUSES: usize = 32;

/// A parsed payload filter; empty keeps everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    clauses: Vec<(Vec<String>, Vec<Value>)>,
}

impl Filter {
    /// Parses the JSON form: each key a field path, each value one allowed
    /// value or a list of them.
    pub fn parse(spec: &Map<String, Value>) -> Result<Self, String> {
        if spec.len() > MAX_CLAUSES {
            return Err(format!("must have at most {MAX_CLAUSES} fields"));
        }
        let mut clauses = Vec::with_capacity(spec.len());
        for (path, allowed) in spec {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) {
                return Err(format!("{path:?} is not a field path (empty segment)"));
            }
            let values = match allowed {
                Value::Array(v) if v.is_empty() => {
                    return Err(format!("{path:?} lists no value to match"));
                }
                Value::Array(v) => v.clone(),
                Value::Object(_) => {
                    return Err(format!("{path:?} must be a value or a list of values"));
                }
                v => vec![v.clone()],
            };
            clauses.push((parts, values));
        }
        Ok(Self { clauses })
    }

    /// Whether this filter keeps everything.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether an event with `data` passes; the data is parsed only if a
    /// clause looks inside it.
    pub fn matches(&self, data: Option<&Data>) -> bool {
        if self.clauses.is_empty() {
            return true;
        }
        self.matches_value(data.map(Data::value))
    }

    /// [`Filter::matches`] on data parsed.
    fn matches_value(&self, data: Option<&Value>) -> bool {
        self.clauses.iter().all(|(path, allowed)| {
            let mut v = data;
            for p in path {
                v = v.and_then(|v| v.get(p));
            }
            v.is_some_and(|v| allowed.iter().any(|a| a == v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        Filter::parse(v.as_object().expect("object")).expect("filter")
    }

    #[test]
    fn matches_any_listed_value_on_every_field() {
        let filter = f(json!({"priority": ["high", "critical"], "project_id": "proj-456"}));
        assert!(filter.matches_value(Some(
            &json!({"priority": "high", "project_id": "proj-456", "x": 1})
        )));
        assert!(filter.matches_value(Some(
            &json!({"priority": "critical", "project_id": "proj-456"})
        )));
        assert!(!filter.matches_value(Some(&json!({"priority": "low", "project_id": "proj-456"}))));
        assert!(!filter.matches_value(Some(&json!({"priority": "high"}))));
        assert!(!filter.matches_value(None));
        let nested = f(json!({"task.owner.team": "core", "n": [1, 2]}));
        assert!(nested.matches_value(Some(&json!({"task": {"owner": {"team": "core"}}, "n": 2}))));
        assert!(!nested.matches_value(Some(&json!({"task": {"owner": "core"}, "n": 2}))));
        assert!(f(json!({})).matches_value(None));
    }

    #[test]
    fn matches_data_as_published() {
        let text = |t: &str| Data::from_json(t.to_owned()).expect("JSON");
        let filter = f(json!({"priority": "high", "n": 2.5}));
        assert!(filter.matches(Some(&text(r#"{ "n" : 2.50, "priority":"high" }"#))));
        assert!(!filter.matches(Some(&text(r#"{"n": 2.5, "priority": "low"}"#))));
        assert!(!filter.matches(Some(&text("[1, 2]"))));
        assert!(f(json!({})).matches(None));
    }

    #[test]
    fn refuses_bad_specs() {
        for bad in [json!({"a..b": 1}), json!({"a": []}), json!({"a": {"b": 1}})] {
            assert!(
                Filter::parse(bad.as_object().expect("object")).is_err(),
                "{bad}"
            );
        }
    }
}
