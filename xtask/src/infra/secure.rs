//! `infra up --secure`: a second Kafka node and a second Cassandra node that only speak to
//! authenticated clients over TLS, for the tests that prove Statehouse works against secured
//! infrastructure (`e2e/tests/secure.rs`, `docs/security.md`).
//!
//! * Kafka: one KRaft node whose only client listener is `SASL_SSL` on 127.0.0.1:9096
//!   (mechanisms SCRAM-SHA-512 and PLAIN). Brokers talk to each other over the same listener
//!   as the super user `admin`; the controller listener (9097) is loopback-only plaintext, as
//!   the quorum of a combined node never leaves the process's host.
//! * Cassandra: one node with `client_encryption_options` required (no plaintext fallback) and
//!   `PasswordAuthenticator` on 127.0.0.1:9142; its superuser is Cassandra's default
//!   (`cassandra`/`cassandra`), which a test uses only to create the login role it runs as.
//!
//! The material lives in `<infra>/secure/`, made once with the `openssl` command line: a CA,
//! one server certificate for `localhost` and `127.0.0.1`, and random passwords for the Kafka
//! users `admin` and `statehouse` (files readable by the owner only). The tests find it through
//! [`env`].
//!
//! The secured Kafka node runs an authorizer (`StandardAuthorizer`): `admin` is a super user,
//! and `statehouse` gets exactly the ACLs `docs/security.md` lists for the processor's principal
//! (prefixed by `statehouse.` and by the tests' `e2e-`), granted with Kafka's own `AclCommand`
//! once per cluster ([`grant_acls`]) — so the secured test proves that table is enough.
//!
//! The plain services answer the hand-written protocol probes of [`super::health`]; these do not
//! take plaintext, so they count as healthy when their port accepts connections and their log
//! said (since this start) that they serve clients ([`health`]).

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::layout::Layout;

/// The secured Kafka node's `SASL_SSL` client port.
pub(crate) const KAFKA_PORT: u16 = 9096;
/// The secured Kafka node's controller port (loopback, plaintext).
pub(crate) const KAFKA_CONTROLLER_PORT: u16 = 9097;
/// The secured Cassandra node's CQL port (TLS required).
pub(crate) const CASSANDRA_PORT: u16 = 9142;
/// The secured Cassandra node's storage (gossip) port.
pub(crate) const CASSANDRA_STORAGE_PORT: u16 = 7010;
/// The secured Cassandra node's local JMX port.
pub(crate) const CASSANDRA_JMX_PORT: u16 = 7299;
/// The Kafka user Statehouse authenticates as.
pub(crate) const KAFKA_USER: &str = "statehouse";
/// The Kafka super user the broker itself authenticates as.
pub(crate) const KAFKA_ADMIN: &str = "admin";

/// The certificates and passwords in `<infra>/secure/`.
#[derive(Debug, Clone)]
pub(crate) struct Material {
    pub(crate) dir: PathBuf,
}

impl Material {
    pub(crate) fn at(layout: &Layout) -> Self {
        Self {
            dir: layout.infra.join("secure"),
        }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub(crate) fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub(crate) fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The server's private key followed by its certificate chain: the PEM keystore form
    /// Kafka and Cassandra both read.
    pub(crate) fn server_bundle(&self) -> PathBuf {
        self.dir.join("server-bundle.pem")
    }

    pub(crate) fn kafka_password_file(&self) -> PathBuf {
        self.dir.join("kafka-password")
    }

    fn kafka_admin_password_file(&self) -> PathBuf {
        self.dir.join("kafka-admin-password")
    }

    pub(crate) fn kafka_password(&self) -> Result<String> {
        read_secret(&self.kafka_password_file())
    }

    pub(crate) fn kafka_admin_password(&self) -> Result<String> {
        read_secret(&self.kafka_admin_password_file())
    }

    /// Makes whatever is missing: the CA, the server certificate, the passwords.
    pub(crate) fn ensure(&self) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        for file in [self.kafka_password_file(), self.kafka_admin_password_file()] {
            if !file.exists() {
                write_private(&file, &random_password()?)?;
            }
        }
        if self.ca().exists() && self.server_bundle().exists() {
            return Ok(());
        }
        // (CN is at most 64 characters.)
        let subject = format!("/CN=statehouse infra CA {}", &random_password()?[..16]);
        // A unique CA name: two test CAs with one name confuse verifiers.
        openssl(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                ])
                .args(["-subj", &subject, "-keyout"])
                .arg(self.ca_key())
                .arg("-out")
                .arg(self.ca()),
        )?;
        let csr = self.dir.join("server.csr");
        openssl(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                ])
                .arg("-keyout")
                .arg(self.server_key())
                .arg("-out")
                .arg(&csr),
        )?;
        let ext = self.dir.join("server.ext");
        fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "3650", "-set_serial", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(self.ca())
                .arg("-CAkey")
                .arg(self.ca_key())
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(self.server_cert()),
        )?;
        let bundle = format!(
            "{}{}",
            fs::read_to_string(self.server_key())?,
            fs::read_to_string(self.server_cert())?
        );
        write_private(&self.server_bundle(), &bundle)?;
        fs::set_permissions(self.server_key(), fs::Permissions::from_mode(0o600))?;
        fs::set_permissions(self.ca_key(), fs::Permissions::from_mode(0o600))?;
        let _ = fs::remove_file(csr);
        let _ = fs::remove_file(ext);
        Ok(())
    }
}

/// Runs an `openssl` command line, failing with its error output.
fn openssl(command: &mut Command) -> Result<()> {
    let out = command
        .output()
        .context("cannot run `openssl` (install the openssl package)")?;
    if !out.status.success() {
        bail!(
            "`{command:?}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// 24 random bytes as hex.
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn read_secret(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_owned())
}

/// Topic, group and transactional-id prefixes the `statehouse` user may use: the default
/// `kafka.topic-prefix` and the whole-stack tests' (`e2e-<unique>.`).
pub(crate) const ACL_PREFIXES: [&str; 2] = ["statehouse.", "e2e-"];

/// The ACLs of `docs/security.md` ("Kafka ACLs for the processor's principal") for `statehouse`:
/// each `AclCommand --add` argument list after the connection options.
fn acl_grants() -> Vec<Vec<String>> {
    let principal = format!("User:{KAFKA_USER}");
    let grant = |resource: &str, operations: &[&str], prefixed: bool| {
        let mut args = vec![
            "--add".to_owned(),
            "--allow-principal".to_owned(),
            principal.clone(),
        ];
        if prefixed {
            args.extend(["--resource-pattern-type".to_owned(), "prefixed".to_owned()]);
            for prefix in ACL_PREFIXES {
                args.extend([resource.to_owned(), prefix.to_owned()]);
            }
        } else {
            args.push(resource.to_owned());
        }
        for operation in operations {
            args.extend(["--operation".to_owned(), (*operation).to_owned()]);
        }
        args
    };
    vec![
        grant(
            "--topic",
            &["Describe", "DescribeConfigs", "Read", "Write", "Create"],
            true,
        ),
        grant("--group", &["Describe", "Read"], true),
        grant("--transactional-id", &["Describe", "Write"], true),
        grant("--cluster", &["IdempotentWrite"], false),
    ]
}

/// Grants [`acl_grants`] on the secured node at `port` with Kafka's `AclCommand` (as `admin`),
/// once per cluster: `marker` keeps the cluster id it was done for.
pub(crate) fn grant_acls(
    java: &Path,
    libs: &Path,
    material: &Material,
    node_dir: &Path,
    port: u16,
) -> Result<()> {
    let cluster_id = fs::read_to_string(node_dir.join("cluster.id")).unwrap_or_default();
    let marker = node_dir.join("acls.granted");
    if !cluster_id.trim().is_empty()
        && fs::read_to_string(&marker).is_ok_and(|done| done.trim() == cluster_id.trim())
    {
        return Ok(());
    }
    let admin = node_dir.join("admin.properties");
    write_private(
        &admin,
        &format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"{KAFKA_ADMIN}\" password=\"{}\";\n\
             ssl.truststore.type=PEM\nssl.truststore.location={}\n",
            material.kafka_admin_password()?,
            material.ca().display()
        ),
    )?;
    for grant in acl_grants() {
        let out = Command::new(java)
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg("org.apache.kafka.tools.AclCommand")
            .args(["--bootstrap-server", &format!("127.0.0.1:{port}")])
            .arg("--command-config")
            .arg(&admin)
            .args(&grant)
            .output()
            .context("cannot run Kafka's AclCommand")?;
        if !out.status.success() {
            bail!(
                "granting Kafka ACLs ({}) failed: {}{}",
                grant.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    fs::write(&marker, cluster_id)?;
    Ok(())
}

/// The file that says this start of a secured service was seen healthy (next to its log).
fn started_file(log: &Path) -> PathBuf {
    log.with_extension("started")
}

/// Forgets what an earlier start logged, before a new one: the log and its "started" file.
pub(crate) fn forget_start(log: &Path) {
    let _ = fs::remove_file(log);
    let _ = fs::remove_file(started_file(log));
}

/// Healthy = `port` accepts connections and this start's log said `marker` (the log is removed
/// before each start, [`forget_start`]). The first sighting is kept in a file, so the check
/// neither rereads a log that grew nor loses the marker when the log rolls over.
pub(crate) fn health(port: u16, log: &Path, marker: &str, what: &str) -> Result<String> {
    if !super::process::port_open(port) {
        bail!("port {port} does not accept connections yet");
    }
    let started = started_file(log);
    if !started.exists() {
        if !fs::read_to_string(log).unwrap_or_default().contains(marker) {
            bail!("{} does not say {marker:?} yet", log.display());
        }
        fs::write(&started, marker)?;
    }
    Ok(format!("{what} on 127.0.0.1:{port}"))
}

/// Where the secured-infrastructure tests find the services and the material.
pub(crate) fn env(layout: &Layout) -> Vec<(&'static str, String)> {
    let material = Material::at(layout);
    vec![
        (
            "STATEHOUSE_TEST_SECURE_KAFKA",
            format!("127.0.0.1:{KAFKA_PORT}"),
        ),
        (
            "STATEHOUSE_TEST_SECURE_CASSANDRA",
            format!("127.0.0.1:{CASSANDRA_PORT}"),
        ),
        (
            "STATEHOUSE_TEST_SECURE_DIR",
            material.dir.display().to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acls_follow_the_documented_table() {
        let grants = acl_grants();
        let topic = grants[0].join(" ");
        assert!(
            topic.contains("--resource-pattern-type prefixed --topic statehouse. --topic e2e-")
        );
        for op in ["Describe", "DescribeConfigs", "Read", "Write", "Create"] {
            assert!(topic.contains(&format!("--operation {op}")), "{topic}");
        }
        assert!(grants[1].join(" ").contains("--group statehouse."));
        assert!(grants[2].join(" ").contains("--transactional-id e2e-"));
        assert!(
            grants[3]
                .join(" ")
                .ends_with("--cluster --operation IdempotentWrite")
        );
        assert!(
            grants
                .iter()
                .all(|g| g.contains(&"User:statehouse".to_owned()))
        );
    }

    #[test]
    fn health_needs_the_marker_of_this_start_and_keeps_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("xtask-health-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        fs::write(&log, "starting\n").unwrap();
        assert!(health(port, &log, "Server started", "x").is_err());
        fs::write(&log, "starting\nServer started\n").unwrap();
        assert!(health(port, &log, "Server started", "x").is_ok());
        // The log rolled over: the sighting is kept.
        fs::write(&log, "later lines\n").unwrap();
        assert!(health(port, &log, "Server started", "x").is_ok());
        // A new start forgets it.
        forget_start(&log);
        fs::write(&log, "starting again\n").unwrap();
        assert!(health(port, &log, "Server started", "x").is_err());
        drop(listener);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn passwords_are_random_hex() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 48);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
