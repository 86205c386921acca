//! The manifests users apply (quickstart, demo, examples) name each ModelVersion build once: where
//! two files use one name, they define the same spec. A ModelVersion cannot change, so a second,
//! different definition would be refused by the API server when both are applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_crds::ModelVersion;
use serde::Deserialize;

fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files = vec![root.join("quickstart.yaml")];
    for dir in ["demo", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_model_version_name_means_one_spec_in_every_manifest() {
    let mut seen: BTreeMap<String, (PathBuf, ModelVersion)> = BTreeMap::new();
    let mut shared = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_json::Value::deserialize(doc).unwrap();
            if doc["kind"] != "ModelVersion" {
                continue;
            }
            let mv: ModelVersion = serde_json::from_value(doc).unwrap();
            let name = mv.metadata.name.clone().unwrap();
            match seen.get(&name) {
                Some((first, earlier)) => {
                    assert_eq!(
                        earlier.spec,
                        mv.spec,
                        "ModelVersion {name} differs between {} and {}",
                        first.display(),
                        file.display()
                    );
                    shared += 1;
                }
                None => {
                    seen.insert(name, (file.clone(), mv));
                }
            }
        }
    }
    assert!(
        shared >= 2,
        "the demo and the examples share builds: {seen:?}"
    );
}
