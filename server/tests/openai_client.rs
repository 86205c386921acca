//! The official `openai` Python client talks to ferry-server unchanged.

mod common;

use std::path::PathBuf;

#[tokio::test]
async fn the_official_openai_python_client_works_unchanged() {
    let s = common::tiny(&[]).await;
    let python = common::models_dir()
        .parent()
        .unwrap()
        .join("venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `bash e2e/models/fetch.sh`",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&s.base)
        .arg("tiny")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("openai client: all checks passed"));
}
