//! The JVM side of the infra: finding a Java 17 runtime, and resolving each service's jars
//! from Maven Central once into `~/.cache/statehouse/<name>-<version>/libs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::infra::process::find_on_path;
use crate::layout::Layout;

/// Env var naming the `java` binary to use instead of the discovered Java 17.
pub(crate) const JAVA_ENV: &str = "STATEHOUSE_JAVA";

const INSTALL_HINT: &str = "install it with: apt-get install -y openjdk-17-jre-headless maven";

/// The Java major version both services are run (and tested) on.
const WANTED_MAJOR: u32 = 17;

/// A `java` binary and its major version.
#[derive(Debug, Clone)]
pub(crate) struct Java {
    pub(crate) bin: PathBuf,
    pub(crate) major: u32,
}

/// Finds Java 17: `$STATEHOUSE_JAVA` if set (any version, trusted), else the first Java 17
/// among `$JAVA_HOME`, `/usr/lib/jvm/*17*` and `java` on `PATH`.
pub(crate) fn find_java() -> Result<Java> {
    if let Some(bin) = std::env::var_os(JAVA_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        let major = java_major(&bin)
            .with_context(|| format!("{JAVA_ENV}={} is not a working java", bin.display()))?;
        return Ok(Java { bin, major });
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        candidates.push(PathBuf::from(home).join("bin").join("java"));
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/jvm") {
        let mut jvms: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("17"))
            .map(|e| e.path().join("bin").join("java"))
            .collect();
        jvms.sort();
        candidates.extend(jvms);
    }
    candidates.extend(find_on_path("java"));
    let mut seen = Vec::new();
    for bin in candidates {
        if !bin.exists() {
            continue;
        }
        match java_major(&bin) {
            Ok(WANTED_MAJOR) => {
                return Ok(Java {
                    bin,
                    major: WANTED_MAJOR,
                });
            }
            Ok(major) => seen.push(format!("{} (Java {major})", bin.display())),
            Err(_) => seen.push(format!("{} (not working)", bin.display())),
        }
    }
    if seen.is_empty() {
        bail!("no Java runtime found; {INSTALL_HINT}");
    }
    bail!(
        "Java {WANTED_MAJOR} not found (Cassandra 5.0 runs on Java 11/17, Kafka 4 needs 17+); \
         found: {}; {INSTALL_HINT} (or point {JAVA_ENV} at a java binary)",
        seen.join(", ")
    )
}

/// The major version `bin -version` reports (`17` for `"17.0.15"`, `8` for `"1.8.0_x"`).
fn java_major(bin: &Path) -> Result<u32> {
    let out = Command::new(bin).arg("-version").output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    parse_java_major(&text).context("unrecognised `java -version` output")
}

fn parse_java_major(version_output: &str) -> Option<u32> {
    let quoted = version_output.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '+', '_']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// One service's jar set, described by a pom under `xtask/infra/<name>/`.
#[derive(Debug, Clone)]
pub(crate) struct Artifact {
    /// `kafka` or `cassandra`: the pom folder and the cache prefix.
    pub(crate) name: &'static str,
    /// The version, read from the pom's `<name>.version` property.
    pub(crate) version: String,
    pub(crate) pom: PathBuf,
}

impl Artifact {
    /// Reads the artifact described by `xtask/infra/<name>/pom.xml`.
    pub(crate) fn load(layout: &Layout, name: &'static str) -> Result<Self> {
        let pom = layout.pom(name);
        let text =
            fs::read_to_string(&pom).with_context(|| format!("cannot read {}", pom.display()))?;
        let tag = format!("<{name}.version>");
        let version = text
            .split_once(&tag)
            .and_then(|(_, rest)| rest.split_once('<'))
            .map(|(v, _)| v.trim().to_owned())
            .with_context(|| format!("{} has no {tag} property", pom.display()))?;
        Ok(Self { name, version, pom })
    }

    /// `<cache>/<name>-<version>`.
    pub(crate) fn cache_dir(&self, layout: &Layout) -> PathBuf {
        layout.cache.join(format!("{}-{}", self.name, self.version))
    }

    /// The folder of jars, resolving it with Maven first if it is missing, incomplete or
    /// was resolved from another version of the pom.
    pub(crate) fn ensure_libs(&self, layout: &Layout) -> Result<PathBuf> {
        let dir = self.cache_dir(layout);
        let libs = dir.join("libs");
        let marker = dir.join("libs.complete");
        let pom_text = fs::read(&self.pom)?;
        let expected = format!("pom-fnv1a64={:016x}\n", fnv1a64(&pom_text));
        if libs.is_dir() && fs::read_to_string(&marker).is_ok_and(|m| m == expected) {
            return Ok(libs);
        }
        let Some(mvn) = find_on_path("mvn") else {
            bail!(
                "{} jars are not cached in {} and Maven (mvn) is missing; {INSTALL_HINT}",
                self.name,
                dir.display()
            );
        };
        println!(
            "{}: resolving {} {} jars with Maven into {} (once)…",
            self.name,
            self.name,
            self.version,
            libs.display()
        );
        let started = Instant::now();
        let partial = dir.join("libs.partial");
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&dir)?;
        let out = Command::new(mvn)
            .arg("-q")
            .arg("-B")
            .arg("-f")
            .arg(&self.pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", partial.display()))
            .output()
            .context("cannot run mvn")?;
        if !out.status.success() {
            bail!(
                "mvn could not resolve the {} jars (is Maven Central reachable?):\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = fs::remove_file(&marker);
        if libs.exists() {
            fs::remove_dir_all(&libs)?;
        }
        fs::rename(&partial, &libs)?;
        fs::write(&marker, expected)?;
        println!(
            "{}: jars resolved in {:.1}s",
            self.name,
            started.elapsed().as_secs_f64()
        );
        Ok(libs)
    }
}

/// FNV-1a, 64 bit: a stable fingerprint of the pom (no extra dependency for a hash).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The first jar in `libs` whose file name starts with `prefix`.
pub(crate) fn find_jar(libs: &Path, prefix: &str) -> Option<PathBuf> {
    let mut jars: Vec<PathBuf> = fs::read_dir(libs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".jar"))
        })
        .collect();
    jars.sort();
    jars.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_java_versions() {
        let jdk17 = "openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime Environment";
        assert_eq!(parse_java_major(jdk17), Some(17));
        assert_eq!(parse_java_major("java version \"1.8.0_392\""), Some(8));
        assert_eq!(
            parse_java_major("openjdk version \"25\" 2025-09-16"),
            Some(25)
        );
        assert_eq!(parse_java_major("no quotes here"), None);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
