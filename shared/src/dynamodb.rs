//! What the DynamoDB adapters (idempotency records, identity map) share: the client's retry
//! policy, the classification of failures into [`StoreError`], reading a stored item, and
//! times as epoch-second numbers. The stores then differ only in their expressions.

use crate::idempotency::StoreError;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use time::OffsetDateTime;

/// A stored item as the SDK returns it.
pub type Item = HashMap<String, AttributeValue>;

/// The partition key of both tables (a string).
pub const PARTITION_KEY: &str = "pk";

/// The retry policy of every DynamoDB call we make, set here and nowhere else.
///
/// The SDK's standard mode retries throttling (`ProvisionedThroughputExceededException`,
/// `ThrottlingException`, `RequestLimitExceeded`), 5xx answers, timeouts and connection
/// failures, with exponential backoff and jitter, inside a shared retry quota. DynamoDB
/// answers in milliseconds, so the backoff starts at 50 ms (the SDK's default of 1 s is
/// sized for slower services) and is capped at 2 s: five attempts then fit in a few seconds
/// of a Lambda invocation. A failure left after that becomes [`StoreError::Throttled`] or
/// [`StoreError::Unavailable`] and the record is retried later through the queue.
///
/// Retrying our conditional writes is safe: a write that took effect but whose answer was
/// lost fails its condition on the retry and is reported as a refusal, never applied twice.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(2))
}

/// A DynamoDB client for `config` with [`retry_config`]: the constructor the stores'
/// `from_config` use.
pub fn client(config: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(config)
        .retry_config(retry_config())
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// One of our tables: a client and a table name, keyed by [`PARTITION_KEY`]. The stores
/// build their expressions on it.
#[derive(Debug, Clone)]
pub struct Table {
    client: aws_sdk_dynamodb::Client,
    name: String,
}

impl Table {
    /// Uses `client` as it is; build it with [`client`] to get our retry policy.
    pub fn new(client: aws_sdk_dynamodb::Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }

    /// A table with its own client, configured with [`retry_config`].
    pub fn from_config(config: &aws_config::SdkConfig, name: impl Into<String>) -> Self {
        Self::new(client(config), name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An `UpdateItem` on the item `pk`, for the caller to add its expressions to.
    pub fn update(&self, pk: String) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.name)
            .key(PARTITION_KEY, string(pk))
    }

    /// A `Scan` of the whole table, for the caller to page through (operator commands only).
    pub fn scan(&self) -> aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder {
        self.client.scan().table_name(&self.name)
    }

    /// A `DeleteItem` of the item `pk` that returns the deleted item, for the caller to add
    /// a condition to.
    pub fn delete_item(&self, pk: String) -> DeleteItemFluentBuilder {
        self.client
            .delete_item()
            .table_name(&self.name)
            .key(PARTITION_KEY, string(pk))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
    }

    /// Deletes the item `pk`; `false` when there was none.
    pub async fn delete(&self, pk: String) -> Result<bool, StoreError> {
        let output = self.delete_item(pk).send().await.map_err(classify)?;
        Ok(output.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// The item `pk`, read consistently: a write acknowledged just before is always seen.
    pub async fn get(&self, pk: String) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.name)
            .key(PARTITION_KEY, string(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(output.item)
    }
}

/// Maps a failed call (after the SDK's retries) to a store error. Throttling is its own
/// kind, so a caller can slow down; anything else (5xx, timeouts, unreachable endpoint,
/// missing table, denied permission, a refused expression) is unavailability, whose message
/// says to check the table name, IAM policy and DynamoDB health. Condition failures are the
/// callers' business and must be matched before this.
pub fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = DisplayErrorContext(&err).to_string();
    let throttled = err
        .as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| {
            matches!(
                code,
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
            )
        });
    if throttled {
        StoreError::Throttled { detail }
    } else {
        StoreError::Unavailable { detail }
    }
}

/// The item a conditional `UpdateItem` refused, when the condition (not something else)
/// failed. `Some(None)` is a condition failure without the old item (none existed, or
/// `ReturnValuesOnConditionCheckFailure` was not asked for).
pub fn refused_item<R>(err: &SdkError<UpdateItemError, R>) -> Option<Option<&Item>> {
    match err.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(failed)) => Some(failed.item()),
        _ => None,
    }
}

pub fn string(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub fn number(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A time as epoch seconds, exact: `1700000000`, or `1700000000.25` with a fraction. Exact
/// so that a stored lease expiry or subscription clock compares (in condition expressions)
/// and reads back as the very time the caller gave.
pub fn epoch(at: OffsetDateTime) -> AttributeValue {
    let nanos = at.unix_timestamp_nanos();
    let sign = if nanos < 0 { "-" } else { "" };
    let (whole, fraction) = (
        nanos.unsigned_abs() / 1_000_000_000,
        nanos.unsigned_abs() % 1_000_000_000,
    );
    AttributeValue::N(if fraction == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{fraction:09}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    })
}

/// Whole epoch seconds, for a TTL attribute (DynamoDB's TTL reads epoch seconds).
pub fn epoch_whole_seconds(at: OffsetDateTime) -> AttributeValue {
    number(at.unix_timestamp())
}

/// Reads [`epoch`]'s numbers back (and plain integers).
pub fn parse_epoch(text: &str) -> Option<OffsetDateTime> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // Nanoseconds are the finest we write; finer digits cannot come from us.
    let fraction = &fraction[..fraction.len().min(9)];
    let nanos_part: i128 = format!("{fraction:0<9}").parse().ok()?;
    let whole: i128 = whole.parse().ok()?;
    let total = whole.checked_mul(1_000_000_000)?.checked_add(nanos_part)?;
    OffsetDateTime::from_unix_timestamp_nanos(if negative { -total } else { total }).ok()
}

/// Reads a stored item's attributes; a missing required attribute or one of the wrong type
/// is [`StoreError::Corrupt`], naming the item and the attribute.
#[derive(Debug, Clone, Copy)]
pub struct ItemReader<'a> {
    item: &'a Item,
}

impl<'a> ItemReader<'a> {
    pub fn new(item: &'a Item) -> Self {
        Self { item }
    }

    pub fn item(&self) -> &'a Item {
        self.item
    }

    pub fn corrupt(&self, attribute: &str, problem: &str) -> StoreError {
        let pk = match self.item.get(PARTITION_KEY) {
            Some(AttributeValue::S(pk)) => pk.as_str(),
            _ => "?",
        };
        StoreError::Corrupt {
            detail: format!("item {PARTITION_KEY}={pk:?}: attribute {attribute} {problem}"),
        }
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(_) => Err(self.corrupt(name, "is not a string")),
        }
    }

    pub fn string(&self, name: &str) -> Result<&'a str, StoreError> {
        self.opt_string(name)?
            .ok_or_else(|| self.corrupt(name, "is missing"))
    }

    pub fn opt_number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(text)) => text
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(name, &format!("is {text}, out of range"))),
            Some(_) => Err(self.corrupt(name, "is not a number")),
        }
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.opt_number(name)?
            .ok_or_else(|| self.corrupt(name, "is missing"))
    }

    pub fn opt_epoch(&self, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(text)) => parse_epoch(text)
                .map(Some)
                .ok_or_else(|| self.corrupt(name, &format!("is {text}, not epoch seconds"))),
            Some(_) => Err(self.corrupt(name, "is not a number")),
        }
    }

    pub fn epoch(&self, name: &str) -> Result<OffsetDateTime, StoreError> {
        self.opt_epoch(name)?
            .ok_or_else(|| self.corrupt(name, "is missing"))
    }

    /// A string set; absent means empty (DynamoDB stores no empty sets).
    pub fn string_set(&self, name: &str) -> Result<BTreeSet<String>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(BTreeSet::new()),
            Some(AttributeValue::Ss(values)) => Ok(values.iter().cloned().collect()),
            Some(_) => Err(self.corrupt(name, "is not a string set")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_numbers_round_trip_exactly() {
        let base = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        for at in [
            base,
            base + time::Duration::milliseconds(250),
            base + time::Duration::nanoseconds(1),
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::UNIX_EPOCH - time::Duration::milliseconds(1500),
        ] {
            let AttributeValue::N(text) = epoch(at) else {
                panic!("not a number")
            };
            assert_eq!(parse_epoch(&text), Some(at), "{text}");
        }
        assert_eq!(
            epoch(base + time::Duration::milliseconds(250)),
            AttributeValue::N("1700000000.25".into())
        );
        assert_eq!(epoch(base), AttributeValue::N("1700000000".into()));
        for bad in ["", "-", "1e9", "1.2.3", "abc", ".5", "1.x"] {
            assert_eq!(parse_epoch(bad), None, "{bad}");
        }
    }

    #[test]
    fn throttling_codes_are_throttled_and_the_rest_unavailable() {
        use aws_sdk_dynamodb::error::ErrorMetadata;
        let service = |code: &str| -> SdkError<UpdateItemError, ()> {
            SdkError::service_error(
                UpdateItemError::generic(ErrorMetadata::builder().code(code).build()),
                (),
            )
        };
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            assert!(
                matches!(classify(service(code)), StoreError::Throttled { .. }),
                "{code}"
            );
        }
        for code in [
            "ResourceNotFoundException",
            "InternalServerError",
            "AccessDeniedException",
        ] {
            assert!(
                matches!(classify(service(code)), StoreError::Unavailable { .. }),
                "{code}"
            );
        }
        let timeout: SdkError<UpdateItemError, ()> = SdkError::timeout_error("operation timed out");
        assert!(matches!(classify(timeout), StoreError::Unavailable { .. }));
    }

    #[test]
    fn a_wrong_attribute_is_corrupt_and_named() {
        let item: Item = [
            (PARTITION_KEY.to_owned(), string("acme#1")),
            ("attempts".to_owned(), string("one")),
        ]
        .into_iter()
        .collect();
        let reader = ItemReader::new(&item);
        let err = reader.number::<u32>("attempts").expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::Corrupt { detail } if detail.contains("attempts") && detail.contains("acme#1")),
            "{err:?}"
        );
        assert!(matches!(
            reader.string("status"),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(reader.string_set("steps_done"), Ok(BTreeSet::new()));
    }
}
