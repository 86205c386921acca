//! Argo CD's health check for Ferry's resources, run the way Argo CD runs it: the Lua script the
//! chart ships (`charts/ferry/argocd/argocd-cm-patch.yaml`) in a Lua 5.1 interpreter (Argo CD's
//! dialect), with the object as the global `obj` (JSON `null` as `nil`), returning a table with
//! `status` and `message`.

use mlua::{Lua, LuaSerdeExt};

/// The patch file that holds the scripts.
pub const PATCH: &str = "charts/ferry/argocd/argocd-cm-patch.yaml";

/// `(status, message)` Argo CD's health check says for `object` (an LLMDeployment or a
/// ModelVersion as the API server returns it).
pub fn health(object: &serde_json::Value) -> (String, String) {
    let kind = object["kind"].as_str().expect("the object has a kind");
    let patch: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(crate::repo_root().join(PATCH)).expect("read the patch file"),
    )
    .expect("the patch file is YAML");
    let key = format!("resource.customizations.health.serving.ferry.dev_{kind}");
    let script = patch["data"][key.as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("{PATCH} has no {key}"));
    let lua = Lua::new();
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let obj = lua
        .to_value_with(object, options)
        .expect("the object as Lua");
    lua.globals().set("obj", obj).expect("set obj");
    let hs: mlua::Table = lua
        .load(script)
        .set_name(key.as_str())
        .eval()
        .unwrap_or_else(|e| panic!("{key} failed: {e}"));
    let field = |name: &str| hs.get::<Option<String>>(name).unwrap().unwrap_or_default();
    (field("status"), field("message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statuses the API server itself produces (the real ones the operator writes are checked in
    /// operator/tests): just created, and a status older than the spec.
    #[test]
    fn an_unobserved_or_stale_status_is_progressing() {
        for status in [
            serde_json::json!({"observedGeneration": -1}),
            serde_json::json!({"observedGeneration": 1, "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "1/1"}]}),
        ] {
            for kind in ["LLMDeployment", "ModelVersion"] {
                let object = serde_json::json!({
                    "kind": kind, "metadata": {"name": "m", "generation": 2}, "status": status,
                });
                let (argo, message) = health(&object);
                assert_eq!(argo, "Progressing", "{kind} {status}: {message}");
            }
        }
    }
}
