//! `cks rules check`: loads and validates a rules file, lists what it handles and what it
//! needs in Keap, and, with Keap credentials, checks through the `Crm` port that the tags
//! and custom fields exist.

use crate::keap_mode;
use shared::config::{ConfigError, Vars};
use shared::keap::{Crm, KeapError};
use shared::rules::{MissingFieldPolicy, RuleSet, RulesError, RULES_TOML_VAR};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file and list the events, tags, custom fields and goals it uses.
    Check {
        /// The rules file (default: RULES_TOML, else the built-in default rules).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RulesCheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} is invalid: {error}")]
    Invalid { origin: String, error: RulesError },
    #[error("Keap settings: {0}")]
    Keap(#[from] ConfigError),
    #[error("Keap could not be asked: {0}")]
    KeapCall(#[from] KeapError),
    #[error("{0} tag(s) or custom field(s) the rules need are missing in Keap (listed above)")]
    Missing(usize),
}

pub async fn run(command: RulesCommand) -> Result<(), RulesCheckError> {
    let RulesCommand::Check { file } = command;
    let vars = Vars::from_env();
    let (origin, text) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| RulesCheckError::Read {
                path: path.clone(),
                source,
            })?;
            (path.display().to_string(), text)
        }
        None => match vars.text(RULES_TOML_VAR) {
            Some(text) => (RULES_TOML_VAR.to_owned(), text.to_owned()),
            None => (
                "the built-in default rules".to_owned(),
                shared::rules::DEFAULT_RULES.to_owned(),
            ),
        },
    };
    let rules = RuleSet::from_toml(&text).map_err(|error| RulesCheckError::Invalid {
        origin: origin.clone(),
        error,
    })?;
    print!("{}", summary(&origin, &rules));

    let (settings, client) = keap_mode::client(&vars).await?;
    let Some(client) = client else {
        println!("\nKeap: no credentials (KEAP_API_KEY or the OAuth variables), so tags and custom fields were not checked against Keap.");
        return Ok(());
    };
    println!("\nKeap: {}", keap_mode::describe(&settings, true));
    let missing = check_keap(&rules, &client).await?;
    if missing > 0 {
        return Err(RulesCheckError::Missing(missing));
    }
    Ok(())
}

/// What the rules handle and reference.
pub fn summary(origin: &str, rules: &RuleSet) -> String {
    let mut out = format!("{origin}: valid\n");
    let section = |out: &mut String, title: &str, items: &[String]| {
        out.push_str(&format!("\n{title} ({}):\n", items.len()));
        for item in items {
            out.push_str(&format!("  {item}\n"));
        }
    };
    let events: Vec<String> = rules
        .handled_events()
        .into_iter()
        .map(str::to_owned)
        .collect();
    section(&mut out, "events handled", &events);
    section(&mut out, "fixed tag names", &rules.fixed_tag_names());
    section(&mut out, "custom fields", &rules.custom_field_labels());
    section(&mut out, "goals", &rules.goals());
    out.push_str(&format!(
        "\nmissing tags are {}; missing custom fields are {}\n",
        if rules.create_missing_tags {
            "created on first use (create_missing_tags = true)"
        } else {
            "an error (create_missing_tags = false)"
        },
        match rules.missing_custom_fields {
            MissingFieldPolicy::Skip => "skipped with a warning",
            MissingFieldPolicy::Fail => "an error (the webhook is dead-lettered)",
        }
    ));
    out
}

/// Looks each fixed tag and custom field up in Keap; prints one line each and returns how
/// many are missing and not covered by `create_missing_tags`.
pub async fn check_keap(rules: &RuleSet, crm: &dyn Crm) -> Result<usize, KeapError> {
    let mut missing = 0;
    for name in rules.fixed_tag_names() {
        let found = crm.find_tags_by_name(&name).await?;
        let verdict = match found.len() {
            1 => "ok".to_owned(),
            0 if rules.create_missing_tags => {
                "missing: will be created on first use (create_missing_tags)".to_owned()
            }
            0 => {
                missing += 1;
                "MISSING: create it in Keap or set create_missing_tags = true".to_owned()
            }
            n => format!("ambiguous: {n} tags share this name; the processor refuses it until one is renamed"),
        };
        println!("tag {name:?}: {verdict}");
    }
    let fields = crm.custom_fields().await?;
    for label in rules.custom_field_labels() {
        let exists = fields.iter().any(|f| f.label == label);
        let verdict = match (exists, rules.missing_custom_fields) {
            (true, _) => "ok",
            (false, MissingFieldPolicy::Skip) => {
                missing += 1;
                "MISSING: create it in Keap (until then it is skipped with a warning)"
            }
            (false, MissingFieldPolicy::Fail) => {
                missing += 1;
                "MISSING: create it in Keap (until then webhooks setting it are dead-lettered)"
            }
        };
        println!("custom field {label:?}: {verdict}");
    }
    for goal in rules.goals() {
        println!("goal {goal:?}: not checkable (Keap cannot list API goals); a wrong name shows when it is fired");
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::keap::InMemoryCrm;

    #[test]
    fn the_default_rules_summary_lists_what_they_use() {
        let rules = RuleSet::default_rules().expect("default rules");
        let text = summary("default", &rules);
        assert!(text.contains("signup_success"), "{text}");
        for label in rules.custom_field_labels() {
            assert!(text.contains(&label), "{label}");
        }
        assert!(!rules.goals().is_empty());
    }

    #[tokio::test]
    async fn keap_check_counts_missing_fields_and_lets_tags_be_created() {
        let rules = RuleSet::default_rules().expect("default rules");
        let crm = InMemoryCrm::new();
        let missing = check_keap(&rules, &crm).await.expect("check");
        let tags_missing = if rules.create_missing_tags {
            0
        } else {
            rules.fixed_tag_names().len()
        };
        assert_eq!(missing, tags_missing + rules.custom_field_labels().len());
        let crm = InMemoryCrm::dry_run(&rules.custom_field_labels());
        assert_eq!(check_keap(&rules, &crm).await.expect("check"), tags_missing);
    }
}
