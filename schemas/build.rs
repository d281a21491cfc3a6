//! Compiles `proto/**/*.proto` without a system `protoc`: `protox` (a
//! pure-Rust protobuf compiler) builds the descriptor set, `tonic-prost-build`
//! generates messages, clients and servers from it, and the encoded set is
//! written to `OUT_DIR/file_descriptor_set.bin` for `FILE_DESCRIPTOR_SET`.

use std::{
    env, fs, io,
    path::{Path, PathBuf},
};

const PROTO_DIR: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    let mut files = Vec::new();
    collect_protos(Path::new(PROTO_DIR), &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([PROTO_DIR])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself so that custom options (entity_key,
    // google.api.http, eventing) survive: prost_types drops extension fields.
    fs::write(
        out_dir.join("file_descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // `prost::Name` impls give every message its full name and type URL.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Well-known types (.google.protobuf.*) map to ::prost_types by default.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
