//! Where things live: the workspace, the infra folder (data, logs, pid files, generated
//! configs) and the cache of Maven-resolved jars.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Env var that moves the infra folder (default `<workspace>/.infra`).
pub(crate) const INFRA_DIR_ENV: &str = "STATEHOUSE_INFRA_DIR";
/// Env var that moves the jar cache (default `~/.cache/statehouse`).
pub(crate) const CACHE_DIR_ENV: &str = "STATEHOUSE_CACHE_DIR";

/// The folders every command works in.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The Cargo workspace root (parent of `xtask/`).
    pub(crate) workspace: PathBuf,
    /// Everything the running services own: one sub-folder per service.
    pub(crate) infra: PathBuf,
    /// `<cache>/<name>-<version>/libs` holds the jars of each service.
    pub(crate) cache: PathBuf,
}

impl Layout {
    /// Reads the layout from the environment, with the documented defaults.
    pub(crate) fn from_env() -> Result<Self> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask must live one level below the workspace root")?
            .to_path_buf();
        let infra = match std::env::var_os(INFRA_DIR_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => std::path::absolute(PathBuf::from(dir))
                .with_context(|| format!("{INFRA_DIR_ENV} is not a usable path"))?,
            None => workspace.join(".infra"),
        };
        let cache = match std::env::var_os(CACHE_DIR_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => std::path::absolute(PathBuf::from(dir))
                .with_context(|| format!("{CACHE_DIR_ENV} is not a usable path"))?,
            None => {
                let home = std::env::var_os("HOME").context("HOME is not set")?;
                PathBuf::from(home).join(".cache").join("statehouse")
            }
        };
        Ok(Self {
            workspace,
            infra,
            cache,
        })
    }

    /// The Maven project that describes the jars of a service.
    pub(crate) fn pom(&self, service: &str) -> PathBuf {
        self.workspace
            .join("xtask")
            .join("infra")
            .join(service)
            .join("pom.xml")
    }
}
