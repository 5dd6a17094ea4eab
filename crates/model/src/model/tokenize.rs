//! Question text → BLIP token ids ([CLS] … [SEP]) with the model directory's tokenizer.

use std::path::Path;

use tokenizers::Tokenizer;

pub use blipserve_api::detect::QuestionError;

use super::manifest::SpecialTokens;
use super::LoadError;

pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A tokenised question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub text: String,
    pub ids: Vec<i64>,
}

pub struct QuestionTokenizer {
    tokenizer: Tokenizer,
    max_len: usize,
}

impl QuestionTokenizer {
    /// Loads `tokenizer.json` and checks it agrees with the manifest's special tokens.
    pub fn load(dir: &Path, tokens: &SpecialTokens, max_len: usize) -> Result<Self, LoadError> {
        let path = dir.join(TOKENIZER_FILE);
        let mut tokenizer =
            Tokenizer::from_file(&path).map_err(|e| LoadError::Tokenizer(format!("{}: {e}", path.display())))?;
        // Padding and truncation are the pipeline's job (it knows the fixed shapes).
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| LoadError::Tokenizer(format!("{}: {e}", path.display())))?;
        for (token, id) in [
            ("[CLS]", tokens.cls),
            ("[SEP]", tokens.sep),
            ("[PAD]", tokens.pad),
            ("[DEC]", tokens.dec),
            ("yes", tokens.yes),
            ("no", tokens.no),
        ] {
            let got = tokenizer.token_to_id(token).map(i64::from);
            if got != Some(id) {
                return Err(LoadError::Mismatch(format!(
                    "tokenizer maps {token} to {got:?} but the manifest says {id}"
                )));
            }
        }
        Ok(QuestionTokenizer { tokenizer, max_len })
    }

    pub fn encode(&self, text: &str) -> Result<Question, QuestionError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(QuestionError::Empty);
        }
        let encoding = self.tokenizer.encode(text, true).map_err(|e| QuestionError::Tokenizer(e.to_string()))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| id as i64).collect();
        if ids.len() <= 2 {
            return Err(QuestionError::Empty);
        }
        if ids.len() > self.max_len {
            return Err(QuestionError::TooLong { tokens: ids.len(), max: self.max_len });
        }
        Ok(Question { text: text.to_string(), ids })
    }

    /// Answer tokens → text, special tokens dropped (transformers' `skip_special_tokens=True`).
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().filter_map(|&id| u32::try_from(id).ok()).collect();
        self.tokenizer.decode(&ids, true).unwrap_or_default()
    }
}
