//! A strict reader of OpenMetrics text: what a scraper would refuse, it
//! refuses, and it hands back every sample by its series.
//!
//! Checked: `# HELP`, `# TYPE` and `# UNIT` lines name each family once, before
//! its samples, with a known type and a unit the name ends with; a family's
//! samples are contiguous and named after it with the suffixes its type allows;
//! names and label names are valid, label values are quoted and escaped
//! correctly, no label repeats, no series repeats; values are numbers
//! (counters not negative); a histogram's buckets are cumulative, in
//! increasing `le`, end with `+Inf` equal to its `_count`, and it has a `_sum`;
//! the text ends with `# EOF`.

use std::collections::{BTreeMap, BTreeSet};

/// What [`parse`] read.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Each family's type, by family name.
    pub types: BTreeMap<String, String>,
    /// Each family's unit, by family name, where it has one.
    pub units: BTreeMap<String, String>,
    /// Every sample's value, by its series exactly as written:
    /// `name{label="value",…}` (or `name` without labels).
    pub samples: BTreeMap<String, f64>,
}

impl Exposition {
    /// The value of the series written exactly as `series`.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The samples whose metric name (before any label) is `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples.iter().filter_map(move |(series, &value)| {
            let metric = series.split('{').next().unwrap_or_default();
            (metric == name).then_some((series.as_str(), value))
        })
    }
}

/// A sample line, split.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Read `text` as OpenMetrics; the first problem found is the error.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the text does not end with \"# EOF\\n\"")?;
    let mut out = Exposition::default();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut histograms: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut histogram_totals: BTreeMap<(String, String, &'static str), f64> = BTreeMap::new();
    for (number, line) in body.lines().enumerate() {
        let at = |problem: String| format!("line {}: {problem}: {line:?}", number + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let (keyword, rest) = meta
                .split_once(' ')
                .ok_or_else(|| at("bare comment".into()))?;
            let (family, value) = rest.split_once(' ').unwrap_or((rest, ""));
            check_name(family).map_err(at)?;
            if current.as_deref() != Some(family) {
                if let Some(previous) = current.take() {
                    done.insert(previous);
                }
                if done.contains(family) || out.types.contains_key(family) {
                    return Err(at(format!("family {family} described twice")));
                }
                current = Some(family.to_owned());
            }
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    const TYPES: [&str; 8] = [
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ];
                    if !TYPES.contains(&value) {
                        return Err(at(format!("unknown type {value}")));
                    }
                    if out.types.insert(family.into(), value.into()).is_some() {
                        return Err(at("second TYPE".into()));
                    }
                }
                "UNIT" => {
                    if !family.ends_with(&format!("_{value}")) {
                        return Err(at(format!("the name does not end with its unit {value}")));
                    }
                    out.units.insert(family.into(), value.into());
                }
                other => return Err(at(format!("unknown keyword {other}"))),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = current
            .clone()
            .ok_or_else(|| at("sample before any family".into()))?;
        let kind = out
            .types
            .get(&family)
            .cloned()
            .ok_or_else(|| at(format!("family {family} has no TYPE")))?;
        let suffix = sample
            .name
            .strip_prefix(family.as_str())
            .ok_or_else(|| at(format!("sample outside its family {family}")))?;
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} not allowed for a {kind}")));
        }
        if kind == "counter" && sample.value < 0.0 {
            return Err(at("negative counter".into()));
        }
        let mut names = BTreeSet::new();
        for (name, _) in &sample.labels {
            if !names.insert(name) {
                return Err(at(format!("label {name} repeated")));
            }
        }
        if kind == "histogram" {
            let others = render_labels(sample.labels.iter().filter(|(k, _)| k != "le"));
            match suffix {
                "_bucket" => {
                    let le = sample
                        .labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .ok_or_else(|| at("bucket without le".into()))?;
                    let le = parse_value(&le.1).map_err(at)?;
                    histograms
                        .entry((family.clone(), others))
                        .or_default()
                        .push((le, sample.value));
                }
                "_count" => {
                    histogram_totals.insert((family.clone(), others, "count"), sample.value);
                }
                "_sum" => {
                    histogram_totals.insert((family.clone(), others, "sum"), sample.value);
                }
                _ => {}
            }
        }
        let series = format!("{}{}", sample.name, render_labels(sample.labels.iter()));
        if out.samples.insert(series, sample.value).is_some() {
            return Err(at("series repeated".into()));
        }
    }
    for ((family, labels), buckets) in &histograms {
        let name = format!("{family}{labels}");
        if !buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        {
            return Err(format!("{name}: buckets not cumulative in increasing le"));
        }
        let Some(&(le, last)) = buckets.last() else {
            continue;
        };
        if le != f64::INFINITY {
            return Err(format!("{name}: no +Inf bucket"));
        }
        let key = |what| (family.clone(), labels.clone(), what);
        if histogram_totals.get(&key("count")) != Some(&last) {
            return Err(format!("{name}: _count is not the +Inf bucket"));
        }
        if !histogram_totals.contains_key(&key("sum")) {
            return Err(format!("{name}: no _sum"));
        }
    }
    Ok(out)
}

/// `{k="v",…}` as the exposition writes it (empty without labels).
fn render_labels<'a>(labels: impl Iterator<Item = &'a (String, String)>) -> String {
    let parts: Vec<String> = labels
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid name {name:?}"))
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("not a number: {text:?}")),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut at = 0;
        loop {
            if after[at..].starts_with('}') {
                at += 1;
                break;
            }
            let key_end = at + after[at..].find('=').ok_or("label without =")?;
            let key = &after[at..key_end];
            check_name(key)?;
            at = key_end + 1;
            if !after[at..].starts_with('"') {
                return Err(format!("label {key}: value not quoted"));
            }
            at += 1;
            let mut value = String::new();
            let mut chars = after[at..].char_indices();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err(format!("label {key}: bad escape")),
                    },
                    Some((end, '"')) => {
                        at += end + 1;
                        break;
                    }
                    Some((_, '\n')) | None => return Err(format!("label {key}: unterminated")),
                    Some((_, c)) => value.push(c),
                }
            }
            labels.push((key.to_owned(), value));
            if after[at..].starts_with(',') {
                at += 1;
            } else if !after[at..].starts_with('}') {
                return Err(format!("after label {key}: expected , or }}"));
            }
        }
        rest = &after[at..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    // An exemplar or a timestamp would follow a space; this text has neither.
    if value.contains(' ') {
        return Err(format!("unexpected text after the value: {value:?}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(value)?,
    })
}
