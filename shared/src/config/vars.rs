//! [`Vars`]: the one reader of configuration variables.

use super::{ConfigError, Secret};
use std::collections::HashMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// Configuration variables: the process environment (the functions, `cks`) or a map (tests,
/// and `cks reconcile`'s stack outputs laid over the environment). Every setting is read
/// through it, so a value is trimmed, defaulted, bounded and refused the same way wherever
/// it is read, and tests need no process environment.
#[derive(Clone, Default)]
pub struct Vars {
    values: HashMap<String, String>,
}

impl std::fmt::Debug for Vars {
    // The values hold keys and client secrets: only the names are printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort();
        f.debug_struct("Vars").field("names", &names).finish()
    }
}

impl Vars {
    /// The process environment, read once. A value that is not Unicode counts as unset, as
    /// the standard library's `env::var` has it.
    pub fn from_env() -> Self {
        Self::from_pairs(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }))
    }

    /// The variables given, and no others.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            values: pairs
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        }
    }

    /// These variables with `name` set to `value`, whatever it was.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(name.into(), value.into());
        self
    }

    /// The value exactly as set, blank or not: for a variable whose blank value is itself a
    /// mistake.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value as set, spaces kept (a rules file's line numbers depend on them); `None`
    /// when unset or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.raw(name).filter(|v| !v.trim().is_empty())
    }

    /// The value without surrounding spaces; `None` when unset or blank, so an empty
    /// variable (a template's unset parameter) means the default.
    pub fn value(&self, name: &str) -> Option<String> {
        self.text(name).map(|v| v.trim().to_owned())
    }

    /// The value, or [`ConfigError::Missing`] saying `why` it is needed.
    pub fn required(&self, name: &'static str, why: &'static str) -> Result<String, ConfigError> {
        self.value(name).ok_or(ConfigError::Missing(name, why))
    }

    /// A number in `range`, `default` when unset; anything else is refused as not a whole
    /// number in the range.
    pub fn number<T>(
        &self,
        name: &'static str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
    {
        let refusal = |text: &str| {
            format!(
                "`{text}` is not a whole number between {} and {}",
                range.start(),
                range.end()
            )
        };
        Ok(self.bounded(name, &range, refusal)?.unwrap_or(default))
    }

    /// A number in `range`, `None` when unset; `refusal` words the error from the text set,
    /// for a variable whose bounds need explaining.
    pub fn bounded<T>(
        &self,
        name: &'static str,
        range: &RangeInclusive<T>,
        refusal: impl FnOnce(&str) -> String,
    ) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd,
    {
        let Some(text) = self.value(name) else {
            return Ok(None);
        };
        match text.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ConfigError::Invalid {
                name,
                reason: refusal(&text),
            }),
        }
    }

    /// `true` or `false` (exactly), `default` when unset.
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.value(name).as_deref() {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ConfigError::Invalid {
                name,
                reason: format!("`{other}` is not true or false"),
            }),
        }
    }

    /// The URL of an SQS FIFO queue (it ends in `.fifo`), required: `why` says which queue;
    /// `note` ends the refusal of a standard queue's URL (say what depends on FIFO, or "").
    pub fn fifo_queue_url(
        &self,
        name: &'static str,
        why: &'static str,
        note: &str,
    ) -> Result<String, ConfigError> {
        let url = self.required(name, why)?;
        if !url.ends_with(".fifo") {
            return Err(ConfigError::Invalid {
                name,
                reason: format!("`{url}` is not a FIFO queue URL (it must end in .fifo){note}"),
            });
        }
        Ok(url)
    }

    /// A secret given inline in `inline` (local runs) or as a Secrets Manager ARN in `arn`
    /// (AWS); `None` when neither is set, [`ConfigError::Conflict`] when both are.
    pub fn secret(
        &self,
        inline: &'static str,
        arn: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        match (self.value(inline), self.value(arn)) {
            (Some(value), None) => Ok(Some(Secret::Inline(value))),
            (None, Some(arn)) => Ok(Some(Secret::Arn(arn))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ConfigError::Conflict {
                set: format!("{inline}, {arn}"),
                fix: format!("set only one of {inline} (local) and {arn} (AWS)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "N";

    fn vars(pairs: &[(&'static str, &'static str)]) -> Vars {
        Vars::from_pairs(pairs.iter().copied())
    }

    fn refusal(result: Result<impl std::fmt::Debug, ConfigError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn a_blank_value_is_unset_and_only_value_trims() {
        let v = vars(&[("A", "  a b \n"), ("BLANK", " \t")]);
        assert_eq!(v.value("A").as_deref(), Some("a b"));
        assert_eq!(v.text("A"), Some("  a b \n"));
        assert_eq!(v.raw("A"), Some("  a b \n"));
        assert_eq!(v.value("BLANK"), None);
        assert_eq!(v.text("BLANK"), None);
        assert_eq!(v.raw("BLANK"), Some(" \t"));
        assert_eq!(v.value("UNSET"), None);
        assert_eq!(v.text("UNSET"), None);
        assert_eq!(v.raw("UNSET"), None);
        assert_eq!(
            refusal(v.required("BLANK", "set it to x")),
            "BLANK is not set; set it to x"
        );
        assert_eq!(v.with("BLANK", "b").value("BLANK").as_deref(), Some("b"));
    }

    #[test]
    fn numbers_default_when_unset_and_are_refused_outside_their_range() {
        assert_eq!(vars(&[]).number(N, 7u32, 1..=9).ok(), Some(7));
        assert_eq!(vars(&[(N, " 9 ")]).number(N, 7u32, 1..=9).ok(), Some(9));
        for bad in ["0", "10", "-1", "x", "1.5"] {
            assert_eq!(
                refusal(vars(&[(N, bad)]).number(N, 7u32, 1..=9)),
                format!("N is invalid: `{bad}` is not a whole number between 1 and 9")
            );
        }
        let explained = vars(&[(N, "99")]).bounded(N, &(1u64..=9), |t| format!("{t}: too many"));
        assert_eq!(refusal(explained), "N is invalid: 99: too many");
        assert_eq!(
            vars(&[]).bounded(N, &(1u64..=9), |_| unreachable!()).ok(),
            Some(None)
        );
    }

    #[test]
    fn flags_are_true_or_false_exactly() {
        assert_eq!(vars(&[]).flag(N, true).ok(), Some(true));
        assert_eq!(vars(&[(N, "true")]).flag(N, false).ok(), Some(true));
        assert_eq!(vars(&[(N, "false")]).flag(N, true).ok(), Some(false));
        assert_eq!(
            refusal(vars(&[(N, "yes")]).flag(N, false)),
            "N is invalid: `yes` is not true or false"
        );
        assert!(vars(&[(N, "True")]).flag(N, false).is_err());
    }

    #[test]
    fn a_queue_url_must_name_a_fifo_queue() {
        let url = "https://sqs.us-east-1.amazonaws.com/1/q";
        let fifo = |v: Vars| v.fifo_queue_url("Q", "set it to the queue", "; because");
        assert_eq!(
            fifo(vars(&[("Q", "http://h/1/q.fifo")])).ok().as_deref(),
            Some("http://h/1/q.fifo")
        );
        assert_eq!(
            refusal(fifo(vars(&[]))),
            "Q is not set; set it to the queue"
        );
        assert_eq!(
            refusal(fifo(vars(&[("Q", url)]))),
            format!(
                "Q is invalid: `{url}` is not a FIFO queue URL (it must end in .fifo); because"
            )
        );
    }

    #[test]
    fn a_secret_is_inline_or_an_arn_never_both() {
        let secret = |pairs| vars(pairs).secret("KEY", "KEY_ARN");
        assert_eq!(secret(&[]).ok(), Some(None));
        assert_eq!(
            secret(&[("KEY", " k ")]).ok(),
            Some(Some(Secret::Inline("k".into())))
        );
        assert_eq!(
            secret(&[("KEY_ARN", "arn:x")]).ok(),
            Some(Some(Secret::Arn("arn:x".into())))
        );
        assert_eq!(
            refusal(secret(&[("KEY", "k"), ("KEY_ARN", "arn:x")])),
            "KEY, KEY_ARN are all set, but they choose different ways to do one thing; set only one of KEY (local) and KEY_ARN (AWS)"
        );
    }

    #[test]
    fn the_process_environment_is_read_like_a_map_and_never_printed() {
        // Cargo sets CARGO_MANIFEST_DIR for the test process as for the compiler.
        let env = Vars::from_env();
        assert_eq!(
            env.raw("CARGO_MANIFEST_DIR"),
            Some(env!("CARGO_MANIFEST_DIR"))
        );
        let printed = format!("{:?}", vars(&[("KEY", "hunter2")]));
        assert!(
            printed.contains("KEY") && !printed.contains("hunter2"),
            "{printed}"
        );
    }
}
