//! `cks serve` end to end on 127.0.0.1 with its embedded SQLite store and a dry-run Keap:
//! the story is sent with `cks send` and processed; refusals match the ingest Lambda's
//! answers byte for byte; a `kill -9` with a record in flight loses nothing and applies it
//! once; `cks plan` prints each sample's actions; and, against the Keap stand-in, a 429
//! burst on one customer's calls holds only that customer. Needs no moto (the binary is
//! built by the first test that runs it). Every wait is a bounded poll.

use integration_tests::keap_standin::{Fault, KeapStandIn};
use integration_tests::{cks_binary as cks, http_request};
use shared::chargify::signature::{sign, SIGNATURE_HEADER};
use shared::chargify::SharedKeySet;
use shared::envelope::MAX_BODY_BYTES;
use shared::fixtures;
use shared::ingest::{InboundRequest, IngestService};
use shared::queue::InMemoryQueue;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "serve-test-shared-key";
const PATH: &str = "/webhooks/chargify";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A running `cks serve`; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts on `port` with the database at `db`; `pause` sets the test knob. Returns once
    /// it listens (bounded).
    fn start(dir: &Path, db: &Path, port: u16, run: &str, pause: Option<&str>) -> Self {
        Self::start_with(dir, db, port, run, pause, &[])
    }

    /// [`Server::start`] with more environment (`env`) and arguments after `serve`'s own.
    fn start_with(
        dir: &Path,
        db: &Path,
        port: u16,
        run: &str,
        pause: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let stderr = dir.join(format!("serve-{run}.err"));
        let mut command = Command::new(cks());
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(db)
            .env("CHARGIFY_SHARED_KEYS", KEY)
            .env("CKS_VISIBILITY_TIMEOUT_SECS", "11")
            .env_remove("KEAP_API_KEY")
            .env_remove("KEAP_API_KEY_SECRET_ARN")
            .env_remove("KEAP_CLIENT_ID")
            .env_remove("KEAP_OAUTH_CLIENT_SECRET_ARN")
            .env_remove("RULES_TOML")
            .env_remove("CKS_TEST_PAUSE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("serve-{run}.out"))).expect("log"))
            .stderr(std::fs::File::create(&stderr).expect("log"));
        if let Some(pause) = pause {
            command.env("CKS_TEST_PAUSE", pause);
        }
        command.envs(env.iter().copied());
        let server = Self {
            child: command.spawn().expect("cks serve starts"),
            port,
            stderr,
        };
        server.wait_for("Listening: POST", 1);
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (at most 60 s) until `text` appears `count` times on stderr; returns stderr.
    fn wait_for(&self, text: &str, count: usize) -> String {
        let started = Instant::now();
        loop {
            let log = self.stderr();
            if log.matches(text).count() >= count {
                return log;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "waited 60 s for {count} × {text:?}; stderr:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.port)
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(server: &Server, sample: Option<&str>) -> Output {
    let mut command = Command::new(cks());
    command.args(["send", "--url", &server.url(), "--key", KEY]);
    command.args(sample);
    command.output().expect("cks send runs")
}

#[test]
fn the_story_is_accepted_and_processed_in_order_with_every_keap_call_shown() {
    let dir = tempfile_dir("story");
    let server = Server::start(&dir, &dir.join("local.sqlite3"), free_port(), "1", None);
    let log = server.stderr();
    assert!(log.contains("DRY RUN"), "announces the mode: {log}");
    let output = send(&server, None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let story = fixtures::story();
    assert_eq!(stdout.lines().count(), story.len(), "{stdout}");
    for (line, (name, _)) in stdout.lines().zip(&story) {
        assert!(line.starts_with(&format!("{name}: 200 ")), "{line}");
        assert!(line.contains(r#""outcome":"enqueued""#), "{line}");
    }
    let log = server.wait_for("processed webhook ", story.len());
    // In the order sent (one FIFO group), each applied.
    let processed: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("processed webhook "))
        .collect();
    for (i, line) in processed.iter().enumerate() {
        let id = 1001 + i;
        assert!(
            line.starts_with(&format!("processed webhook {id} ")),
            "{line}"
        );
        assert!(line.ends_with(": applied"), "{line}");
    }
    assert!(log.contains("would call Keap: upsert_contact"), "{log}");
    assert!(
        log.contains("would call Keap: achieve_goal POST /v1/campaigns/goals/chargify/signup"),
        "{log}"
    );
    // A resend within the deduplication window is accepted and not queued again.
    let again = send(&server, Some("signup"));
    assert!(String::from_utf8_lossy(&again.stdout).contains("signup: 200"));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        server.stderr().matches("processed webhook 1001 ").count(),
        1
    );
}

/// What the ingest Lambda answers to `request` with the same key (its queue is in memory).
async fn lambda_answer(method: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let service = IngestService::new(SharedKeySet::parse(KEY).expect("key"), InMemoryQueue::new());
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    let method: http::Method = method.parse().expect("method");
    let reply = service
        .handle(InboundRequest {
            method: &method,
            headers: &map,
            query_signatures: vec![],
            body,
        })
        .await;
    (reply.status(), reply.body())
}

/// Method, headers, body, expected status.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

#[tokio::test]
async fn refusals_are_the_lambdas_answers() {
    let dir = tempfile_dir("refusals");
    let server = Server::start(&dir, &dir.join("local.sqlite3"), free_port(), "1", None);
    let body = fixtures::SIGNUP_SUCCESS.as_bytes();
    let good = sign(KEY, body);
    let wrong = sign("another-key", body);
    let malformed = b"hello=world".to_vec();
    let malformed_sig = sign(KEY, &malformed);
    let huge = vec![b'a'; MAX_BODY_BYTES + 1];
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            vec![(SIGNATURE_HEADER, wrong.as_str())],
            body.to_vec(),
            401,
        ),
        ("POST", vec![], body.to_vec(), 401),
        ("POST", vec![(SIGNATURE_HEADER, "zz")], body.to_vec(), 401),
        (
            "POST",
            vec![(SIGNATURE_HEADER, malformed_sig.as_str())],
            malformed,
            400,
        ),
        ("GET", vec![(SIGNATURE_HEADER, good.as_str())], vec![], 405),
        ("POST", vec![(SIGNATURE_HEADER, good.as_str())], huge, 413),
    ];
    for (method, headers, body, status) in cases {
        let (got, response) = http_request(server.port, method, PATH, &headers, &body)
            .await
            .expect("request");
        let (lambda_status, lambda_body) = lambda_answer(method, &headers, &body).await;
        assert_eq!(lambda_status, status);
        assert_eq!(got, status, "{method} {headers:?}: {response}");
        assert!(
            response.ends_with(&lambda_body),
            "{method} {status}: serve said {response}, the Lambda says {lambda_body}"
        );
        assert!(response
            .to_lowercase()
            .contains("content-type: application/json"));
        if status == 405 {
            assert!(
                response.to_lowercase().contains("allow: post"),
                "{response}"
            );
        }
    }
    assert!(!server.stderr().contains("processed webhook"));
}

/// Killed with the record received but not yet processed: after the restart it comes back
/// once its visibility timeout expires and is applied once.
#[test]
fn kill_9_with_a_record_in_flight_then_restart_applies_it_once() {
    let dir = tempfile_dir("kill-receive");
    let db = dir.join("local.sqlite3");
    let port = free_port();
    let first = Server::start(&dir, &db, port, "1", Some("after_receive:60000"));
    let output = send(&first, Some("signup"));
    assert!(output.status.success());
    wait_for_file(&dir.join("serve-1.out"), "batch received");
    first.kill_9();
    let second = Server::start(&dir, &db, port, "2", None);
    assert!(
        second.stderr().contains("Queue: 1 waiting or in flight"),
        "{}",
        second.stderr()
    );
    let log = second.wait_for("processed webhook 1001 ", 1);
    assert!(
        log.contains("processed webhook 1001 signup_success: applied"),
        "{log}"
    );
    assert_eq!(
        log.matches("would call Keap: achieve_goal").count(),
        1,
        "{log}"
    );
    assert!(!std::fs::read_to_string(dir.join("serve-1.err"))
        .unwrap_or_default()
        .contains("processed webhook"));
}

/// Killed after Keap was called and the idempotency record completed, before the queue
/// deleted the message: after the restart the redelivery is recognised and Keap is not
/// called again.
#[test]
fn kill_9_after_applying_but_before_settling_is_not_applied_twice() {
    let dir = tempfile_dir("kill-settle");
    let db = dir.join("local.sqlite3");
    let port = free_port();
    let first = Server::start(&dir, &db, port, "1", Some("before_settle:60000"));
    assert!(send(&first, Some("signup")).status.success());
    let log = first.wait_for("processed webhook 1001 signup_success: applied", 1);
    assert_eq!(log.matches("would call Keap: achieve_goal").count(), 1);
    first.kill_9();
    let second = Server::start(&dir, &db, port, "2", None);
    let log = second.wait_for("processed webhook 1001 ", 1);
    assert!(
        log.contains("processed webhook 1001 signup_success: duplicate"),
        "{log}"
    );
    assert!(
        !log.contains("would call Keap"),
        "no Keap call on the replay: {log}"
    );
}

#[test]
fn plan_prints_each_samples_actions_and_refuses_bad_input() {
    let dir = tempfile_dir("plan");
    for (name, body) in fixtures::samples() {
        let path = dir.join(format!("{}.txt", name.replace(':', "_")));
        std::fs::write(&path, &body).expect("write");
        let output = Command::new(cks())
            .arg("plan")
            .arg(&path)
            .env_remove("RULES_TOML")
            .output()
            .expect("cks plan runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let webhook = shared::chargify::Webhook::parse(body.as_bytes()).expect("parses");
        assert!(
            text.starts_with(&format!("webhook {} ({})", webhook.id, webhook.event)),
            "{name}: {text}"
        );
        let rules = shared::rules::RuleSet::default_rules().expect("rules");
        let site = webhook.site_subdomain.clone().unwrap_or_default();
        let plan = rules.plan(&webhook, &site).expect("plans");
        let rows = text
            .lines()
            .filter(|l| plan.rules.iter().any(|r| l.starts_with(r.as_str())))
            .count();
        assert_eq!(
            rows,
            plan.actions.len(),
            "{name}: one row per action:\n{text}"
        );

        let json = Command::new(cks())
            .args(["plan", "--json"])
            .arg(&path)
            .env_remove("RULES_TOML")
            .output()
            .expect("cks plan --json runs");
        let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
        assert_eq!(
            value["plan"]["actions"].as_array().map(Vec::len),
            Some(plan.actions.len())
        );
    }
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "hello=world").expect("write");
    let output = Command::new(cks())
        .arg("plan")
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a Chargify webhook body"));
}

/// `webhooks` signup webhooks of customer `customer`, ids `<customer><n>` from `first`.
fn customer_webhooks(customer: u32, first: u32, webhooks: u32) -> Vec<(String, String)> {
    (first..first + webhooks)
        .map(|n| {
            let id = format!("{customer}{n:04}");
            let customer_id = customer.to_string();
            let email = format!("customer{customer}%40example.com");
            let body = fixtures::derive(
                fixtures::SIGNUP_SUCCESS,
                &id,
                "signup_success",
                &[
                    ("payload[subscription][customer][id]", &customer_id),
                    ("payload[subscription][customer][email]", &email),
                    ("payload[subscription][id]", &customer_id),
                ],
            );
            (id, body)
        })
        .collect()
}

async fn post_all(server: &Server, webhooks: &[(String, String)]) {
    for (id, body) in webhooks {
        let signature = sign(KEY, body.as_bytes());
        let (status, response) = http_request(
            server.port,
            "POST",
            PATH,
            &[(SIGNATURE_HEADER, signature.as_str())],
            body.as_bytes(),
        )
        .await
        .expect("request");
        assert_eq!(status, 200, "{id}: {response}");
    }
}

/// The ids of the webhooks serve reported processed, in order, with their outcome.
fn processed(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.strip_prefix("processed webhook "))
        .filter_map(|rest| {
            let (id, rest) = rest.split_once(' ')?;
            let (_, outcome) = rest.split_once(": ")?;
            Some((id.to_owned(), outcome.to_owned()))
        })
        .collect()
}

/// Waits (at most 120 s, polling) until `done` holds for the webhooks processed so far;
/// returns them and how long it took.
async fn processed_when(
    server: &Server,
    done: impl Fn(&[(String, String)]) -> bool,
) -> (Vec<(String, String)>, Duration) {
    let started = Instant::now();
    loop {
        let seen = processed(&server.stderr());
        if done(&seen) {
            return (seen, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "waited 120 s; stderr:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One customer's Keap calls go wrong while the others' do not: first one new customer's
/// calls hang (a slow answer that ends when the test says), then every call of another new
/// customer gets a spike-arrest 429 for as long as the burst lasts. A new customer's first
/// call carries its email (it is looked up or created by email), so matching the email holds
/// the customer. Each time serve's other workers keep applying the other customers'
/// webhooks, and the held customer's webhooks are applied, in order, once its trouble ends.
/// Prints the throughput of the other customers without and during each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customers_slow_or_throttled_keap_calls_hold_only_that_customer() {
    const OTHERS: u32 = 8;
    const EACH: u32 = 5;
    const SLOW_EMAIL: &str = "customer9@example.com";
    const THROTTLED_EMAIL: &str = "customer10@example.com";
    let keap = KeapStandIn::start().await;
    let rules = shared::rules::RuleSet::default_rules().expect("rules");
    keap.add_custom_fields(rules.custom_field_labels(), 100);
    // A per-minute budget that the test's few hundred calls never bring low enough for the
    // client to pace itself: the figures compare the held customer's trouble alone.
    keap.state().minute_budget = (1_000_000, 1_000_000);
    let dir = tempfile_dir("held");
    let base_url = keap.base_url();
    let server = Server::start_with(
        &dir,
        &dir.join("local.sqlite3"),
        free_port(),
        "1",
        None,
        &[
            ("KEAP_API_KEY", "sak-serve"),
            ("KEAP_BASE_URL", base_url.as_str()),
            ("KEAP_REQUESTS_PER_SECOND", "200"),
        ],
    );
    assert!(
        server.stderr().contains("Workers: 4"),
        "{}",
        server.stderr()
    );
    let others = |round: u32| -> Vec<(String, String)> {
        let per: Vec<Vec<(String, String)>> = (1..=OTHERS)
            .map(|c| customer_webhooks(c, round * EACH, EACH))
            .collect();
        // Interleaved, as customers' webhooks arrive.
        (0..EACH as usize)
            .flat_map(|i| per.iter().map(move |w| w[i].clone()))
            .collect()
    };
    let slow = customer_webhooks(9, 1, 1);
    let throttled = customer_webhooks(10, 1, 4);
    let held_ids: Vec<String> = slow
        .iter()
        .chain(&throttled)
        .map(|(id, _)| id.clone())
        .collect();
    let is_held = |id: &str| held_ids.iter().any(|h| h == id);
    // Applied, or applied as stale (an older state than one already applied).
    let done = |outcome: &str| outcome == "applied" || outcome == "stale";
    let others_done = |seen: &[(String, String)]| {
        seen.iter()
            .filter(|(id, outcome)| !is_held(id) && done(outcome))
            .count()
    };
    let held_done = |seen: &[(String, String)]| -> Vec<String> {
        seen.iter()
            .filter(|(id, outcome)| is_held(id) && done(outcome))
            .map(|(id, _)| id.clone())
            .collect()
    };

    // Nothing wrong.
    let calm = others(1);
    let started = Instant::now();
    post_all(&server, &calm).await;
    processed_when(&server, |seen| others_done(seen) >= calm.len()).await;
    let calm_rate = calm.len() as f64 / started.elapsed().as_secs_f64();

    // The held customer's calls hang; its webhook arrives first, so it has a worker.
    keap.state()
        .sticky_faults
        .push((SLOW_EMAIL.into(), Fault::Slow(Duration::from_secs(90))));
    let round = others(2);
    let started = Instant::now();
    post_all(&server, &slow).await;
    post_all(&server, &round).await;
    let target = calm.len() + round.len();
    let (seen, _) = processed_when(&server, |seen| others_done(seen) >= target).await;
    let slow_rate = round.len() as f64 / started.elapsed().as_secs_f64();
    assert!(held_done(&seen).is_empty(), "{seen:?}");
    // Still its first call: it hangs up to the client's 20 s request timeout, and a single
    // worker would have had to give up on it (more calls) before serving anyone else.
    let held_calls = keap
        .state()
        .calls
        .iter()
        .filter(|c| {
            c.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(SLOW_EMAIL))
                || c.query
                    .as_deref()
                    .is_some_and(|q| q.contains("customer9%40example.com"))
        })
        .count();
    assert_eq!(
        held_calls, 1,
        "the others were all applied during the held customer's first Keap call"
    );
    keap.state().sticky_faults.clear();
    processed_when(&server, |seen| !held_done(seen).is_empty()).await;

    // A 429 burst on the held customer's calls.
    keap.state()
        .sticky_faults
        .push((THROTTLED_EMAIL.into(), Fault::SpikeArrest));
    let round = others(3);
    let started = Instant::now();
    post_all(&server, &throttled).await;
    post_all(&server, &round).await;
    let target = target + round.len();
    let (seen, _) = processed_when(&server, |seen| others_done(seen) >= target).await;
    let burst_rate = round.len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        held_done(&seen),
        held_ids[..slow.len()],
        "while the burst lasts the throttled customer applies nothing"
    );
    assert!(keap.state().throttled > 0, "the burst was served");
    println!(
        "serve, 4 workers, other customers' webhooks/s: {calm_rate:.1} with nothing wrong, {slow_rate:.1} while one customer's Keap calls hang, {burst_rate:.1} during a 429 burst on one customer"
    );

    // The burst ends: the held customer's webhooks are applied, in the order sent.
    keap.state().sticky_faults.clear();
    let (seen, _) = processed_when(&server, |seen| held_done(seen).len() >= held_ids.len()).await;
    assert_eq!(held_done(&seen), held_ids);
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

fn wait_for_file(path: &Path, text: &str) {
    let started = Instant::now();
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{text:?} never in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh directory under the system temp dir for one test's database and logs.
fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cks-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn serve_refuses_the_demo_key_on_a_non_loopback_address() {
    let dir = std::env::temp_dir().join(format!("cks-serve-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let output = Command::new(cks())
        .args(["serve", "--listen", "0.0.0.0:0", "--db"])
        .arg(dir.join("local.sqlite3"))
        .env_remove("CHARGIFY_SHARED_KEYS")
        .env_remove("KEAP_API_KEY")
        .env_remove("KEAP_API_KEY_SECRET_ARN")
        .env_remove("KEAP_CLIENT_ID")
        .env_remove("KEAP_OAUTH_CLIENT_SECRET_ARN")
        .stdin(Stdio::null())
        .output()
        .expect("cks runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 with the demo key"),
        "{stderr}"
    );
    // It stopped before opening anything.
    assert!(!dir.join("local.sqlite3").exists());
}
