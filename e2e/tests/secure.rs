//! The whole shopping-cart path secured end to end (`docs/security.md`), against the secured
//! Kafka and Cassandra of `cargo xtask infra up --secure`:
//!
//! * clients reach the gateway over TLS with a JWT (an anonymous write is refused);
//! * the gateway reaches the processors over mTLS;
//! * the processors (and `admin migrate`) reach Kafka over `SASL_SSL` with SCRAM-SHA-512, and
//!   Cassandra over TLS as a login role that may only create keyspaces (it owns what it
//!   creates) — a role this test makes with the default superuser;
//! * the secrets reach Statehouse only through `STATEHOUSE__…` environment variables, and
//!   neither they nor the token appear in any log;
//! * the events are in the secured Kafka's journal and the secured Cassandra's backup, and a
//!   restarted processor recovers the cart from them;
//! * the broker runs an authorizer, and the processor's ACLs of `docs/security.md` (granted by
//!   `infra up --secure`) are all the cart needs; a prefix outside them is refused;
//! * the negatives fail: a wrong Kafka password (saying the login was refused), a plaintext Kafka client, a plaintext
//!   Cassandra client; the PLAIN mechanism works as well as SCRAM.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use serde_json::json;
use statehouse_e2e::carts::warm_up;
use statehouse_e2e::clients::journal_seqs;
use statehouse_e2e::jwt::{Keys, now};
use statehouse_e2e::tls::{cart_client, client, gateway_tls_sets, internal_tls_sets, mint, probe};
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, LineItem};
use statehouse_test_support::stack::{Options, Probe, Stack};
use statehouse_test_support::user_function::Kind;
use statehouse_test_support::{infra, process, unique};

const SERVICE: &str = "shopping-cart";
const PARTITIONS: u32 = 4;
const CART: &str = "secure-cart";
const ISSUER: &str = "https://issuer.secure.test";
const AUDIENCE: &str = "shop";
const NAME: &str = "statehouse.internal";
const KAFKA_USER: &str = "statehouse";

/// Where `infra up --secure` runs the secured services; fails loudly when it does not.
struct Secured {
    kafka: String,
    cassandra: String,
    dir: PathBuf,
}

impl Secured {
    fn from_env() -> Self {
        // `infra up --secure` prints these; its defaults stand when they are not set.
        let var = |name: &str, default: String| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or(default)
        };
        let secured = Self {
            kafka: var("STATEHOUSE_TEST_SECURE_KAFKA", "127.0.0.1:9096".into()),
            cassandra: var("STATEHOUSE_TEST_SECURE_CASSANDRA", "127.0.0.1:9142".into()),
            dir: PathBuf::from(var(
                "STATEHOUSE_TEST_SECURE_DIR",
                infra::infra_dir().join("secure").display().to_string(),
            )),
        };
        for addr in [&secured.kafka, &secured.cassandra] {
            assert!(
                std::net::TcpStream::connect(addr).is_ok(),
                "nothing listens on {addr}: start the secured Kafka and Cassandra with \
                 `cargo xtask infra up --secure` (and export the STATEHOUSE_TEST_SECURE_* \
                 variables it prints if you moved them)"
            );
        }
        secured
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn kafka_password(&self) -> String {
        std::fs::read_to_string(self.dir.join("kafka-password"))
            .expect("the Kafka password of `infra up --secure`")
            .trim()
            .to_owned()
    }

    /// The librdkafka settings of a SASL_SSL client, as `STATEHOUSE__` variables.
    fn kafka_env(&self, mechanism: &str, password: &str) -> Vec<(String, String)> {
        let var = |key: &str, value: &str| {
            (
                format!("STATEHOUSE__KAFKA__LIBRDKAFKA__{key}"),
                value.to_owned(),
            )
        };
        vec![
            var("SECURITY_PROTOCOL", "SASL_SSL"),
            var("SASL_MECHANISM", mechanism),
            var("SASL_USERNAME", KAFKA_USER),
            var("SASL_PASSWORD", password),
            var("SSL_CA_LOCATION", &self.ca().display().to_string()),
        ]
    }

    /// Kafka options of the test's own SASL_SSL reader.
    fn kafka_options(&self, prefix: &str) -> statehouse_kafka::Options {
        let mut options = statehouse_kafka::Options {
            bootstrap_servers: self.kafka.clone(),
            topic_prefix: prefix.to_owned(),
            ..statehouse_kafka::Options::default()
        };
        for (key, value) in [
            ("security.protocol", "SASL_SSL".to_owned()),
            ("sasl.mechanism", "SCRAM-SHA-512".to_owned()),
            ("sasl.username", KAFKA_USER.to_owned()),
            ("sasl.password", self.kafka_password()),
            ("ssl.ca.location", self.ca().display().to_string()),
        ] {
            options.librdkafka.insert(key.to_owned(), value);
        }
        options
    }

    /// A session over TLS as `user`.
    async fn session(&self, user: &str, password: &str) -> Result<Session, String> {
        let mut tls = SslConnector::builder(SslMethod::tls_client()).unwrap();
        tls.set_ca_file(self.ca()).unwrap();
        SessionBuilder::new()
            .known_node(&self.cassandra)
            .user(user, password)
            .tls_context(Some(tls))
            .build()
            .await
            .map_err(|e| e.to_string())
    }

    /// A fresh login role that may create keyspaces (and so owns the stack's), made with the
    /// default superuser once Cassandra has created it: (role, password).
    async fn cassandra_role(&self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let admin = loop {
            match self.session("cassandra", "cassandra").await {
                Ok(session) => break session,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for the secured Cassandra's superuser: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("the secured Cassandra refuses its default superuser: {e}"),
            }
        };
        let role = unique("sh_role").replace('-', "_");
        let password = unique("cassandra-secret");
        for cql in [
            format!("CREATE ROLE {role} WITH PASSWORD = '{password}' AND LOGIN = true"),
            format!("GRANT CREATE ON ALL KEYSPACES TO {role}"),
        ] {
            admin
                .query_unpaged(cql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{cql}: {e}"));
        }
        (role, password)
    }
}

/// `statehouse <args>` with `env`, bounded by 60 s: (success, stdout + stderr).
fn statehouse(args: &[String], env: &[(String, String)]) -> (bool, String) {
    let mut child = Command::new(process::binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running statehouse");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn set(pairs: &[String]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|s| ["--set".to_owned(), s.clone()])
        .collect()
}

fn add(product: &str, quantity: i32) -> AddLineItem {
    AddLineItem {
        user_id: CART.into(),
        product_id: product.into(),
        name: product.to_uppercase(),
        quantity,
    }
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_runs_on_secured_kafka_and_cassandra_over_tls_and_jwt() {
    let secured = Secured::from_env();
    let (role, cassandra_password) = secured.cassandra_role().await;
    let kafka_password = secured.kafka_password();

    // Gateway and internal certificates, and the JWKS of the test's keys.
    let dir = std::env::temp_dir().join(unique("statehouse-e2e-secure"));
    std::fs::create_dir_all(&dir).unwrap();
    mint(&dir, NAME);
    let keys = Keys::new();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, keys.jwks()).unwrap();

    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = PARTITIONS;
    options.common_sets = vec![
        format!("kafka.bootstrap-servers={}", secured.kafka),
        format!("cassandra.contact-points=[\"{}\"]", secured.cassandra),
        "cassandra.tls.enabled=true".into(),
        format!("cassandra.tls.ca-file={:?}", secured.ca().display().to_string()),
        "gateway.auth.enabled=true".into(),
        format!("gateway.auth.jwks-file=\"{}\"", jwks.display()),
        format!("gateway.auth.issuers=[\"{ISSUER}\"]"),
        format!("gateway.auth.audiences=[\"{AUDIENCE}\"]"),
        "gateway.auth.rules=[{method=\"com.example.shoppingcart.ShoppingCart/GetCart\", access=\"anonymous\"}]".into(),
        // Debug logs of our crates: the secrets must not be in them either.
        "telemetry.log-filter=\"info,statehouse_gateway=debug,statehouse_processor=debug,statehouse_kafka=debug,statehouse_store=debug\"".into(),
    ];
    options.common_sets.extend(gateway_tls_sets(&dir));
    options.common_sets.extend(internal_tls_sets(&dir, NAME));
    // The secrets only in the environment.
    let env = |mechanism: &str, kafka_password: &str| {
        let mut env = secured.kafka_env(mechanism, kafka_password);
        env.extend([
            ("STATEHOUSE__CASSANDRA__USERNAME".to_owned(), role.clone()),
            (
                "STATEHOUSE__CASSANDRA__PASSWORD".to_owned(),
                cassandra_password.clone(),
            ),
        ]);
        env
    };
    options.env = env("SCRAM-SHA-512", &kafka_password);
    let probe_tls = client(&dir, None, b"http/1.1");
    options.gateway_probe = Some(Probe(Arc::new(move |addr| probe(addr, &probe_tls))));
    let mut stack = Stack::start_ready(options);

    // Over TLS: an anonymous read, a refused anonymous write, two writes with a token.
    let grpc_tls = client(&dir, None, b"h2");
    let mut cart = cart_client(&stack, &grpc_tls).await;
    warm_up(&mut cart).await;
    let refused = cart.add_item(add("apple", 1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let token = keys.ed_token(
        "ed1",
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "exp": now() + 600}),
    );
    cart.add_item(bearer(add("apple", 2), &token))
        .await
        .unwrap();
    cart.add_item(bearer(add("fig", 1), &token)).await.unwrap();
    let item = |id: &str, quantity| LineItem {
        product_id: id.into(),
        name: id.to_uppercase(),
        quantity,
    };
    let expected = [item("apple", 2), item("fig", 1)];
    let items = cart
        .get_cart(GetShoppingCart {
            user_id: CART.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items, expected);

    // The events are in the secured Kafka's journal (read over SASL_SSL) ...
    let kafka = secured.kafka_options(&stack.prefix);
    let entity = format!("{SERVICE}|{CART}");
    let journal = journal_seqs(
        &kafka,
        &format!("{}{SERVICE}.journal", stack.prefix),
        statehouse_core::partition_for(CART.as_bytes(), PARTITIONS),
        &entity,
    )
    .await;
    assert_eq!(journal, [1, 2], "the journal holds the two accepted events");

    // ... and in the secured Cassandra's backup (read over TLS as the role).
    let store = statehouse_store::Store::connect(&statehouse_store::Options {
        contact_points: vec![secured.cassandra.clone()],
        keyspace: stack.keyspace.clone(),
        username: Some(role.clone()),
        password: Some(cassandra_password.clone()),
        tls: statehouse_store::TlsOptions {
            enabled: true,
            ca_file: Some(secured.ca()),
            ..Default::default()
        },
        ..statehouse_store::Options::default()
    })
    .await
    .expect("the role reaches its keyspace over TLS");
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = store.read_journal(SERVICE, &entity, 1).await.unwrap();
        if rows.len() >= 2 || Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);

    // A restarted processor recovers the cart from the secured infrastructure.
    stack.pods[0].processor.restart();
    stack.wait_ready(0, Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    let items = loop {
        match cart
            .get_cart(GetShoppingCart {
                user_id: CART.into(),
            })
            .await
        {
            Ok(reply) => break reply.into_inner().items,
            Err(s) if Instant::now() < deadline && s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("after the restart: {s:?}"),
        }
    };
    assert_eq!(items, expected, "recovered from Kafka and Cassandra");

    // The PLAIN mechanism works too (an admin command that reads the registry).
    let common = set(&stack.common_sets());
    let mut args = common.clone();
    args.extend(["admin".to_owned(), "services".to_owned()]);
    let (ok, out) = statehouse(&args, &env("PLAIN", &kafka_password));
    assert!(ok, "admin services over SASL PLAIN:\n{out}");
    assert!(out.contains(SERVICE), "{out}");

    // A wrong password fails, saying why.
    let mut short = common.clone();
    short.extend(set(&["kafka.request-timeout-ms=10000".to_owned()]));
    short.extend(["admin".to_owned(), "services".to_owned()]);
    let (ok, out) = statehouse(&short, &env("SCRAM-SHA-512", "not-the-password"));
    assert!(!ok, "a wrong Kafka password was accepted:\n{out}");
    assert!(
        out.contains("SASL authentication error") && out.contains("invalid credentials"),
        "a wrong password should say the login was refused:\n{out}"
    );
    // The broker authorizes: the ACLs that served the cart above (docs/security.md's table,
    // granted by `infra up --secure` for the `e2e-` prefix) do not cover another prefix.
    let mut other = short[..short.len() - 2].to_vec();
    other.extend(set(&["kafka.topic-prefix=other.".to_owned()]));
    other.extend(["admin", "topics", "create", "--service", SERVICE].map(String::from));
    let (ok, out) = statehouse(&other, &env("SCRAM-SHA-512", &kafka_password));
    assert!(!ok, "a topic outside the ACLs was created:\n{out}");
    assert!(out.contains("TopicAuthorizationFailed"), "{out}");
    // A plaintext Kafka client gets nowhere.
    let mut plaintext = env("SCRAM-SHA-512", &kafka_password);
    for (key, value) in &mut plaintext {
        if key.ends_with("__SECURITY_PROTOCOL") {
            *value = "SASL_PLAINTEXT".to_owned();
        }
    }
    let (ok, out) = statehouse(&short, &plaintext);
    assert!(!ok, "a plaintext Kafka client was served:\n{out}");
    assert!(
        out.contains(&format!("Kafka at {}", secured.kafka)),
        "the failure names the brokers and librdkafka's reason:\n{out}"
    );
    // A plaintext Cassandra client neither.
    let plain_cassandra: Vec<String> = stack
        .common_sets()
        .into_iter()
        .filter(|s| !s.starts_with("cassandra.tls."))
        .collect();
    let mut args = set(&plain_cassandra);
    args.extend(set(&["cassandra.keyspace=secure_plaintext".to_owned()]));
    args.extend(["admin".to_owned(), "migrate".to_owned()]);
    let (ok, out) = statehouse(&args, &env("SCRAM-SHA-512", &kafka_password));
    assert!(!ok, "a plaintext Cassandra client was served:\n{out}");
    assert!(
        out.contains(&format!(
            "cannot connect to Cassandra at {}",
            secured.cassandra
        )),
        "the failure is the connection to Cassandra:\n{out}"
    );

    // No secret and no token in any log.
    let mut logs = vec![stack.gateway.log()];
    logs.extend(stack.pods.iter().map(|p| p.processor.log()));
    for (i, log) in logs.iter().enumerate() {
        for (what, secret) in [
            ("the Kafka password", kafka_password.as_str()),
            ("the Cassandra password", cassandra_password.as_str()),
            ("the token", token.as_str()),
        ] {
            assert!(!log.contains(secret), "{what} is in log {i}");
        }
    }
}
