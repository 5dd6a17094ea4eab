//! The behaviour catalogue: named pet behaviours an alerting pipeline can ask about, each a
//! question and the probability above which it counts as detected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behavior {
    pub question: String,
    /// `detected` is true when P(yes) ≥ threshold.
    pub threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Catalogue(BTreeMap<String, Behavior>);

impl Default for Catalogue {
    /// Behaviours pet owners most often want alerts for. Thresholds above one half for the ones
    /// that page someone (barking, chewing, scratching), where a false alarm costs more.
    fn default() -> Self {
        let entries = [
            ("barking", "is the dog barking?", 0.6),
            ("chewing_furniture", "is the dog chewing the furniture?", 0.6),
            ("scratching_door", "is the pet scratching the door?", 0.6),
            ("on_sofa", "is the pet on the sofa?", 0.5),
            ("playing", "is the pet playing?", 0.5),
            ("sleeping", "is the pet sleeping?", 0.5),
            ("eating", "is the pet eating?", 0.5),
        ];
        Catalogue(
            entries
                .into_iter()
                .map(|(name, question, threshold)| {
                    (name.to_string(), Behavior { question: question.into(), threshold })
                })
                .collect(),
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogueError {
    #[error("behaviour {name:?}: threshold {threshold} is not within [0, 1]")]
    Threshold { name: String, threshold: f64 },
    #[error("behaviour {0:?}: the question is empty")]
    EmptyQuestion(String),
    #[error("behaviour name {0:?} must be 1-64 characters of a-z, 0-9, '_' or '-'")]
    Name(String),
}

impl Catalogue {
    /// The defaults, with `overrides` replacing or adding entries.
    pub fn with(overrides: BTreeMap<String, Behavior>) -> Result<Catalogue, CatalogueError> {
        let mut catalogue = Catalogue::default();
        for (name, behavior) in overrides {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid_name {
                return Err(CatalogueError::Name(name));
            }
            if !(0.0..=1.0).contains(&behavior.threshold) {
                return Err(CatalogueError::Threshold { name, threshold: behavior.threshold });
            }
            if behavior.question.trim().is_empty() {
                return Err(CatalogueError::EmptyQuestion(name));
            }
            catalogue.0.insert(name, behavior);
        }
        Ok(catalogue)
    }

    pub fn get(&self, name: &str) -> Option<&Behavior> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Behavior)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_common_behaviours() {
        let c = Catalogue::default();
        assert!(c.len() >= 5);
        assert!(c.get("barking").is_some() && c.get("chewing_furniture").is_some());
    }

    #[test]
    fn overrides_are_checked() {
        let one = |q: &str, t: f64| BTreeMap::from([("x".to_string(), Behavior { question: q.into(), threshold: t })]);
        assert!(Catalogue::with(one("is it?", 0.7)).unwrap().get("x").is_some());
        assert!(matches!(Catalogue::with(one("is it?", 1.5)), Err(CatalogueError::Threshold { .. })));
        assert!(matches!(Catalogue::with(one("  ", 0.5)), Err(CatalogueError::EmptyQuestion(_))));
        let bad = BTreeMap::from([("Bad Name".to_string(), Behavior { question: "q?".into(), threshold: 0.5 })]);
        assert!(matches!(Catalogue::with(bad), Err(CatalogueError::Name(_))));
    }
}
