//! The tagging policy: which labels an image keeps, whichever backend made
//! them. Defaults apply to every key; profiles override them for keys under
//! a prefix (the longest matching prefix wins), so one deployment can, say,
//! demand more confidence under `private/` than under `public/`.
//!
//! Names are matched case-insensitively, the way search terms are.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use imagetag_shared::model::{Label, TagOutput, normalize_term};
use serde::Deserialize;

pub const DEFAULT_MIN_CONFIDENCE: f32 = 50.0;
pub const DEFAULT_MAX_LABELS: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("could not read the policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the policy is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid policy: {0}")]
    Invalid(String),
}

/// A set of names as written (for backends that filter server-side) and
/// folded (for matching).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameSet {
    written: Vec<String>,
    folded: HashSet<String>,
}

impl NameSet {
    fn new(names: Vec<String>) -> Self {
        let mut written = Vec::new();
        let mut folded = HashSet::new();
        for name in names {
            let name = name.trim().to_owned();
            if folded.insert(normalize_term(&name)) {
                written.push(name);
            }
        }
        Self { written, folded }
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The names as the policy spells them, without duplicates.
    pub fn names(&self) -> &[String] {
        &self.written
    }

    pub fn contains(&self, name: &str) -> bool {
        self.folded.contains(&normalize_term(name))
    }

    fn contains_any<'a>(&self, mut names: impl Iterator<Item = &'a String>) -> bool {
        names.any(|name| self.contains(name))
    }
}

/// The effective rules for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Labels and instances below this confidence (0–100) are dropped.
    pub min_confidence: f32,
    /// At most this many labels are kept, the most confident first.
    pub max_labels: usize,
    /// When not empty, only these labels are kept.
    pub include_labels: NameSet,
    pub exclude_labels: NameSet,
    /// When not empty, only labels in at least one of these categories are kept.
    pub include_categories: NameSet,
    /// Labels in any of these categories are dropped.
    pub exclude_categories: NameSet,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            min_confidence: DEFAULT_MIN_CONFIDENCE,
            max_labels: DEFAULT_MAX_LABELS,
            include_labels: NameSet::default(),
            exclude_labels: NameSet::default(),
            include_categories: NameSet::default(),
            exclude_categories: NameSet::default(),
        }
    }
}

impl Rules {
    pub fn keeps(&self, label: &Label) -> bool {
        // Written so a NaN confidence fails the test.
        label.confidence >= self.min_confidence
            && (self.include_labels.is_empty() || self.include_labels.contains(&label.name))
            && !self.exclude_labels.contains(&label.name)
            && (self.include_categories.is_empty()
                || self
                    .include_categories
                    .contains_any(label.categories.iter()))
            && !self
                .exclude_categories
                .contains_any(label.categories.iter())
    }

    /// Filters, sorts (most confident first) and truncates the labels.
    /// Text, moderation labels and faces are left as the backend gave them.
    pub fn apply(&self, mut output: TagOutput) -> TagOutput {
        output.labels.retain(|label| self.keeps(label));
        for label in &mut output.labels {
            label
                .instances
                .retain(|instance| instance.confidence >= self.min_confidence);
        }
        // Ties broken by name so the same input always gives the same output.
        output.labels.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.name.cmp(&b.name))
        });
        output.labels.truncate(self.max_labels);
        output
    }

    fn validate(&self, context: &str) -> Result<(), PolicyError> {
        if !(0.0..=100.0).contains(&self.min_confidence) {
            return Err(PolicyError::Invalid(format!(
                "{context}: min_confidence must be between 0 and 100, not {}",
                self.min_confidence
            )));
        }
        if self.max_labels == 0 {
            return Err(PolicyError::Invalid(format!(
                "{context}: max_labels must be at least 1"
            )));
        }
        for (field, set) in [
            ("include_labels", &self.include_labels),
            ("exclude_labels", &self.exclude_labels),
            ("include_categories", &self.include_categories),
            ("exclude_categories", &self.exclude_categories),
        ] {
            if set.names().iter().any(String::is_empty) {
                return Err(PolicyError::Invalid(format!(
                    "{context}: {field} contains an empty name"
                )));
            }
        }
        Ok(())
    }
}

/// What a backend may filter on its side without dropping anything some
/// key's rules would keep: the loosest combination of the defaults and every
/// profile. Rules are still applied per key afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendFilter {
    pub min_confidence: f32,
    pub max_labels: usize,
    /// Empty means no inclusion filter.
    pub include_labels: Vec<String>,
    pub exclude_labels: Vec<String>,
    pub include_categories: Vec<String>,
    pub exclude_categories: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    defaults: Rules,
    /// Longest prefix first, so the first match is the most specific.
    profiles: Vec<(String, Rules)>,
}

/// The file's shape: every field optional, unknown fields refused so a typo
/// does not silently leave a rule out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    min_confidence: Option<f32>,
    max_labels: Option<usize>,
    include_labels: Option<Vec<String>>,
    exclude_labels: Option<Vec<String>>,
    include_categories: Option<Vec<String>>,
    exclude_categories: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    min_confidence: Option<f32>,
    max_labels: Option<usize>,
    include_labels: Option<Vec<String>>,
    exclude_labels: Option<Vec<String>>,
    include_categories: Option<Vec<String>>,
    exclude_categories: Option<Vec<String>>,
    #[serde(default)]
    profiles: BTreeMap<String, RulesFile>,
}

impl RulesFile {
    fn over(self, base: &Rules) -> Rules {
        let set = |field: Option<Vec<String>>, base: &NameSet| match field {
            Some(names) => NameSet::new(names),
            None => base.clone(),
        };
        Rules {
            min_confidence: self.min_confidence.unwrap_or(base.min_confidence),
            max_labels: self.max_labels.unwrap_or(base.max_labels),
            include_labels: set(self.include_labels, &base.include_labels),
            exclude_labels: set(self.exclude_labels, &base.exclude_labels),
            include_categories: set(self.include_categories, &base.include_categories),
            exclude_categories: set(self.exclude_categories, &base.exclude_categories),
        }
    }
}

impl Policy {
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text)?;
        let defaults = RulesFile {
            min_confidence: file.min_confidence,
            max_labels: file.max_labels,
            include_labels: file.include_labels,
            exclude_labels: file.exclude_labels,
            include_categories: file.include_categories,
            exclude_categories: file.exclude_categories,
        }
        .over(&Rules::default());
        defaults.validate("defaults")?;

        let mut profiles = Vec::with_capacity(file.profiles.len());
        for (prefix, overrides) in file.profiles {
            if prefix.is_empty() {
                return Err(PolicyError::Invalid(
                    "a profile prefix is empty; put rules for every key at the top level".into(),
                ));
            }
            let rules = overrides.over(&defaults);
            rules.validate(&format!("profile {prefix:?}"))?;
            profiles.push((prefix, rules));
        }
        profiles.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Ok(Self { defaults, profiles })
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn defaults(&self) -> &Rules {
        &self.defaults
    }

    /// The profile prefix that governs `key`, if any.
    pub fn profile_for(&self, key: &str) -> Option<&str> {
        self.profiles
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(prefix, _)| prefix.as_str())
    }

    pub fn rules_for(&self, key: &str) -> &Rules {
        self.profiles
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map_or(&self.defaults, |(_, rules)| rules)
    }

    pub fn apply(&self, key: &str, output: TagOutput) -> TagOutput {
        self.rules_for(key).apply(output)
    }

    pub fn backend_filter(&self) -> BackendFilter {
        let all: Vec<&Rules> = std::iter::once(&self.defaults)
            .chain(self.profiles.iter().map(|(_, rules)| rules))
            .collect();
        BackendFilter {
            min_confidence: all
                .iter()
                .map(|rules| rules.min_confidence)
                .fold(f32::INFINITY, f32::min),
            max_labels: all
                .iter()
                .map(|rules| rules.max_labels)
                .max()
                .unwrap_or(DEFAULT_MAX_LABELS),
            include_labels: union_if_all_restrict(&all, |rules| &rules.include_labels),
            exclude_labels: intersection(&all, |rules| &rules.exclude_labels),
            include_categories: union_if_all_restrict(&all, |rules| &rules.include_categories),
            exclude_categories: intersection(&all, |rules| &rules.exclude_categories),
        }
    }
}

/// An inclusion filter is only safe server-side when every set of rules has
/// one, and then it must let through everything any of them includes.
fn union_if_all_restrict(all: &[&Rules], field: impl Fn(&Rules) -> &NameSet) -> Vec<String> {
    if all.iter().any(|rules| field(rules).is_empty()) {
        return Vec::new();
    }
    let names = all
        .iter()
        .flat_map(|rules| field(rules).names().iter().cloned())
        .collect();
    NameSet::new(names).written
}

/// An exclusion is only safe server-side when every set of rules excludes it.
fn intersection(all: &[&Rules], field: impl Fn(&Rules) -> &NameSet) -> Vec<String> {
    let Some((first, rest)) = all.split_first() else {
        return Vec::new();
    };
    field(first)
        .names()
        .iter()
        .filter(|name| rest.iter().all(|rules| field(rules).contains(name)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagetag_shared::model::{BoundingBox, Instance};

    fn label(name: &str, confidence: f32, categories: &[&str]) -> Label {
        Label {
            name: name.into(),
            confidence,
            parents: vec![],
            aliases: vec![],
            categories: categories.iter().map(|c| c.to_string()).collect(),
            instances: vec![],
        }
    }

    fn output(labels: Vec<Label>) -> TagOutput {
        TagOutput {
            labels,
            ..Default::default()
        }
    }

    fn names(output: &TagOutput) -> Vec<&str> {
        output.labels.iter().map(|l| l.name.as_str()).collect()
    }

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text).expect("valid policy")
    }

    #[test]
    fn defaults_without_a_file() {
        let policy = Policy::default();
        assert_eq!(policy.defaults().min_confidence, 50.0);
        assert_eq!(policy.defaults().max_labels, 25);
        assert_eq!(Policy::from_toml("").expect("empty is fine"), policy);
    }

    #[test]
    fn min_confidence_drops_labels_and_instances() {
        let mut dog = label("Dog", 90.0, &[]);
        let bbox = BoundingBox {
            left: 0.1,
            top: 0.1,
            width: 0.2,
            height: 0.2,
        };
        dog.instances = vec![
            Instance {
                bounding_box: bbox,
                confidence: 88.0,
            },
            Instance {
                bounding_box: bbox,
                confidence: 30.0,
            },
        ];
        let out = policy("min_confidence = 60").apply(
            "k.jpg",
            output(vec![
                dog,
                label("Cat", 59.9, &[]),
                label("Odd", f32::NAN, &[]),
            ]),
        );
        assert_eq!(names(&out), ["Dog"]);
        assert_eq!(out.labels[0].instances.len(), 1);
        assert_eq!(out.labels[0].instances[0].confidence, 88.0);
    }

    #[test]
    fn sorted_by_confidence_and_truncated() {
        let out = policy("max_labels = 2").apply(
            "k.jpg",
            output(vec![
                label("Low", 60.0, &[]),
                label("High", 99.0, &[]),
                label("Mid", 80.0, &[]),
            ]),
        );
        assert_eq!(names(&out), ["High", "Mid"]);
    }

    #[test]
    fn include_and_exclude_labels_ignore_case() {
        let labels = || {
            output(vec![
                label("Dog", 90.0, &[]),
                label("Cat", 90.0, &[]),
                label("Person", 90.0, &[]),
            ])
        };
        let out = policy(r#"include_labels = ["dog", "CAT"]"#).apply("k", labels());
        assert_eq!(names(&out), ["Cat", "Dog"]);
        let out = policy(r#"exclude_labels = ["PERSON"]"#).apply("k", labels());
        assert_eq!(names(&out), ["Cat", "Dog"]);
        let out = policy(
            r#"
            include_labels = ["dog", "person"]
            exclude_labels = ["Person"]
            "#,
        )
        .apply("k", labels());
        assert_eq!(names(&out), ["Dog"]);
    }

    #[test]
    fn include_and_exclude_categories_ignore_case() {
        let labels = || {
            output(vec![
                label("Dog", 90.0, &["Animals and Pets"]),
                label("Car", 90.0, &["Vehicles and Automotive"]),
                label("Gun", 90.0, &["Weapons and Military", "Tools"]),
                label("Sky", 90.0, &[]),
            ])
        };
        let out =
            policy(r#"include_categories = ["animals and pets", "tools"]"#).apply("k", labels());
        assert_eq!(names(&out), ["Dog", "Gun"]);
        let out = policy(r#"exclude_categories = ["WEAPONS AND MILITARY"]"#).apply("k", labels());
        assert_eq!(names(&out), ["Car", "Dog", "Sky"]);
    }

    #[test]
    fn longest_matching_prefix_wins_and_overrides_only_its_fields() {
        let policy = policy(
            r#"
            min_confidence = 50
            max_labels = 10
            exclude_labels = ["Text"]

            [profiles."private/"]
            min_confidence = 80

            [profiles."private/family/"]
            min_confidence = 95
            exclude_labels = []

            [profiles."products/"]
            max_labels = 1
            "#,
        );
        assert_eq!(policy.profile_for("public/a.jpg"), None);
        assert_eq!(policy.profile_for("private/a.jpg"), Some("private/"));
        assert_eq!(
            policy.profile_for("private/family/a.jpg"),
            Some("private/family/")
        );

        let base = policy.rules_for("public/a.jpg");
        assert_eq!((base.min_confidence, base.max_labels), (50.0, 10));

        let private = policy.rules_for("private/a.jpg");
        assert_eq!((private.min_confidence, private.max_labels), (80.0, 10));
        assert!(
            private.exclude_labels.contains("text"),
            "inherited from the defaults"
        );

        let family = policy.rules_for("private/family/a.jpg");
        assert_eq!(family.min_confidence, 95.0);
        assert!(
            family.exclude_labels.is_empty(),
            "an empty list clears the default"
        );

        let labels = || output(vec![label("Text", 99.0, &[]), label("Dog", 85.0, &[])]);
        assert_eq!(names(&policy.apply("public/a.jpg", labels())), ["Dog"]);
        assert_eq!(names(&policy.apply("private/a.jpg", labels())), ["Dog"]);
        assert_eq!(
            names(&policy.apply("private/family/a.jpg", labels())),
            ["Text"]
        );
        assert_eq!(names(&policy.apply("products/a.jpg", labels())), ["Dog"]);
    }

    #[test]
    fn backend_filter_is_the_loosest_combination() {
        let policy = policy(
            r#"
            min_confidence = 60
            max_labels = 10
            include_labels = ["Dog"]
            exclude_labels = ["Text", "Person"]
            exclude_categories = ["Weapons and Military"]

            [profiles."a/"]
            min_confidence = 40
            include_labels = ["Cat"]
            exclude_labels = ["person"]

            [profiles."b/"]
            max_labels = 30
            include_categories = ["Animals and Pets"]
            "#,
        );
        let filter = policy.backend_filter();
        assert_eq!(filter.min_confidence, 40.0);
        assert_eq!(filter.max_labels, 30);
        assert_eq!(filter.include_labels, ["Dog", "Cat"]);
        assert_eq!(filter.exclude_labels, ["Person"]);
        assert!(
            filter.include_categories.is_empty(),
            "the defaults include every category"
        );
        assert_eq!(filter.exclude_categories, ["Weapons and Military"]);

        let plain = Policy::from_toml(r#"exclude_labels = ["Text"]"#).expect("valid");
        let filter = plain.backend_filter();
        assert_eq!((filter.min_confidence, filter.max_labels), (50.0, 25));
        assert_eq!(filter.exclude_labels, ["Text"]);
    }

    #[test]
    fn mistakes_in_the_file_are_refused() {
        for (text, needle) in [
            ("min_confidenc = 50", "unknown field"),
            ("min_confidence = 150", "between 0 and 100"),
            ("max_labels = 0", "at least 1"),
            ("[profiles.\"\"]\nmax_labels = 3", "prefix is empty"),
            ("[profiles.\"x/\"]\nmin_confidence = -1", "profile \"x/\""),
            ("include_labels = [\"  \"]", "empty name"),
            ("max_labels = \"many\"", "TOML"),
        ] {
            let err = Policy::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../policy.example.toml");
        let policy = Policy::from_toml(text).expect("the example parses");
        assert!(policy.profile_for("private/x.jpg").is_some());
    }
}
