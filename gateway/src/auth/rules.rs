//! Per-method access rules (`gateway.auth.rules`, `docs/security.md`, "Access rules"): the
//! first rule whose `method` pattern matches decides, else `gateway.auth.default-access`.

use serde_json::{Map, Value};
use statehouse_runtime::config::{Access, AccessRule};

/// The rules of the configuration, in order.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    rules: Vec<AccessRule>,
    default: Access,
}

impl Rules {
    pub(crate) fn new(rules: Vec<AccessRule>, default: Access) -> Self {
        Self { rules, default }
    }

    /// The rule deciding calls of `service`/`method` (`None`: the default applies).
    pub(crate) fn find(&self, service: &str, method: &str) -> Option<&AccessRule> {
        self.rules
            .iter()
            .find(|rule| matches(&rule.method, service, method))
    }

    /// The access `service`/`method` requires.
    pub(crate) fn access(&self, service: &str, method: &str) -> Access {
        self.find(service, method)
            .map_or(self.default, |r| r.access)
    }
}

/// Whether `pattern` (`*`, `pkg.Service/*` or `pkg.Service/Method`) covers the method.
fn matches(pattern: &str, service: &str, method: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('/') {
        Some((s, "*")) => s == service,
        Some((s, m)) => s == service && m == method,
        None => false,
    }
}

/// Whether claim `name` of `claims` holds one of `wanted`: a string equal to one or holding it
/// as a space-separated word (`scope`), an array with it as an element, a number or boolean
/// whose JSON text equals it.
pub(crate) fn claim_holds(claims: &Map<String, Value>, name: &str, wanted: &[String]) -> bool {
    let scalar = |value: &Value, w: &str| match value {
        Value::String(s) => s == w || s.split_whitespace().any(|word| word == w),
        Value::Number(n) => n.to_string() == w,
        Value::Bool(b) => b.to_string() == w,
        _ => false,
    };
    match claims.get(name) {
        Some(Value::Array(items)) => wanted
            .iter()
            .any(|w| items.iter().any(|item| scalar(item, w))),
        Some(value) => wanted.iter().any(|w| scalar(value, w)),
        None => false,
    }
}
