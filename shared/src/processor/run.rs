//! One run: a customer's webhooks, in queue order, applied as one (see the module docs of
//! [`super`] for the steps).

use super::failure::ProcessError;
use super::{Applied, Processed, Processor};
use crate::apply::{fire_steps, step_key, Report, Writer};
use crate::converge::{Fold, Verdict};
use crate::envelope::WebhookEnvelope;
use crate::idempotency::{new_token, payload_hash, Begin, IdempotencyKey, Lease, Received};
use crate::identity::{CustomerKey, CustomerState, Locked};
use crate::rules::Plan;
use std::time::Duration;
use time::OffsetDateTime;

/// An envelope and its plan.
#[derive(Debug, Clone)]
pub struct Planned {
    pub envelope: WebhookEnvelope,
    pub plan: Plan,
}

impl Planned {
    /// The identity map's key of the plan's customer.
    pub fn customer(&self) -> Option<CustomerKey> {
        self.plan
            .customer_id
            .as_ref()
            .map(|id| CustomerKey::new(&self.plan.site, id))
    }
}

/// A webhook of the run whose lease was taken.
struct Started<'a> {
    index: usize,
    item: &'a Planned,
    lease: Lease,
    verdict: Verdict,
    applied: Applied,
}

impl Processor {
    /// Applies `items` (webhooks of one customer, in queue order) as one run; one result per
    /// item. When the run fails, its first webhook begun carries the error and every later
    /// one [`ProcessError::HeldBack`]: the caller returns them to the queue together. Items
    /// must share one customer (the batch splits runs so).
    pub async fn process_run(
        &self,
        items: &[Planned],
        remaining: Duration,
    ) -> Vec<Result<Processed, ProcessError>> {
        let mut results: Vec<Option<Result<Processed, ProcessError>>> =
            items.iter().map(|_| None).collect();
        let now = OffsetDateTime::now_utc();
        let lease_for = remaining
            .min(self.settings.max_lease)
            .max(Duration::from_secs(1));

        // 1. The webhooks' leases, in order; a webhook another worker holds ends the run
        //    there.
        let mut started: Vec<Started<'_>> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if item.plan.is_empty() {
                results[index] = Some(Ok(Processed::Ignored));
                continue;
            }
            if self.too_old(&item.plan, now) {
                tracing::warn!(
                    webhook_id = item.envelope.webhook_id.as_str(),
                    event = item.envelope.event.as_str(),
                    event_time = ?item.plan.event_time,
                    "webhook older than MAX_EVENT_AGE_DAYS: acknowledged, not applied (a replay from long ago)"
                );
                results[index] = Some(Ok(Processed::TooOld));
                continue;
            }
            let key = IdempotencyKey::new(&item.envelope.site, &item.envelope.webhook_id);
            // The same webhook twice in one run (a redelivery queued behind the first): the
            // first copy applies it, this one is its duplicate.
            if let Some(first) = started.iter().find(|s| s.lease.key == key) {
                let same_payload = first.item.envelope.raw_body == item.envelope.raw_body;
                results[index] = Some(Ok(Processed::Duplicate { same_payload }));
                continue;
            }
            let begun = self
                .idempotency
                .begin(
                    &key,
                    &payload_hash(&item.envelope.raw_body),
                    &Received::of(&item.envelope),
                    now,
                    lease_for,
                    self.settings.record_ttl,
                )
                .await;
            match begun {
                Ok(Begin::Started(lease)) if lease.attempt == 1 => {
                    // A new record: unless its seen marker outlived an earlier record.
                    match self.seen_before(&key, &lease, now).await {
                        Ok(false) => {}
                        Ok(true) => {
                            results[index] = Some(Ok(Processed::Duplicate { same_payload: true }));
                            continue;
                        }
                        Err(e) => {
                            results[index] = Some(Err(e));
                            break;
                        }
                    }
                    started.push(Started {
                        index,
                        item,
                        lease,
                        verdict: Verdict::default(),
                        applied: Applied::default(),
                    });
                }
                Ok(Begin::Started(lease)) => {
                    if lease.payload_differs {
                        tracing::warn!(
                            webhook_id = item.envelope.webhook_id.as_str(),
                            attempt = lease.attempt,
                            "this delivery's body differs from the first one seen for this webhook id"
                        );
                        crate::telemetry::metrics::replay_payload_differs();
                    }
                    started.push(Started {
                        index,
                        item,
                        lease,
                        verdict: Verdict::default(),
                        applied: Applied::default(),
                    });
                }
                Ok(Begin::AlreadyCompleted { same_payload, .. }) => {
                    results[index] = Some(Ok(Processed::Duplicate { same_payload }));
                }
                Ok(Begin::InProgress { lease_expires_at }) => {
                    results[index] = Some(Err(ProcessError::InProgressElsewhere {
                        until: lease_expires_at,
                    }));
                    break;
                }
                Err(e) => {
                    results[index] = Some(Err(e.into()));
                    break;
                }
            }
        }

        if !started.is_empty() {
            if let Err(error) = self.apply_started(&mut started, now, lease_for).await {
                // Give the leases back so a retry need not wait for them to expire. Best
                // effort: if these writes fail too, the leases simply expire.
                if !error.is_lease_lost() {
                    for s in &started {
                        if let Err(e) = self.idempotency.release(&s.lease, &error.to_string()).await
                        {
                            tracing::warn!(error = %e, "could not release the idempotency lease");
                        }
                    }
                }
                let mut error = Some(error);
                for s in &started {
                    results[s.index] = Some(Err(error.take().unwrap_or(ProcessError::HeldBack)));
                }
            } else {
                for s in started {
                    results[s.index] = Some(Ok(Processed::Applied(s.applied)));
                }
            }
        }
        // Whatever came after a webhook that stopped the run waits for it.
        let mut stopped = false;
        results
            .into_iter()
            .map(|r| match r {
                _ if stopped => Err(ProcessError::HeldBack),
                Some(Err(e)) => {
                    stopped = true;
                    Err(e)
                }
                Some(ok) => ok,
                None => {
                    stopped = true;
                    Err(ProcessError::HeldBack)
                }
            })
            .collect()
    }

    /// Whether the plan's event is older than the processor applies (snapshots, made from
    /// Chargify's current state, are never too old).
    fn too_old(&self, plan: &Plan, now: OffsetDateTime) -> bool {
        let (Some(max), Some(at)) = (self.settings.max_event_age, plan.event_time) else {
            return false;
        };
        !crate::chargify::webhook::is_internal_event(&plan.event)
            && now - at > time::Duration::try_from(max).unwrap_or(time::Duration::MAX)
    }

    /// A record just created for a webhook whose seen marker exists: applied before, its
    /// record since expired. Completes the new record as the duplicate it is.
    async fn seen_before(
        &self,
        key: &IdempotencyKey,
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<bool, ProcessError> {
        if !self.idempotency.seen(key, now).await? {
            return Ok(false);
        }
        tracing::info!(
            webhook_id = key.webhook_id.as_str(),
            "applied before (its seen marker outlived its record): a duplicate"
        );
        self.idempotency
            .complete(
                lease,
                "duplicate: applied before, its earlier record expired (seen marker)",
                None,
                now,
                self.settings.record_ttl,
            )
            .await?;
        Ok(true)
    }

    /// Steps 2–6 for the webhooks begun.
    async fn apply_started(
        &self,
        started: &mut [Started<'_>],
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<(), ProcessError> {
        let customer = started.first().and_then(|s| s.item.customer());
        let holder = new_token();
        let state = match &customer {
            Some(key) => match self.customers.lock(key, &holder, now, lease_for).await? {
                Locked::Held(state) => state,
                Locked::Busy { until } => return Err(ProcessError::CustomerBusy { until }),
            },
            None => CustomerState::default(),
        };
        let outcome = self
            .apply_locked(started, state, now, customer.as_ref(), &holder)
            .await;
        if let (Err(_), Some(key)) = (&outcome, &customer) {
            if let Err(e) = self.customers.unlock(key, &holder).await {
                tracing::warn!(error = %e, "could not give the customer's lease back; it expires by itself");
            }
        }
        let state = outcome?;
        if let Some(key) = &customer {
            self.customers.save(key, &holder, &state, true).await?;
        }
        let run_size = started.len();
        for s in started.iter_mut() {
            s.applied.run_size = run_size;
            // Before the record completes, so a completed record always has its marker.
            self.idempotency
                .mark_seen(&s.lease.key, now, self.settings.seen_marker_ttl)
                .await?;
            self.idempotency
                .complete(
                    &s.lease,
                    &s.applied.summary(),
                    None,
                    OffsetDateTime::now_utc(),
                    self.settings.record_ttl,
                )
                .await?;
        }
        Ok(())
    }

    /// Steps 3–5 under the customer's lease; returns the state to save.
    async fn apply_locked(
        &self,
        started: &mut [Started<'_>],
        before: CustomerState,
        now: OffsetDateTime,
        customer: Option<&CustomerKey>,
        holder: &str,
    ) -> Result<CustomerState, ProcessError> {
        let mut fold = Fold::new(before.clone());
        for s in started.iter_mut() {
            s.verdict = fold.add(&s.item.plan);
            s.applied.won = s.verdict.won;
            s.applied.superseded = s.verdict.superseded;
            s.applied.stale = s.verdict.is_stale();
        }
        let steps_to_fire = started.iter().any(|s| {
            s.verdict.steps.iter().any(|(index, fire)| {
                *fire
                    && !s
                        .lease
                        .is_done(&step_key(*index, &s.item.plan.actions[*index].action))
            })
        });

        // The Keap writes, on a working copy of the state: old versions, the mirror kept up
        // to date as calls succeed.
        let writer = Writer {
            crm: self.crm.as_ref(),
            directory: &self.directory,
            rules: &self.rules,
        };
        let mut working = before.clone();
        let mut report = Report::default();
        let mut contact = working.contact_id;
        if !fold.winners.is_empty() || steps_to_fire {
            let stale_mirror = self.settings.mirror_max_age.is_some_and(|max| {
                working.mirror_read_at.is_none_or(|at| {
                    now - at > time::Duration::try_from(max).unwrap_or(time::Duration::MAX)
                })
            });
            // A retry (after a failure, a crash or an operator's forced replay) reads the
            // contact back first: what Keap holds may have changed since the mirror was set.
            let retry = started.iter().any(|s| s.lease.attempt > 1);
            // A contact whose tags were never listed (mapped before the mirror existed):
            // listed once, rather than removing tags blindly.
            let tags_unknown = working.tags.is_none()
                && fold
                    .winners
                    .values()
                    .any(|w| matches!(w.target, crate::converge::Target::Tag(_)));
            if (stale_mirror || retry || tags_unknown) && working.contact_id.is_some() {
                writer.refresh(&mut working, now).await?;
            }
            let email = newest_email(started);
            if writer
                .before_creating(&mut working, &fold.winners, email)
                .await?
            {
                self.save_midway(customer, holder, &before, &working)
                    .await?;
            }
            let id = writer
                .write_contact(&mut working, &fold.winners, email, now, &mut report)
                .await?;
            let changes = writer
                .tag_changes(&working, &fold.winners, &mut report)
                .await?;
            writer
                .write_tags(id, changes, &mut working, &mut report)
                .await?;
            contact = Some(id);
        }

        // Goals and notes come after the values, so a campaign they start sees the contact
        // as it now is. Before them, what Keap now holds is saved (the versions are not yet:
        // a retry after a failing goal must fold these webhooks exactly as now).
        if steps_to_fire && working != before {
            self.save_midway(customer, holder, &before, &working)
                .await?;
        }
        for s in started.iter_mut() {
            s.applied.contact_id = contact;
            s.applied.run = report.clone();
            s.applied.steps = fire_steps(
                self.idempotency.as_ref(),
                &writer,
                contact,
                &s.item.plan,
                &s.verdict.steps,
                &mut s.lease,
            )
            .await?;
        }

        let mut after = fold.state;
        after.take_mirror(&working);
        Ok(after)
    }
}

impl Processor {
    /// Saves what Keap now holds (`working`'s mirror) over `before`'s versions, the lock kept:
    /// a later failure or crash must not lose what calls already did.
    async fn save_midway(
        &self,
        customer: Option<&CustomerKey>,
        holder: &str,
        before: &CustomerState,
        working: &CustomerState,
    ) -> Result<(), ProcessError> {
        if let Some(key) = customer {
            let mut midway = before.clone();
            midway.take_mirror(working);
            self.customers.save(key, holder, &midway, false).await?;
        }
        Ok(())
    }
}

/// The email of the newest contact data among the run's webhooks, to find or create the
/// contact when the customer has none yet.
fn newest_email<'a>(started: &'a [Started<'_>]) -> Option<&'a str> {
    started
        .iter()
        .filter_map(|s| {
            let email = s.item.plan.contact.email.as_deref()?;
            let version = crate::converge::Version::new(
                s.item.plan.customer_updated_at,
                &s.item.plan.webhook_id,
            );
            Some((version, email))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, email)| email)
}
