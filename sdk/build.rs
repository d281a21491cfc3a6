//! Records the version of the compiling `rustc` for `ServiceInfo.service_runtime`.

use std::{env, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    // "rustc 1.90.0 (1159e78c4 2025-09-14)" -> "1.90.0"
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=STATEHOUSE_SDK_RUSTC_VERSION={version}");
}
