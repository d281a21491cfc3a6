//! The `statehouse` binary's command line: configuration layering, validation with the bad key
//! named, masked secrets, and exit codes. (No services needed.)

use std::process::Command;

fn statehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_statehouse"));
    c.env_remove("STATEHOUSE_CONFIG").env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("STATEHOUSE__") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_config_accepts_valid_settings_and_masks_secrets() {
    let out = statehouse()
        .args([
            "--set",
            "processor.partitions=24",
            "--set",
            "kafka.librdkafka.sasl.password=hunter2",
        ])
        .env("STATEHOUSE__CASSANDRA__USERNAME", "app")
        .env("STATEHOUSE__CASSANDRA__PASSWORD", "s3cret")
        .args(["processor", "--check-config"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("partitions = 24"), "{stdout}");
    assert!(stdout.contains("username = \"app\""), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("s3cret"),
        "secrets leaked: {stdout}"
    );
    assert!(stderr.contains("configuration OK"), "{stderr}");
}

#[test]
fn bad_configuration_fails_with_the_key_named() {
    for (args, key) in [
        (
            vec!["--set", "processor.partitions=0"],
            "processor.partitions",
        ),
        (vec!["--set", "processor.partitons=3"], "partitons"),
        (
            vec!["--set", "kafka.librdkafka.isolation.level=read_uncommitted"],
            "isolation.level",
        ),
        (
            vec!["--set", "kafka.bootstrap-servers=nohostport"],
            "bootstrap-servers",
        ),
    ] {
        let out = statehouse()
            .args(&args)
            .args(["processor", "--check-config"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} was accepted: {stderr}"
        );
        assert!(
            stderr.contains(key),
            "{args:?}: the error does not name {key}: {stderr}"
        );
    }
    let missing = statehouse()
        .args([
            "--config",
            "/nonexistent/statehouse.toml",
            "gateway",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    let usage = statehouse().args(["no-such-role"]).output().unwrap();
    assert_eq!(
        usage.status.code(),
        Some(2),
        "unknown subcommands are usage errors"
    );
}
