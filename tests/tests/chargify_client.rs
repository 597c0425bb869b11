//! The Chargify REST client against the Chargify stand-in on 127.0.0.1: paging, the
//! concurrency limit, 429s (with and without `Retry-After`), errors, replays and events; and
//! the stand-in's webhook deliveries (retry schedule, failure, pausing, replay).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use integration_tests::chargify_standin::{
    ChargifyStandIn, Delivery, Fault, NewSubscription, StandInConfig, WebhookStatus,
};
use integration_tests::loopback::LoopbackServer;
use shared::chargify::api::{
    ChargifyApi, ChargifyApiError, ChargifyClient, ChargifyClientConfig, EventQuery,
    SubscriptionQuery, WebhookQuery, WebhookStatus as ApiWebhookStatus,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn client(standin: &ChargifyStandIn) -> ChargifyClient {
    ChargifyClient::new(standin.client_config()).expect("client")
}

fn client_with(
    standin: &ChargifyStandIn,
    tweak: impl FnOnce(&mut ChargifyClientConfig),
) -> ChargifyClient {
    let mut config = standin.client_config();
    tweak(&mut config);
    ChargifyClient::new(config).expect("client")
}

fn add(standin: &ChargifyStandIn, n: i64, state: &str) -> Vec<i64> {
    (0..n)
        .map(|i| standin.add_subscription(NewSubscription::new(100 + i, state)))
        .collect()
}

#[tokio::test]
async fn paging_reads_every_subscription_and_stops_at_the_empty_page() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 450, "active");
    let api = client(&standin);
    let mut seen = Vec::new();
    for page in 1..=10 {
        let batch = api
            .subscriptions_page(&SubscriptionQuery::default(), page)
            .await
            .expect("page");
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().map(|s| s.id));
    }
    assert_eq!(seen, ids);
    assert_eq!(
        standin.calls_total(),
        4,
        "3 pages of ≤ 200, then the empty one"
    );
    let calls = standin.state().calls.clone();
    assert!(calls.iter().all(|c| c
        .query
        .as_deref()
        .is_some_and(|q| q.contains("per_page=200"))));
}

#[tokio::test]
async fn updated_since_lists_changed_subscriptions_oldest_change_first() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 5, "active");
    let since = standin.state().now;
    standin.change_state(ids[3], "past_due");
    standin.change_state(ids[1], "canceled");
    let api = client(&standin);
    let query = SubscriptionQuery {
        updated_since: Some(since + time::Duration::seconds(1)),
        ..SubscriptionQuery::default()
    };
    let changed = api.subscriptions_page(&query, 1).await.expect("page");
    let got: Vec<(i64, Option<String>)> = changed.iter().map(|s| (s.id, s.state.clone())).collect();
    assert_eq!(
        got,
        [
            (ids[3], Some("past_due".into())),
            (ids[1], Some("canceled".into()))
        ]
    );
    let by_state = SubscriptionQuery {
        state: Some("canceled".into()),
        ..SubscriptionQuery::default()
    };
    let canceled = api.subscriptions_page(&by_state, 1).await.expect("page");
    assert_eq!(canceled.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[1]]);
}

#[tokio::test]
async fn a_burst_of_five_through_one_client_never_has_more_than_four_in_flight() {
    let standin = ChargifyStandIn::start_with(StandInConfig {
        latency: Duration::from_millis(150),
        ..StandInConfig::default()
    })
    .await;
    let ids = add(&standin, 5, "active");
    let api = Arc::new(client_with(&standin, |c| c.max_retries = 0));
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let api = Arc::clone(&api);
            let id = *id;
            tokio::spawn(async move { api.subscription(id).await })
        })
        .collect();
    for task in tasks {
        let sub = task
            .await
            .expect("task")
            .expect("no 429: the client waits its turn");
        assert!(sub.is_some());
    }
    assert_eq!(standin.throttled(), 0);
    assert_eq!(standin.max_in_flight(), 4, "four at once, the fifth after");

    // The stand-in does refuse a fifth concurrent request: the check above can fail.
    let raw = reqwest::Client::new();
    let url = format!("{}/subscriptions/{}.json", standin.base_url(), ids[0]);
    let answers = futures_join(
        (0..5)
            .map(|_| {
                raw.get(&url)
                    .basic_auth("standin-api-key", Some("x"))
                    .send()
            })
            .collect(),
    )
    .await;
    let statuses: Vec<u16> = answers
        .into_iter()
        .map(|r| r.expect("answer").status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_429_is_retried_and_succeeds() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 1, "active");
    standin.inject(Fault::TooManyRequests { retry_after: None });
    standin.inject(Fault::TooManyRequests { retry_after: None });
    let sub = client(&standin)
        .subscription(ids[0])
        .await
        .expect("retried");
    assert_eq!(sub.map(|s| s.id), Some(ids[0]));
    assert_eq!(standin.calls_total(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 1, "active");
    standin.inject(Fault::TooManyRequests {
        retry_after: Some(1),
    });
    let started = Instant::now();
    client(&standin)
        .subscription(ids[0])
        .await
        .expect("retried");
    // The client's own backoff is 20 ms here: only Retry-After explains a second.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(standin.calls_total(), 2);
}

#[tokio::test]
async fn retries_after_a_retry_after_are_bounded_too() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 1, "active");
    for _ in 0..10 {
        standin.inject(Fault::TooManyRequests {
            retry_after: Some(0),
        });
    }
    let api = client_with(&standin, |c| c.max_retries = 2);
    let error = api.subscription(ids[0]).await.expect_err("still throttled");
    assert!(
        matches!(error, ChargifyApiError::Throttled { attempts: 3, .. }),
        "{error:?}"
    );
    assert_eq!(standin.calls_total(), 3, "not one call per 429 injected");
}

#[tokio::test]
async fn retries_are_bounded_and_the_error_says_what_to_do() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 1, "active");
    for _ in 0..10 {
        standin.inject(Fault::TooManyRequests { retry_after: None });
    }
    let api = client_with(&standin, |c| c.max_retries = 2);
    let error = api.subscription(ids[0]).await.expect_err("still throttled");
    assert!(
        matches!(error, ChargifyApiError::Throttled { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("4 concurrent"), "{error}");
    assert!(error.is_transient());
    assert_eq!(standin.calls_total(), 3);

    standin.state().faults.clear();
    standin.inject(Fault::Status(503));
    assert!(api
        .subscription(ids[0])
        .await
        .expect("5xx retried")
        .is_some());
    for _ in 0..3 {
        standin.inject(Fault::Status(500));
    }
    let error = api.subscription(ids[0]).await.expect_err("5xx thrice");
    assert_eq!(
        error,
        ChargifyApiError::Transient {
            path: format!("/subscriptions/{}.json", ids[0]),
            status: 500
        }
    );
}

#[tokio::test]
async fn a_wrong_key_is_a_401_that_names_the_setting_and_is_not_retried() {
    let standin = ChargifyStandIn::start().await;
    let api = client_with(&standin, |c| c.api_key = "wrong-key-123".into());
    let error = api.subscription(1).await.expect_err("refused");
    assert!(
        matches!(error, ChargifyApiError::Unauthorized { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("CHARGIFY_API_KEY"), "{message}");
    assert!(!message.contains("wrong-key-123"));
    assert!(!error.is_transient());
    assert_eq!(standin.calls_total(), 1);
}

#[tokio::test]
async fn not_found_is_none_and_a_refused_query_is_a_422_with_chargifys_reason() {
    let standin = ChargifyStandIn::start().await;
    let api = client(&standin);
    assert_eq!(api.subscription(424242).await.expect("answered"), None);
    let query = SubscriptionQuery {
        state: Some("bogus".into()),
        ..SubscriptionQuery::default()
    };
    let error = api
        .subscriptions_page(&query, 1)
        .await
        .expect_err("refused");
    let ChargifyApiError::Unprocessable { errors, .. } = &error else {
        panic!("422 expected, got {error:?}");
    };
    assert!(errors.contains("state `bogus`"), "{errors}");
}

#[tokio::test]
async fn an_answer_that_does_not_fit_is_an_error_that_quotes_no_personal_data() {
    let standin = ChargifyStandIn::start().await;
    let id = add(&standin, 1, "active")[0];
    // A record whose id is a customer's name and address: serde's own message would quote it.
    let odd = serde_json::json!("Jane Doe <jane.doe@example.com>");
    if let Some(subscription) = standin.state().subscriptions.get_mut(&id) {
        subscription["id"] = odd;
    }
    let err = client(&standin)
        .subscription(id)
        .await
        .expect_err("not a subscription");
    let ChargifyApiError::Unreadable { detail, .. } = &err else {
        panic!("{err:?}");
    };
    let text = err.to_string();
    for personal in ["Jane", "jane.doe", "example.com"] {
        assert!(!text.contains(personal), "{text}");
    }
    assert!(detail.contains("invalid type: string"), "{detail}");
    assert!(detail.contains("expected i64"), "{detail}");
}

#[tokio::test]
async fn webhooks_list_by_status_and_replays_go_in_chunks_of_a_thousand() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 2, "active");
    let (_, first) = standin.change_state(ids[0], "past_due");
    let (_, second) = standin.change_state(ids[1], "canceled");
    standin
        .state()
        .webhooks
        .get_mut(&first)
        .expect("stored")
        .status = WebhookStatus::Failed;
    let api = client(&standin);
    let failed = WebhookQuery {
        status: Some(ApiWebhookStatus::Failed),
        ..WebhookQuery::default()
    };
    let listed = api.webhooks_page(&failed, 1).await.expect("page");
    assert_eq!(listed.iter().map(|w| w.id).collect::<Vec<_>>(), [first]);
    let hook = &listed[0];
    assert_eq!(hook.event.as_deref(), Some("subscription_state_change"));
    let body = hook.body.as_deref().expect("a body");
    let keys = shared::chargify::SharedKeySet::parse("standin-shared-key").expect("key");
    let signature = hook.signature_hmac_sha_256.as_deref().expect("signed");
    let candidates = [shared::chargify::SignatureCandidate {
        source: shared::chargify::SignatureSource::Header,
        value: signature,
    }];
    assert!(keys
        .verify(body.as_bytes(), &candidates, Some("acme"))
        .is_ok());
    let webhook = shared::chargify::Webhook::parse(body.as_bytes()).expect("a webhook body");
    assert_eq!(webhook.id, first.to_string());
    assert_eq!(webhook.subscription_id, Some(ids[0].to_string()));
    assert_eq!(
        webhook.form.get("payload[subscription][state]"),
        Some("past_due")
    );
    let all = api
        .webhooks_page(&WebhookQuery::default(), 1)
        .await
        .expect("page");
    assert_eq!(
        all.iter().map(|w| w.id).collect::<Vec<_>>(),
        [first, second]
    );

    let mut many = vec![first; 1000];
    many.push(second);
    let before = standin.calls_total();
    api.replay_webhooks(&many).await.expect("replayed");
    assert_eq!(standin.calls_total() - before, 2, "1000 ids, then 1");
    assert_eq!(standin.state().replayed.len(), 1001);
    assert_eq!(
        standin.state().webhooks[&first].status,
        WebhookStatus::Pending,
        "queued again"
    );

    // The stand-in refuses more than 1000 in one call, as Chargify does.
    let raw = reqwest::Client::new()
        .post(format!("{}/webhooks/replay.json", standin.base_url()))
        .basic_auth("standin-api-key", Some("x"))
        .json(&serde_json::json!({ "ids": vec![first; 1001] }))
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status().as_u16(), 422);
}

#[tokio::test]
async fn events_come_oldest_first_from_since_id_inclusive_and_filtered() {
    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 1, "active");
    let (e1, _) = standin.change_state(ids[0], "past_due");
    let (e2, _) = standin.emit(ids[0], "payment_failure");
    let (e3, _) = standin.change_state(ids[0], "active");
    let api = client(&standin);
    let all = api
        .events_page(&EventQuery::default(), 1)
        .await
        .expect("page");
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [e1, e2, e3]);
    let from_e2 = api
        .events_page(
            &EventQuery {
                since_id: Some(e2),
                filter: vec![],
            },
            1,
        )
        .await
        .expect("page");
    assert_eq!(from_e2.iter().map(|e| e.id).collect::<Vec<_>>(), [e2, e3]);
    let state_changes = api
        .events_page(
            &EventQuery {
                since_id: None,
                filter: vec!["subscription_state_change".into()],
            },
            1,
        )
        .await
        .expect("page");
    assert_eq!(
        state_changes.iter().map(|e| e.id).collect::<Vec<_>>(),
        [e1, e3]
    );
    let data = state_changes[0].event_specific_data.clone().expect("data");
    assert_eq!(data["new_subscription_state"], "past_due");
    assert_eq!(data["previous_subscription_state"], "active");
    assert_eq!(state_changes[0].subscription_id, Some(ids[0]));
    assert!(api
        .events_page(&EventQuery::default(), 2)
        .await
        .expect("page")
        .is_empty());
}

/// A webhook receiver on 127.0.0.1 that answers 200 while `accept` is set, else 500.
struct Receiver {
    server: LoopbackServer,
    accept: Arc<AtomicBool>,
    bodies: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    async fn start(accept: bool) -> Self {
        let accept = Arc::new(AtomicBool::new(accept));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (Arc::clone(&accept), Arc::clone(&bodies));
        let server =
            LoopbackServer::start(move |request: hyper::Request<hyper::body::Incoming>| {
                let (accept, bodies) = (Arc::clone(&a), Arc::clone(&b));
                async move {
                    let signature = request
                        .headers()
                        .get("x-chargify-webhook-signature-hmac-sha-256")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let ok = accept.load(Ordering::SeqCst);
                    if ok {
                        bodies
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((String::from_utf8_lossy(&body).into_owned(), signature));
                    }
                    hyper::Response::builder()
                        .status(if ok { 200 } else { 500 })
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default()
                }
            })
            .await;
        Self {
            server,
            accept,
            bodies,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/webhooks/chargify", self.server.addr)
    }

    fn received(&self) -> Vec<(String, String)> {
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

const IDLE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_delivered_webhook_is_signed_and_marked_successful() {
    let standin = ChargifyStandIn::start().await;
    let receiver = Receiver::start(true).await;
    standin.deliver_to(Delivery::to(receiver.url()));
    let ids = add(&standin, 1, "trialing");
    let (_, hook) = standin.change_state(ids[0], "active");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    let stored = standin.state().webhooks[&hook].clone();
    assert_eq!(stored.status, WebhookStatus::Successful);
    assert_eq!(stored.attempts, 1);
    assert!(stored.accepted_at.is_some());
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].1,
        shared::chargify::signature::sign("standin-shared-key", received[0].0.as_bytes())
    );
}

#[tokio::test]
async fn five_failed_attempts_on_chargifys_schedule_leave_the_webhook_failed_and_a_replay_resends_it(
) {
    let standin = ChargifyStandIn::start().await;
    let receiver = Receiver::start(false).await;
    standin.deliver_to(Delivery {
        time_scale: 0.002, // 10 s, 15 s, 90 s, 180 s → 20, 30, 180, 360 ms
        ..Delivery::to(receiver.url())
    });
    let ids = add(&standin, 1, "active");
    let started = Instant::now();
    let (_, hook) = standin.change_state(ids[0], "past_due");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    assert!(
        started.elapsed() >= Duration::from_millis(590),
        "{:?}",
        started.elapsed()
    );
    let stored = standin.state().webhooks[&hook].clone();
    assert_eq!(stored.status, WebhookStatus::Failed);
    assert_eq!(stored.attempts, 5);
    assert_eq!(stored.last_error.as_deref(), Some("500 (retry 5 of 5)"));
    assert!(receiver.received().is_empty());

    receiver.accept.store(true, Ordering::SeqCst);
    client(&standin)
        .replay_webhooks(&[hook])
        .await
        .expect("replayed");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    assert_eq!(
        standin.state().webhooks[&hook].status,
        WebhookStatus::Successful
    );
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].0.starts_with(&format!("id={hook}&")),
        "same id on replay"
    );
}

#[tokio::test]
async fn failures_in_a_row_pause_the_endpoint_and_new_webhooks_wait_paused_until_replayed() {
    let standin = ChargifyStandIn::start().await;
    let receiver = Receiver::start(false).await;
    standin.deliver_to(Delivery {
        pause_after: 7,
        time_scale: 0.0001,
        ..Delivery::to(receiver.url())
    });
    let ids = add(&standin, 1, "active");
    let (_, first) = standin.change_state(ids[0], "past_due");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    assert!(!standin.state().paused, "5 failures are under 7");
    let (_, second) = standin.emit(ids[0], "payment_failure");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    {
        let s = standin.state();
        assert!(s.paused, "the 7th failure in a row pauses the endpoint");
        assert_eq!(s.webhooks[&first].status, WebhookStatus::Failed);
        assert_eq!(
            s.webhooks[&second].status,
            WebhookStatus::Paused,
            "no more sends"
        );
        assert_eq!(s.webhooks[&second].attempts, 2);
        assert_eq!(s.delivery_attempts, 7);
    }
    receiver.accept.store(true, Ordering::SeqCst);
    let (_, third) = standin.change_state(ids[0], "active");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    assert_eq!(
        standin.state().webhooks[&third].status,
        WebhookStatus::Paused
    );
    assert!(
        receiver.received().is_empty(),
        "a paused endpoint sends nothing"
    );

    let api = client(&standin);
    let paused = api
        .webhooks_page(
            &WebhookQuery {
                status: Some(ApiWebhookStatus::Paused),
                ..WebhookQuery::default()
            },
            1,
        )
        .await
        .expect("page");
    assert_eq!(
        paused.iter().map(|w| w.id).collect::<Vec<_>>(),
        [second, third]
    );
    api.replay_webhooks(&[first, second, third])
        .await
        .expect("replayed");
    assert!(standin.wait_deliveries_idle(IDLE).await);
    let s = standin.state();
    assert!(s.webhooks_with(WebhookStatus::Successful).len() == 3);
    assert_eq!(receiver.received().len(), 3);
    assert!(
        s.paused,
        "only resume_endpoint (a URL edit) re-activates it"
    );
}

/// The reconciler's path for a subscription whose webhook never arrived: read it from the
/// stand-in through the client, snapshot it, and process it like a webhook (in-memory ports).
#[tokio::test]
async fn a_subscription_read_from_the_api_syncs_through_the_processor_once() {
    use shared::chargify::snapshot::snapshot_envelope;
    use shared::idempotency::InMemoryIdempotencyStore;
    use shared::identity::InMemoryCustomerStore;
    use shared::keap::{Directory, InMemoryCrm};
    use shared::processor::{Limits, Processed, Processor};

    let standin = ChargifyStandIn::start().await;
    let ids = add(&standin, 1, "active");
    standin.change_state(ids[0], "past_due");
    let sub = client(&standin)
        .subscription(ids[0])
        .await
        .expect("answered")
        .expect("exists");
    let rules = Arc::new(shared::rules::RuleSet::default_rules().expect("rules"));
    let crm = Arc::new(InMemoryCrm::new());
    for label in rules.custom_field_labels() {
        crm.add_custom_field(&label);
    }
    let processor = Processor {
        rules,
        crm: crm.clone(),
        directory: Arc::new(Directory::new(Arc::new(
            shared::identity::InMemoryNameLocks::new(),
        ))),
        idempotency: Arc::new(InMemoryIdempotencyStore::new()),
        customers: Arc::new(InMemoryCustomerStore::new()),
        settings: Limits::default(),
    };
    let now = time::OffsetDateTime::now_utc();
    let envelope = snapshot_envelope("acme", &sub, now).expect("snapshot");
    assert_eq!(
        envelope.message_group_id(),
        "acme:cus:100",
        "the customer's FIFO group"
    );
    let outcome = processor
        .process(&envelope, Duration::from_secs(60))
        .await
        .expect("processed");
    assert_eq!(outcome.outcome(), "applied");
    let contact = *crm.state().contacts.keys().next().expect("a contact");
    let tags = crm.tag_names(contact);
    assert!(
        tags.contains("Billing: Past Due") && tags.contains("Plan: basic"),
        "{tags:?}"
    );
    assert!(crm.state().goals.is_empty(), "a snapshot fires no goal");
    // Read again, unchanged: the same id, a duplicate.
    let again = client(&standin)
        .subscription(ids[0])
        .await
        .expect("answered")
        .expect("exists");
    let envelope = snapshot_envelope("acme", &again, now).expect("snapshot");
    let outcome = processor
        .process(&envelope, Duration::from_secs(60))
        .await
        .expect("processed");
    assert_eq!(outcome, Processed::Duplicate { same_payload: true });
}
