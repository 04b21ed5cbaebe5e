//! Model references as people write them in `--model` and `quiver model fetch`: a catalogue
//! name, a GGUF file path, a Hugging Face file or quantisation, or a model in Ollama's store.
//!
//! ```text
//! smollm2-135m                                   catalogue name
//! ./models/tiny.gguf                             path (has a `/`, ends in .gguf, or names a file)
//! hf:OWNER/REPO/FILE.gguf[@REVISION]             one file of a Hugging Face repository
//! hf:OWNER/REPO[:QUANT][@REVISION]               the repository's GGUF of that quantisation
//! ollama:NAME[:TAG]   ollama:USER/NAME[:TAG]     a model Ollama has pulled (tag `latest`)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use super::ModelError;

/// Revision used when an `hf:` reference names none.
pub const HF_DEFAULT_REVISION: &str = "main";
/// Tag used when an `ollama:` reference names none.
pub const OLLAMA_DEFAULT_TAG: &str = "latest";
/// Longest reference accepted.
const MAX_REFERENCE: usize = 1024;

/// What a model reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Catalogue(String),
    Path(PathBuf),
    Hf(HfRef),
    Ollama(OllamaRef),
}

/// A file, or a quantisation, of a Hugging Face model repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfRef {
    pub owner: String,
    pub repo: String,
    pub target: HfTarget,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HfTarget {
    /// A file path inside the repository (ends in `.gguf`).
    File(String),
    /// The GGUF of this quantisation (matched case-insensitively), or with `None` the
    /// repository's only GGUF model.
    Quant(Option<String>),
}

/// A model in Ollama's store: `registry.ollama.ai/<namespace>/<name>:<tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaRef {
    /// `library` for Ollama's own models, else the user's name.
    pub namespace: String,
    pub name: String,
    pub tag: String,
}

impl ModelRef {
    /// Parses a reference. `hf:` and `ollama:` references are checked here; anything
    /// containing a path separator, ending in `.gguf` or naming an existing file is a path; the
    /// rest is a catalogue name.
    pub fn parse(s: &str) -> Result<ModelRef, ModelError> {
        let bad = |reason: &str| ModelError::BadReference { reference: s.to_string(), reason: reason.to_string() };
        if s.len() > MAX_REFERENCE {
            return Err(bad("too long"));
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            return HfRef::parse(rest).map(ModelRef::Hf).map_err(|r| bad(&r));
        }
        if let Some(rest) = s.strip_prefix("ollama:") {
            return OllamaRef::parse(rest).map(ModelRef::Ollama).map_err(|r| bad(&r));
        }
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let looks_like_path =
            s.contains('/') || s.contains(std::path::MAIN_SEPARATOR) || s.ends_with(".gguf") || Path::new(s).is_file();
        Ok(if looks_like_path { ModelRef::Path(PathBuf::from(s)) } else { ModelRef::Catalogue(s.to_string()) })
    }
}

/// Letters, digits and `-_.`, not empty, not starting with a dot (so never `.` or `..`).
fn is_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl HfRef {
    fn parse(rest: &str) -> Result<HfRef, String> {
        let (body, revision) = match rest.rsplit_once('@') {
            Some((body, rev)) => {
                let ok = !rev.is_empty() && rev.split('/').all(is_name);
                if !ok {
                    return Err(format!("bad revision {rev:?}"));
                }
                (body, rev.to_string())
            }
            None => (rest, HF_DEFAULT_REVISION.to_string()),
        };
        let Some((owner, rest)) = body.split_once('/') else {
            return Err("expected hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO:QUANT".into());
        };
        if !is_name(owner) {
            return Err(format!("bad owner {owner:?}"));
        }
        let (repo, target) = match rest.split_once('/') {
            Some((repo, file)) => {
                if !file.to_ascii_lowercase().ends_with(".gguf") {
                    return Err(format!("{file:?} is not a .gguf file"));
                }
                if !file.split('/').all(is_name) {
                    return Err(format!("bad file path {file:?}"));
                }
                (repo, HfTarget::File(file.to_string()))
            }
            None => match rest.split_once(':') {
                Some((repo, quant)) if is_name(quant) => (repo, HfTarget::Quant(Some(quant.to_string()))),
                Some((_, quant)) => return Err(format!("bad quantisation {quant:?}")),
                None => (rest, HfTarget::Quant(None)),
            },
        };
        if !is_name(repo) {
            return Err(format!("bad repository name {repo:?}"));
        }
        Ok(HfRef { owner: owner.to_string(), repo: repo.to_string(), target, revision })
    }

    /// `OWNER/REPO`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }
}

impl fmt::Display for HfRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf:{}/{}", self.owner, self.repo)?;
        match &self.target {
            HfTarget::File(file) => write!(f, "/{file}")?,
            HfTarget::Quant(Some(q)) => write!(f, ":{q}")?,
            HfTarget::Quant(None) => {}
        }
        if self.revision != HF_DEFAULT_REVISION {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

impl OllamaRef {
    fn parse(rest: &str) -> Result<OllamaRef, String> {
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (model, tag) = match rest[slash..].rsplit_once(':') {
            Some((_, tag)) => (&rest[..rest.len() - tag.len() - 1], tag),
            None => (rest, OLLAMA_DEFAULT_TAG),
        };
        if !is_name(tag) {
            return Err(format!("bad tag {tag:?}"));
        }
        let (namespace, name) = match model.split_once('/') {
            Some((namespace, name)) => (namespace, name),
            None => ("library", model),
        };
        if !is_name(namespace) || !is_name(name) {
            return Err(format!("bad model name {model:?} (expected NAME or USER/NAME)"));
        }
        Ok(OllamaRef { namespace: namespace.to_string(), name: name.to_string(), tag: tag.to_string() })
    }

    /// The name the model is announced under on the network: `NAME`, or `USER-NAME` for a
    /// user's model (model names on the network have no `/`).
    pub fn network_name(&self) -> String {
        if self.namespace == "library" { self.name.clone() } else { format!("{}-{}", self.namespace, self.name) }
    }
}

impl fmt::Display for OllamaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ollama:")?;
        if self.namespace != "library" {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
#[path = "../tests/model_refs.rs"]
mod tests;
