//! A local certificate authority for trying TLS (`statehouse admin certs dev`): never for
//! production. One CA, one certificate for servers (the gateway's client port, processors'
//! internal port — also usable as a processor's client certificate), one client certificate
//! (the gateway's router, and callers of a gateway with `client-ca-file`). Both leaves are
//! valid for the given names plus `localhost` and `127.0.0.1`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::Error;

/// The files [`mint`] wrote.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The CA certificate (`ca.pem`): `internal-tls.ca-file`, `gateway.tls.client-ca-file`,
    /// and what clients trust.
    pub ca_cert: PathBuf,
    /// The CA's key (`ca.key`): keep it to mint more, or delete it.
    pub ca_key: PathBuf,
    /// Server certificate (`server.pem`), with server and client usage.
    pub server_cert: PathBuf,
    /// Its key (`server.key`).
    pub server_key: PathBuf,
    /// Client certificate (`client.pem`).
    pub client_cert: PathBuf,
    /// Its key (`client.key`).
    pub client_key: PathBuf,
    /// The names both leaves are valid for.
    pub names: Vec<String>,
}

/// Mints a CA and its two leaves into `dir` (created if missing; files replaced).
pub fn mint(dir: &Path, names: &[String]) -> Result<DevFiles, Error> {
    let io = |path: &Path, source| Error::Read {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let rc = |e: rcgen::Error| Error::Config(format!("minting certificates: {e}"));
    let mut all_names: Vec<String> = names.to_vec();
    for default in ["localhost", "127.0.0.1"] {
        if !all_names.iter().any(|n| n == default) {
            all_names.push(default.to_string());
        }
    }

    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: chains are built by issuer name, and two development CAs with one
    // name would make a stranger's certificate look like a bad signature instead of an
    // unknown CA.
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ca_params.distinguished_name = name(&format!(
        "Statehouse development CA {:x}",
        id ^ u128::from(std::process::id())
    ));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem_key = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(rc)?;

    let leaf =
        |cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| -> Result<(String, String), Error> {
            let key = KeyPair::generate().map_err(rc)?;
            let mut params = CertificateParams::new(all_names.clone()).map_err(rc)?;
            params.distinguished_name = name(cn);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &ca).map_err(rc)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let (server_pem, server_key) = leaf(
        "Statehouse development server",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client_pem, client_key) = leaf(
        "Statehouse development client",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;

    let files = DevFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        names: all_names,
    };
    for (path, contents, secret) in [
        (&files.ca_cert, ca.pem(), false),
        (&files.ca_key, ca_pem_key, true),
        (&files.server_cert, server_pem, false),
        (&files.server_key, server_key, true),
        (&files.client_cert, client_pem, false),
        (&files.client_key, client_key, true),
    ] {
        write_file(path, contents.as_bytes(), secret).map_err(|e| io(path, e))?;
    }
    Ok(files)
}

/// Writes `path` whole (a temporary file renamed over it, so a reloading reader never sees
/// half a file); keys are readable by the owner only.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::fs::rename(&tmp, path)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Statehouse (development)");
    dn
}
