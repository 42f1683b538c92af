//! What a backend timed on the loaded model before a benchmark ([`crate::Decoder::tune`]), as
//! results record it (part of the metrics schema, re-exported by `bench`).

use serde::{Deserialize, Serialize};

/// A launch setting timed on the loaded model ([`crate::Decoder::tune`]): what was chosen and why,
/// and every setting tried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tuning {
    pub note: String,
    pub chosen: String,
    pub trials: Vec<Trial>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trial {
    pub setting: String,
    /// Greedy decoding's ms/token with it; none where its short run was already slower than the
    /// fastest's long one and it was stopped there.
    pub ms_per_token: Option<f64>,
    /// Workgroups one pass dispatched with it.
    pub workgroups: u64,
}
