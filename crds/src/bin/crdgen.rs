//! Writes the CRD YAML of every Ferry resource into a directory (default `charts/ferry/crds`),
//! one file per CRD. `--check` compares instead of writing and fails on any difference.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from("charts/ferry/crds");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]   (DIR defaults to charts/ferry/crds)");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let mut stale = Vec::new();
    for crd in ferry_crds::crds() {
        let name = crd.metadata.name.clone().expect("derived CRDs are named");
        let yaml = ferry_crds::crd_yaml(&crd);
        let path = dir.join(format!("{name}.yaml"));
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, yaml))
        {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "crdgen: out of date: {}\nrun `cargo run -p ferry-crds --bin crdgen` and commit the result",
            stale.join(", ")
        );
        ExitCode::FAILURE
    }
}
