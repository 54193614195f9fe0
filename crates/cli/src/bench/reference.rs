//! The raw reference: `vmpup_ref.c`, compiled with the system C compiler and
//! run in the same invocation, so ratios compare like with like.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the reference source is looked for when not given: beside the
/// current directory's parent, and beside the workspace's.
pub fn default_source() -> Option<PathBuf> {
    let rel = Path::new("../shared/reference/vmpup_ref.c");
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/vmpup_ref.c");
    [rel.to_path_buf(), workspace]
        .into_iter()
        .find(|p| p.is_file())
}

/// Compiles and runs the reference; returns its JSON object.
pub fn run(source: &Path) -> Result<Map<String, Value>> {
    let exe = std::env::temp_dir().join(format!("vmprim-vmpup-ref.{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O2", "-pthread"])
        .arg(source)
        .arg("-o")
        .arg(&exe)
        .status()
        .with_context(|| format!("run cc on {}", source.display()))?;
    if !status.success() {
        bail!("cc {} failed: {status}", source.display());
    }
    let out = Command::new(&exe)
        .output()
        .with_context(|| format!("run {}", exe.display()));
    let _ = std::fs::remove_file(&exe);
    let out = out?;
    if !out.status.success() {
        bail!(
            "the reference failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parse the reference's JSON")?;
    match v {
        Value::Object(m) => Ok(m),
        _ => bail!("the reference printed no JSON object"),
    }
}
