//! Reading Prometheus samples out of a `/metrics` text, so that a renamed metric fails a test
//! instead of reading as zero.
//!
//! The Prometheus client omits a labelled series until it is first touched (and a labelled
//! family until one of its series is), so a missing series is not by itself an error: a
//! sample reads as 0 when its family is there but not that label set, and fails the test when
//! nothing of the family is there at all.

/// Label names and values, sorted by name.
pub type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Sorted by label name.
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// Whether the sample carries every one of `labels` (and perhaps others).
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// Every sample of an exposition, in order (comments and blank lines skipped); panics on a
/// line that is not a sample.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (name, labels, rest) = series(line).unwrap_or_else(|e| panic!("not a Prometheus sample ({e}): {line}"));
            let value = rest.split_whitespace().next().unwrap_or_default();
            let value = value.parse().unwrap_or_else(|_| panic!("not a sample value {value:?}: {line}"));
            Sample { name, labels, value }
        })
        .collect()
}

/// A series `name{labels}` at the start of `text`: its name, its sorted labels and what follows.
fn series(text: &str) -> Result<(String, Labels, &str), String> {
    let end = text.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(text.len());
    let name = &text[..end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &text[end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let Some((i, c)) = chars.next() else { return Err("unterminated label set".into()) };
            match c {
                '}' => {
                    if !key.trim().is_empty() {
                        return Err(format!("label {key:?} has no value"));
                    }
                    rest = &body[i + 1..];
                    break;
                }
                ',' if key.trim().is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(format!("label {key:?}: value not quoted"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            None => return Err("unterminated label value".into()),
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => return Err("unterminated label value".into()),
                            },
                            Some(c) => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key).trim().to_string(), value));
                }
                c => key.push(c),
            }
        }
    }
    labels.sort();
    Ok((name.to_string(), labels, rest))
}

/// The family a sample belongs to, as written in the query: its name before any `{`.
pub fn family(sample: &str) -> &str {
    sample.split('{').next().unwrap_or(sample).trim()
}

/// One sample's value, e.g. `blipserve_requests_total{outcome="ok"}` (labels in any order):
/// `None` when no sample of its family is in `text`, 0 when the family is there but not that
/// label set (not touched yet).
pub fn try_value(text: &str, sample: &str) -> Option<f64> {
    let (name, labels, rest) = series(sample.trim()).unwrap_or_else(|e| panic!("bad sample {sample:?}: {e}"));
    assert!(rest.trim().is_empty(), "bad sample {sample:?}: trailing {rest:?}");
    let all = samples(text);
    let of_family: Vec<&Sample> = all.iter().filter(|s| s.name == name).collect();
    if of_family.is_empty() {
        return None;
    }
    Some(of_family.iter().find(|s| s.labels == labels).map_or(0.0, |s| s.value))
}

/// [`try_value`], failing the test when the family is missing.
pub fn value(text: &str, sample: &str) -> f64 {
    try_value(text, sample).unwrap_or_else(|| missing(text, family(sample)))
}

/// The sum of the samples named `name` that carry all of `labels`, whatever their other labels
/// and their order; fails the test when no sample is named `name`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let all = samples(text);
    if !all.iter().any(|s| s.name == name) {
        missing(text, name);
    }
    all.iter().filter(|s| s.name == name && s.has(labels)).map(|s| s.value).sum()
}

fn missing(text: &str, name: &str) -> ! {
    let mut names: Vec<String> = samples(text).into_iter().map(|s| s.name).collect();
    names.dedup();
    panic!(
        "no sample of the metric {name} in /metrics: renamed, or never recorded (a labelled family \
         appears only once one of its series is touched). Present: {names:?}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP blipserve_requests_total Detect requests by outcome
# TYPE blipserve_requests_total counter
blipserve_requests_total{outcome="ok"} 40
blipserve_requests_total{outcome="bad_image"} 2
blipserve_upstream_requests_total{backend="neuron",outcome="ok",pool="inf2"} 7
blipserve_upstream_requests_total{backend="gpu",outcome="ok",pool="gpu"} 3
blipserve_upstream_requests_total{backend="gpu",outcome="transport",pool="gpu"} 1
blipserve_batch_frames_count 0
blipserve_odd{path="a \"quoted\", {braced} \\ value"} 1.5
"#;

    #[test]
    fn exact_series_by_label_set_in_any_order() {
        assert_eq!(value(TEXT, r#"blipserve_requests_total{outcome="ok"}"#), 40.0);
        assert_eq!(value(TEXT, r#"blipserve_upstream_requests_total{pool="gpu",outcome="ok",backend="gpu"}"#), 3.0);
        assert_eq!(value(TEXT, "blipserve_batch_frames_count"), 0.0);
        assert_eq!(value(TEXT, r#"blipserve_odd{path="a \"quoted\", {braced} \\ value"}"#), 1.5);
    }

    #[test]
    fn an_untouched_series_of_a_present_family_is_zero() {
        assert_eq!(value(TEXT, r#"blipserve_requests_total{outcome="overloaded"}"#), 0.0);
        assert_eq!(try_value(TEXT, r#"blipserve_requests_totl{outcome="ok"}"#), None);
    }

    #[test]
    #[should_panic(expected = "no sample of the metric blipserve_requests_totl")]
    fn a_missing_family_fails() {
        value(TEXT, r#"blipserve_requests_totl{outcome="ok"}"#);
    }

    #[test]
    fn sums_over_labels() {
        assert_eq!(sum(TEXT, "blipserve_upstream_requests_total", &[("pool", "gpu")]), 4.0);
        assert_eq!(sum(TEXT, "blipserve_upstream_requests_total", &[]), 11.0);
        assert_eq!(sum(TEXT, "blipserve_upstream_requests_total", &[("outcome", "transport"), ("pool", "inf2")]), 0.0);
    }

    #[test]
    #[should_panic(expected = "no sample of the metric blipserve_upstream_retries_total")]
    fn summing_a_missing_family_fails() {
        sum(TEXT, "blipserve_upstream_retries_total", &[]);
    }
}
