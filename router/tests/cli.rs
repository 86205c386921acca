//! The `ferry-router` binary as users and the Helm chart start it. (This test also makes
//! `cargo test` build the binary, which `e2e/cluster/ferry-image.sh` packages into the image.)

use std::process::Command;

#[test]
fn help_names_each_setting_the_chart_passes_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-router"))
        .arg("--help")
        .output()
        .expect("run ferry-router --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for env in [
        "POD_NAMESPACE",
        "FERRY_PORT",
        "FERRY_WATCH_NAMESPACE",
        "FERRY_HOLD_SECONDS",
        "FERRY_RETRIES",
        "FERRY_MAX_BODY_BYTES",
        "FERRY_API_KEYS_SECRET",
        "FERRY_KEY_REQUESTS_PER_SECOND",
        "FERRY_KEY_TOKENS_PER_MINUTE",
        "FERRY_LOG_FORMAT",
    ] {
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
}

#[test]
fn a_bad_flag_is_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-router"))
        .args(["--retries", "many"])
        .output()
        .expect("run ferry-router");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--retries"), "{err}");
}
