//! Compiles `proto/**/*.proto` (the TCK models the Go SDK's TCK user function serves, and the
//! test services of our own) with `protox` — no system `protoc` — into messages and tonic
//! clients and servers, and writes their encoded descriptor set (imports included) to
//! `OUT_DIR/e2e_descriptors.bin` for user functions written with the Rust SDK.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    collect(Path::new("proto"), &mut files)?;
    files.sort();
    let mut compiler = protox::Compiler::new(["proto", "../schemas/proto"])?;
    compiler.include_imports(true);
    compiler.open_files(&files)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("e2e_descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            out.push(
                path.strip_prefix("proto")
                    .expect("under proto")
                    .to_path_buf(),
            );
        }
    }
    Ok(())
}
