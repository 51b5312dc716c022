//! Label selectors as Kubernetes writes them (`matchLabels`, `matchExpressions`), strict: a
//! misspelt key or a malformed expression is a config error, never a selector that quietly
//! matches everything.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpression {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl<'de> Deserialize<'de> for Expression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawExpression::deserialize(d)?;
        let needs_values = matches!(raw.operator, Operator::In | Operator::NotIn);
        if needs_values == raw.values.is_empty() {
            return Err(de::Error::custom(format!(
                "matchExpressions `{}` {:?}: In and NotIn need values, Exists and DoesNotExist take none",
                raw.key, raw.operator
            )));
        }
        Ok(Expression {
            key: raw.key,
            operator: raw.operator,
            values: raw.values,
        })
    }
}

/// `{}` selects everything, as in Kubernetes; every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    Operator::In => value.is_some_and(|v| e.values.contains(v)),
                    Operator::NotIn => !value.is_some_and(|v| e.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<LabelSelector, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let s = selector(
            "matchLabels: {app: agent}\nmatchExpressions:\n  - {key: tier, operator: In, values: [a, b]}\n  - {key: debug, operator: DoesNotExist}\n",
        )
        .unwrap();
        assert!(s.matches(&labels(&[("app", "agent"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "agent"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "agent"), ("tier", "a"), ("debug", "1")])));
        assert!(!s.matches(&labels(&[("tier", "a")])));
        assert!(selector("{}").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn a_misspelt_or_malformed_selector_is_an_error() {
        assert!(
            selector("matchLabel: {app: x}")
                .unwrap_err()
                .contains("unknown field")
        );
        let e = selector("matchExpressions: [{key: a, operator: In}]").unwrap_err();
        assert!(e.contains("In and NotIn need values"), "{e}");
        assert!(selector("matchExpressions: [{key: a, operator: Exists, values: [x]}]").is_err());
        assert!(selector("matchExpressions: [{key: a, operator: Gt, values: ['1']}]").is_err());
    }
}
