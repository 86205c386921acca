//! The CRD YAML in the chart is what `crdgen` writes from the types: nobody edited it by hand,
//! and nobody changed a type without regenerating it.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/ferry/crds");
    for crd in ferry_crds::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let path = format!("{dir}/{name}.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            committed == ferry_crds::crd_yaml(&crd),
            "{path} is out of date: run `cargo run -p ferry-crds --bin crdgen` and commit the result"
        );
    }
}
