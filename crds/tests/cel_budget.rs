//! The CEL rules compile and stay inside the API server's cost budget, so the CRDs install on
//! clusters that enforce CEL (Kubernetes >= 1.25) and not only on ones that ignore it.

use kube::core::cel::{CompiledSchema, ScopeContext, WarningKind, analyze_rule, compile_schema};

fn check(schema: &CompiledSchema, path: &str, problems: &mut Vec<String>, rules: &mut usize) {
    for v in &schema.validations {
        match v {
            Ok(compiled) => {
                *rules += 1;
                for w in analyze_rule(&compiled.rule.rule, schema, ScopeContext::CrdValidation) {
                    // Scope warnings are left out: the analyser does not know comprehension variables
                    // (`all(v, ...)`); tests/validate.rs evaluates every rule instead.
                    if w.kind == WarningKind::CostExceeded {
                        problems.push(format!("{path}: {}: {}", w.rule, w.message));
                    }
                }
            }
            Err(e) => problems.push(format!("{path}: does not compile: {e}")),
        }
    }
    for (name, child) in &schema.properties {
        check(child, &format!("{path}.{name}"), problems, rules);
    }
    if let Some(items) = &schema.items {
        check(items, &format!("{path}[]"), problems, rules);
    }
}

#[test]
fn cel_rules_compile_within_budget() {
    let mut total = 0;
    for crd in ferry_crds::crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let compiled = compile_schema(&schema);
        let mut problems = Vec::new();
        check(&compiled, "", &mut problems, &mut total);
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            crd.metadata.name.unwrap(),
            problems.join("\n")
        );
    }
    assert_eq!(total, 15, "every CEL rule was analysed");
}
