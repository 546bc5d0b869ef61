//! Where a model comes from. [`resolve`] tries, in order:
//!
//! 1. **a path** — an HF-layout directory or a `.gguf` file;
//! 2. **a packaged model** — the weights `scripts/setup` installed from registry packages into the
//!    project's `models/` directory, by alias (`smollm2-135m`, `minilm`, or their hub ids);
//! 3. **the local Hugging Face cache** (`$HF_HOME/hub`, as `huggingface-cli download` leaves it);
//! 4. **the hub** through `hf-hub` (skipped when `HF_HUB_OFFLINE=1`).
//!
//! Packaged aliases come before the cache and hub because they name exact files that work offline.
//! The models directory is `$REPLENS_MODELS`, else the first `models/` found in the current
//! directory or its parents, else `models/` beside this crate's `Cargo.toml`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which kind of source a model was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    LocalDir,
    Gguf,
    Packaged,
    HfCache,
    Hub,
    Untrained,
}

/// The source a model was loaded from, and what was tried before it.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub kind: SourceKind,
    pub path: PathBuf,
    /// One line per source tried before this one, with why it failed.
    pub tried: Vec<String>,
}

impl ModelSource {
    pub fn local(dir: &Path) -> Self {
        Self {
            kind: SourceKind::LocalDir,
            path: dir.to_path_buf(),
            tried: vec![],
        }
    }
    pub fn gguf(path: &Path) -> Self {
        Self {
            kind: SourceKind::Gguf,
            path: path.to_path_buf(),
            tried: vec![],
        }
    }
    pub fn untrained(of: &ModelSource, seed: u64) -> Self {
        Self {
            kind: SourceKind::Untrained,
            path: of.path.clone(),
            tried: vec![format!(
                "random HF-style init with seed {seed}, config of {}",
                of.path.display()
            )],
        }
    }

    /// One line for logs and notebooks.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            SourceKind::LocalDir => "local directory",
            SourceKind::Gguf => "GGUF file",
            SourceKind::Packaged => "packaged model",
            SourceKind::HfCache => "Hugging Face cache",
            SourceKind::Hub => "Hugging Face hub",
            SourceKind::Untrained => "untrained twin",
        };
        let mut s = format!("{what} {}", self.path.display());
        if !self.tried.is_empty() {
            s.push_str(&format!(" (before it: {})", self.tried.join("; ")));
        }
        s
    }
}

/// A packaged model: aliases, directory under `models/`, and the file to load.
struct Packaged {
    aliases: &'static [&'static str],
    dir: &'static str,
    gguf: Option<&'static str>,
}

const PACKAGED: &[Packaged] = &[
    Packaged {
        aliases: &[
            "default",
            "smollm2-135m",
            "smollm2",
            "SmolLM2-135M-Instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ],
        dir: "SmolLM2-135M-Instruct",
        gguf: Some("SmolLM2-135M-Instruct.Q4_1.gguf"),
    },
    Packaged {
        aliases: &[
            "default-encoder",
            "minilm",
            "all-minilm-l6-v2",
            "all-MiniLM-L6-v2",
            "sentence-transformers/all-MiniLM-L6-v2",
        ],
        dir: "all-MiniLM-L6-v2",
        gguf: None,
    },
];

/// Names of the packaged models (first alias of each).
pub fn packaged_names() -> Vec<&'static str> {
    PACKAGED.iter().map(|p| p.aliases[1]).collect()
}

/// The project-local models directory (may not exist yet).
pub fn models_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REPLENS_MODELS") {
        return PathBuf::from(dir);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join("models");
            if candidate.join(PACKAGED[0].dir).exists() || candidate.join(PACKAGED[1].dir).exists()
            {
                return candidate;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "REPLENS_OFFLINE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|x| x == "1" || x.eq_ignore_ascii_case("true")))
}

/// Find `name`; see the module docs for the order. The error lists every source tried.
pub fn resolve(name: &str) -> Result<ModelSource> {
    let mut tried = Vec::new();
    let path = Path::new(name);
    if path.is_dir() {
        return Ok(ModelSource {
            kind: SourceKind::LocalDir,
            path: path.to_path_buf(),
            tried,
        });
    }
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return Ok(ModelSource {
            kind: SourceKind::Gguf,
            path: path.to_path_buf(),
            tried,
        });
    }
    tried.push(format!("path: no directory or .gguf file named {name}"));

    if let Some(p) = PACKAGED
        .iter()
        .find(|p| p.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
    {
        let dir = models_dir().join(p.dir);
        let (kind, path) = match p.gguf {
            Some(file) => (SourceKind::Gguf, dir.join(file)),
            None => (SourceKind::Packaged, dir.clone()),
        };
        if path.exists() {
            let kind = if kind == SourceKind::Gguf {
                SourceKind::Gguf
            } else {
                SourceKind::Packaged
            };
            return Ok(ModelSource { kind, path, tried });
        }
        tried.push(format!(
            "packaged: {} is missing (run scripts/setup)",
            path.display()
        ));
    } else {
        tried.push(format!(
            "packaged: no packaged model is called {name} (packaged: {})",
            packaged_names().join(", ")
        ));
    }

    let cache = hf_hub::Cache::from_env();
    match cache.model(name.to_string()).get("config.json") {
        Some(config) => {
            let dir = config.parent().unwrap_or(Path::new(".")).to_path_buf();
            return Ok(ModelSource {
                kind: SourceKind::HfCache,
                path: dir,
                tried,
            });
        }
        None => tried.push(format!(
            "HF cache: {name} not in {}",
            cache.path().display()
        )),
    }

    if offline() {
        tried.push("hub: skipped because HF_HUB_OFFLINE/REPLENS_OFFLINE is set".into());
    } else if !name.contains('/') {
        tried.push(format!("hub: '{name}' is not a hub id (owner/name)"));
    } else {
        match download(name) {
            Ok(dir) => {
                return Ok(ModelSource {
                    kind: SourceKind::Hub,
                    path: dir,
                    tried,
                })
            }
            Err(e) => tried.push(format!("hub: {e}")),
        }
    }
    Err(Error::ModelNotFound {
        name: name.to_string(),
        tried,
    })
}

/// Download config, tokenizer and safetensors weights of a hub model into the HF cache.
fn download(id: &str) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(id.to_string());
    let config = repo
        .get("config.json")
        .map_err(|e| format!("config.json: {e}"))?;
    repo.get("tokenizer.json")
        .map_err(|e| format!("tokenizer.json: {e}"))?;
    repo.get("model.safetensors")
        .map_err(|e| format!("model.safetensors: {e}"))?;
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}
