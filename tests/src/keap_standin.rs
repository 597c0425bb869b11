//! A Keap REST v1 stand-in on 127.0.0.1 for the tests: stateful (contacts, their tags,
//! tags, companies, goals achieved, notes), strict (any request the vendored spec would refuse
//! gets 400, see [`KeapContract`]), and able to inject Keap's failures (each kind of 429 with
//! Keap's real headers and bodies, 401, 5xx, slow answers), or to enforce Keap's per-key
//! spike arrest ([`State::spike_limit`]). With OAuth it also serves Keap's token endpoint at
//! `/token` ([`token`]) and accepts only the bearer tokens it issued.

pub mod token;

use crate::keap_contract::{KeapContract, Violation};
use crate::loopback::LoopbackServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One injected failure, served instead of the next request's real answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    SpikeArrest,
    MinuteThrottle,
    DailyQuota,
    Unauthorized,
    Status(u16),
    /// Answer normally, but only after this long.
    Slow(Duration),
}

/// A request the stand-in saw.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    /// The operation it matched, or why it was refused.
    pub outcome: Result<String, Violation>,
    pub api_key: Option<String>,
    pub bearer: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// Everything the stand-in knows. Tests read it through [`KeapStandIn::state`].
#[derive(Debug, Default)]
pub struct State {
    pub contacts: BTreeMap<i64, Map<String, Value>>,
    pub contact_tags: BTreeMap<i64, BTreeSet<i64>>,
    pub tags: BTreeMap<i64, Value>,
    pub companies: BTreeMap<i64, Value>,
    /// `(integration, call_name, contact_id)` per achieved goal.
    pub goals: Vec<(String, String, i64)>,
    pub notes: Vec<Value>,
    /// Custom fields of the contact model: `(id, label)`.
    pub custom_fields: Vec<(i64, String)>,
    /// API goals that a published campaign listens for: `(integration, call_name)`.
    pub campaign_goals: Vec<(String, String)>,
    pub calls: Vec<Call>,
    /// Calls that changed nothing: an apply of tags the contact had, a removal of tags it
    /// lacked, a contact write that changed no stored value. A client that knows what Keap
    /// holds makes none.
    pub noop_calls: Vec<String>,
    pub faults: VecDeque<Fault>,
    /// `(method, path fragment, fault)`: served to the next request of that method whose
    /// path contains the fragment, whatever comes before it.
    pub targeted_faults: Vec<(String, String, Fault)>,
    /// `(text, fault)`: served to every request whose body or a decoded query value contains
    /// the text (one customer's email, say), until removed: a burst that hits one customer's
    /// calls. A sticky [`Fault::Slow`] holds each answer until the entry is removed (or for
    /// its duration at most), so a test decides when the slow calls end.
    pub sticky_faults: Vec<(String, Fault)>,
    /// Rate-limit mode: a credential that already made this many calls in the last second
    /// gets Keap's spike-arrest 429 instead of an answer. Refused calls do not count.
    pub spike_limit: Option<usize>,
    /// Arrival times of the calls each credential made in the last second.
    spike_windows: HashMap<String, VecDeque<Instant>>,
    pub throttled: u32,
    /// Per-minute throttle reported in headers: `(limit, available)`.
    pub minute_budget: (u64, u64),
    /// Daily quota reported in headers: `(limit, available)`.
    pub daily_budget: (u64, u64),
    /// When the daily quota resets, as Keap reports it (`x-keap-product-quota-expiry-time`,
    /// epoch milliseconds).
    pub quota_expiry_ms: u64,
    /// The OAuth app, its tokens and how often they were refreshed.
    pub oauth: token::OAuthState,
    /// Primary email → contact id, kept by the handlers that write contacts, so an upsert
    /// finds its contact without scanning them all (the backfill test upserts 10,000). A hit
    /// is checked against the contact; contacts are written only through the handlers.
    email_index: HashMap<String, i64>,
    next_id: i64,
}

impl State {
    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether `credential` is over [`State::spike_limit`] at `now`; a call let through
    /// is counted in its window.
    fn spike_arrested(&mut self, credential: &str, now: Instant) -> bool {
        let Some(limit) = self.spike_limit else {
            return false;
        };
        let window = self.spike_windows.entry(credential.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= limit {
            return true;
        }
        window.push_back(now);
        false
    }
}

pub struct KeapStandIn {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: LoopbackServer,
}

impl KeapStandIn {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            minute_budget: (240, 240),
            daily_budget: (30_000, 30_000),
            quota_expiry_ms: 1_795_824_000_000,
            next_id: 1000,
            ..State::default()
        }));
        let contract = Arc::new(KeapContract::load());
        let shared = Arc::clone(&state);
        let server = LoopbackServer::start(move |request| {
            let (state, contract) = (Arc::clone(&shared), Arc::clone(&contract));
            async move { serve(&state, &contract, request).await }
        })
        .await;
        Self {
            addr: server.addr,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:<port>/crm/rest`: the base the client appends `/v1/...` to.
    pub fn base_url(&self) -> String {
        format!("http://{}/crm/rest", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Adds custom fields with these labels to the contact model (ids from `first_id`).
    pub fn add_custom_fields(&self, labels: impl IntoIterator<Item = String>, first_id: i64) {
        let mut state = self.state();
        for (i, label) in labels.into_iter().enumerate() {
            state.custom_fields.push((first_id + i as i64, label));
        }
    }

    /// Serves `fault` to the next `method` request whose path contains `path_fragment`.
    pub fn inject_on(&self, method: &str, path_fragment: &str, fault: Fault) {
        self.state()
            .targeted_faults
            .push((method.to_owned(), path_fragment.to_owned(), fault));
    }

    /// Calls that changed nothing (see [`State::noop_calls`]).
    pub fn noop_calls(&self) -> Vec<String> {
        self.state().noop_calls.clone()
    }

    /// Panics, listing them, if any request broke the contract.
    pub fn assert_no_violations(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "requests the spec refuses: {violations:#?}"
        );
    }

    /// Requests the contract refused: a correct client makes none.
    pub fn violations(&self) -> Vec<Call> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.outcome.is_err())
            .cloned()
            .collect()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(
    state: &Mutex<State>,
    contract: &KeapContract,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let full_path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let api_key = header("x-keap-api-key");
    let authorization = header("authorization");
    let bearer = authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if full_path == "/token" {
        return token::serve(
            state,
            &method,
            query.as_deref(),
            authorization.as_deref(),
            &body,
        );
    }
    let path = full_path
        .strip_prefix("/crm/rest")
        .unwrap_or(&full_path)
        .to_owned();
    let outcome = contract
        .check(&method, &path, query.as_deref(), Some(&body))
        .map(str::to_owned);
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    let at = Instant::now();
    // The text of the sticky fault served, if any: a sticky slow answer lasts while it does.
    let mut held_by: Option<String> = None;
    let fault = {
        let mut s = lock(state);
        let credential = api_key
            .clone()
            .or_else(|| bearer.clone())
            .unwrap_or_default();
        let arrested = s.spike_arrested(&credential, at);
        s.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: json_body.clone(),
            outcome: outcome.clone(),
            api_key: api_key.clone(),
            bearer: bearer.clone(),
            at,
        });
        let targeted = s
            .targeted_faults
            .iter()
            .position(|(m, fragment, _)| *m == method && path.contains(fragment.as_str()));
        let body_text = String::from_utf8_lossy(&body);
        let query_values: Vec<String> = query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .map(|p| percent_decode(p.split_once('=').map_or(p, |(_, v)| v)))
            .collect();
        let sticky = s
            .sticky_faults
            .iter()
            .find(|(text, _)| {
                body_text.contains(text.as_str())
                    || query_values.iter().any(|v| v.contains(text.as_str()))
            })
            .cloned();
        if arrested {
            Some(Fault::SpikeArrest)
        } else if let Some((text, fault)) = sticky {
            held_by = Some(text);
            Some(fault)
        } else if let Some(i) = targeted {
            Some(s.targeted_faults.remove(i).2)
        } else {
            s.faults.pop_front()
        }
    };
    if api_key.is_none() && bearer.is_none() {
        return respond(state, 401, json!({"message": "No credentials"}));
    }
    if let Some(token) = &bearer {
        if !lock(state).oauth.access_token_works(token) {
            return token::invalid_access_token(state);
        }
    }
    match fault {
        Some(Fault::Slow(delay)) => match held_by {
            // Held until the test removes the sticky fault, or for `delay` at most.
            Some(text) => {
                let until = Instant::now() + delay;
                while Instant::now() < until
                    && lock(state).sticky_faults.iter().any(|(t, _)| *t == text)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            None => tokio::time::sleep(delay).await,
        },
        Some(other) => return fault_response(state, &other),
        None => {}
    }
    let op = match outcome {
        Ok(op) => op,
        Err(violation) => {
            return respond(
                state,
                400,
                json!({"code": 400, "message": format!("{violation:?}"), "status": "Bad Request"}),
            )
        }
    };
    // `/v1/contacts/12/tags` → ["", "v1", "contacts", "12", "tags"]
    let segments: Vec<&str> = path.split('/').collect();
    let id_at = |i: usize| {
        segments
            .get(i)
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or_default()
    };
    let query_param = |name: &str| {
        query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k == name).then(|| percent_decode(v))
            })
    };
    let body = json_body.unwrap_or(Value::Null);
    // Keap leaves custom fields out of a contact it is asked for unless the request names
    // them in `optional_properties` (comma-separated or repeated); writes answer them.
    let asked_for_custom_fields = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == "optional_properties")
        .any(|(_, v)| {
            percent_decode(v)
                .split(',')
                .any(|p| p.trim() == "custom_fields")
        });
    let read = |s: &State, id: i64, c: &Map<String, Value>| {
        let mut contact = contact_json(s, id, c);
        if !asked_for_custom_fields {
            if let Some(fields) = contact.as_object_mut() {
                fields.remove("custom_fields");
            }
        }
        contact
    };
    let page = |items: Vec<Value>| {
        let limit = query_param("limit").and_then(|l| l.parse().ok());
        let offset = query_param("offset").and_then(|o| o.parse().ok());
        let count = items.len();
        let page: Vec<Value> = items
            .into_iter()
            .skip(offset.unwrap_or(0))
            .take(limit.unwrap_or(1000))
            .collect();
        (page, count)
    };
    let mut s = lock(state);
    let (status, answer) = match op.as_str() {
        "listContactsUsingGET" => {
            let email = query_param("email");
            let contacts: Vec<Value> = s
                .contacts
                .iter()
                .filter(|(_, c)| {
                    email
                        .as_deref()
                        .is_none_or(|e| primary_email(c).as_deref() == Some(e))
                })
                .map(|(id, c)| read(&s, *id, c))
                .collect();
            (200, json!({"contacts": contacts, "count": contacts.len()}))
        }
        "getContactUsingGET" => match s.contacts.get(&id_at(3)) {
            Some(c) => (200, read(&s, id_at(3), c)),
            None => (404, json!({"message": "Contact not found"})),
        },
        "createOrUpdateContactUsingPUT" | "updatePropertiesOnContactUsingPATCH"
            if unknown_company(&s, &body) =>
        {
            (400, json!({"message": "Company not found"}))
        }
        "createOrUpdateContactUsingPUT" => upsert_contact(&mut s, &body),
        "updatePropertiesOnContactUsingPATCH" => {
            let id = id_at(3);
            match s.contacts.get(&id).cloned() {
                Some(mut contact) => {
                    let before = contact.clone();
                    merge_contact(&mut contact, &body);
                    if contact == before {
                        s.noop_calls.push(format!("PATCH /v1/contacts/{id}"));
                    }
                    if let Some(email) = primary_email(&contact) {
                        s.email_index.insert(email, id);
                    }
                    s.contacts.insert(id, contact.clone());
                    (200, contact_json(&s, id, &contact))
                }
                None => (404, json!({"message": "Contact not found"})),
            }
        }
        "retrieveContactModelUsingGET" => {
            let fields: Vec<Value> = s
                .custom_fields
                .iter()
                .map(|(id, label)| json!({"id": id, "label": label, "field_type": "Text", "record_type": "CONTACT"}))
                .collect();
            (
                200,
                json!({"custom_fields": fields, "optional_properties": ["custom_fields"]}),
            )
        }
        "listTagsUsingGET" => {
            let name = query_param("name");
            let (tags, count) = page(
                s.tags
                    .values()
                    .filter(|t| name.as_deref().is_none_or(|n| t["name"] == n))
                    .cloned()
                    .collect(),
            );
            (200, json!({"tags": tags, "count": count}))
        }
        "listCompaniesUsingGET" => {
            // The spec does not say how `company_name` matches; this matches loosely
            // (case-insensitive substring) so that a client must keep exact names itself.
            let name = query_param("company_name").map(|n| n.to_lowercase());
            let (companies, count) = page(
                s.companies
                    .values()
                    .filter(|c| {
                        name.as_deref().is_none_or(|n| {
                            c["company_name"]
                                .as_str()
                                .is_some_and(|have| have.to_lowercase().contains(n))
                        })
                    })
                    .cloned()
                    .collect(),
            );
            (200, json!({"companies": companies, "count": count}))
        }
        "createCompanyUsingPOST" => {
            let id = s.next_id();
            let mut company = body.clone();
            company["id"] = json!(id);
            s.companies.insert(id, company.clone());
            (201, company)
        }
        "createTagUsingPOST" => {
            let id = s.next_id();
            let tag = json!({"id": id, "name": body["name"], "description": body.get("description").cloned().unwrap_or(Value::Null)});
            s.tags.insert(id, tag.clone());
            (200, tag)
        }
        "applyTagsToContactIdUsingPOST" => {
            let contact = id_at(3);
            let ids = integers(&body["tagIds"]);
            let mut results = Map::new();
            for tag in ids {
                let result = apply_tag(&mut s, contact, tag);
                results.insert(tag.to_string(), json!(result));
            }
            if results.values().all(|r| r == "DUPLICATE") {
                s.noop_calls
                    .push(format!("POST /v1/contacts/{contact}/tags: all present"));
            }
            (200, Value::Object(results))
        }
        "removeTagsFromContactUsingDELETE" => {
            let contact = id_at(3);
            let ids: Vec<i64> = query_param("ids")
                .unwrap_or_default()
                .split(',')
                .filter_map(|i| i.trim().parse().ok())
                .collect();
            let removed = s
                .contact_tags
                .get_mut(&contact)
                .map(|tags| ids.iter().filter(|id| tags.remove(id)).count())
                .unwrap_or(0);
            if removed == 0 {
                s.noop_calls
                    .push(format!("DELETE /v1/contacts/{contact}/tags: none present"));
            }
            (204, Value::Null)
        }
        "removeTagsFromContactUsingDELETE_1" => {
            let (contact, tag) = (id_at(3), id_at(5));
            let removed = s
                .contact_tags
                .get_mut(&contact)
                .is_some_and(|tags| tags.remove(&tag));
            if !removed {
                s.noop_calls.push(format!(
                    "DELETE /v1/contacts/{contact}/tags/{tag}: not present"
                ));
            }
            (204, Value::Null)
        }
        "applyTagToContactIdsUsingPOST" => {
            let tag = id_at(3);
            let ids = integers(&body["ids"]);
            let mut results = Map::new();
            for contact in ids {
                let result = apply_tag(&mut s, contact, tag);
                results.insert(contact.to_string(), json!(result));
            }
            if results.values().all(|r| r == "DUPLICATE") {
                s.noop_calls
                    .push(format!("POST /v1/tags/{tag}/contacts: all had it"));
            }
            (200, Value::Object(results))
        }
        "removeTagFromContactIdsUsingDELETE" => {
            let tag = id_at(3);
            // `ids=1&ids=2`, as the spec's exploded form array says.
            let ids: Vec<i64> = query
                .as_deref()
                .unwrap_or_default()
                .split('&')
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| *k == "ids")
                .filter_map(|(_, v)| percent_decode(v).trim().parse().ok())
                .collect();
            let mut removed = 0;
            for contact in ids {
                if let Some(tags) = s.contact_tags.get_mut(&contact) {
                    removed += usize::from(tags.remove(&tag));
                }
            }
            if removed == 0 {
                s.noop_calls
                    .push(format!("DELETE /v1/tags/{tag}/contacts: none had it"));
            }
            (204, Value::Null)
        }
        "createAchieveApiGoalEventUsingPOST" => {
            let (integration, call_name) = (segments[4].to_owned(), segments[5].to_owned());
            let contact = body["contact_id"].as_i64().unwrap_or_default();
            s.goals
                .push((integration.clone(), call_name.clone(), contact));
            let hits: Vec<Value> = s
                .campaign_goals
                .iter()
                .enumerate()
                .filter(|(_, g)| g.0 == integration && g.1 == call_name)
                .map(|(i, _)| json!({"campaign_id": 500 + i, "goal_id": 900 + i, "success": true, "message": "Goal achieved"}))
                .collect();
            (201, Value::Array(hits))
        }
        "createNoteUsingPOST" => {
            let id = s.next_id();
            let mut note = body.clone();
            note["id"] = json!(id);
            s.notes.push(note.clone());
            (201, note)
        }
        other => (
            500,
            json!({"message": format!("stand-in has no handler for {other}")}),
        ),
    };
    drop(s);
    respond(state, status, answer)
}

fn upsert_contact(s: &mut State, body: &Value) -> (u16, Value) {
    let email = body["email_addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["field"] == "EMAIL1"))
        .and_then(|e| e["email"].as_str())
        .map(str::to_owned);
    let existing = match (body["duplicate_option"].as_str(), &email) {
        (Some("Email"), Some(email)) => s.email_index.get(email).copied().filter(|id| {
            s.contacts
                .get(id)
                .is_some_and(|c| primary_email(c).as_deref() == Some(email.as_str()))
        }),
        _ => None,
    };
    if existing.is_none() && email.is_none() && body.get("phone_numbers").is_none() {
        return (
            400,
            json!({"message": "A new contact needs email_addresses or phone_numbers"}),
        );
    }
    let id = existing.unwrap_or_else(|| s.next_id());
    let mut contact = s.contacts.get(&id).cloned().unwrap_or_default();
    let before = existing.map(|_| contact.clone());
    merge_contact(&mut contact, body);
    if before.as_ref() == Some(&contact) {
        s.noop_calls
            .push(format!("PUT /v1/contacts: contact {id} unchanged"));
    }
    if let Some(email) = primary_email(&contact) {
        s.email_index.insert(email, id);
    }
    s.contacts.insert(id, contact.clone());
    (200, contact_json(s, id, &contact))
}

/// "Updates a contact with only the values provided": top-level fields replace, custom
/// fields merge by id.
fn merge_contact(contact: &mut Map<String, Value>, body: &Value) {
    let Some(fields) = body.as_object() else {
        return;
    };
    for (key, value) in fields {
        match key.as_str() {
            "duplicate_option" => {}
            "custom_fields" => {
                let mut merged: BTreeMap<i64, Value> = contact
                    .get("custom_fields")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| Some((f["id"].as_i64()?, f.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                for field in value.as_array().into_iter().flatten() {
                    if let Some(id) = field["id"].as_i64() {
                        merged.insert(id, field.clone());
                    }
                }
                contact.insert(key.clone(), Value::Array(merged.into_values().collect()));
            }
            _ => {
                contact.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A contact body naming a company id the account does not have (Keap links contacts to
/// existing company records only).
fn unknown_company(s: &State, body: &Value) -> bool {
    body.get("company")
        .and_then(|c| c.get("id"))
        .is_some_and(|id| id.as_i64().is_none_or(|id| !s.companies.contains_key(&id)))
}

fn primary_email(contact: &Map<String, Value>) -> Option<String> {
    contact
        .get("email_addresses")?
        .as_array()?
        .iter()
        .find(|e| e["field"] == "EMAIL1")?["email"]
        .as_str()
        .map(str::to_owned)
}

fn contact_json(s: &State, id: i64, contact: &Map<String, Value>) -> Value {
    let mut out = contact.clone();
    out.insert("id".into(), json!(id));
    let tags: Vec<i64> = s
        .contact_tags
        .get(&id)
        .map(|t| t.iter().copied().collect())
        .unwrap_or_default();
    out.insert("tag_ids".into(), json!(tags));
    // Keap answers the company reference with its name (`CompanyReference`).
    if let Some(id) = contact.get("company").and_then(|c| c["id"].as_i64()) {
        let name = s.companies.get(&id).map(|c| c["company_name"].clone());
        out.insert(
            "company".into(),
            json!({"id": id, "company_name": name.unwrap_or(Value::Null)}),
        );
    }
    Value::Object(out)
}

/// The integers of a JSON array (`tagIds`, `ids`); anything else is none.
fn integers(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn apply_tag(s: &mut State, contact: i64, tag: i64) -> &'static str {
    if !s.contacts.contains_key(&contact) {
        "CONTACT_NOT_FOUND"
    } else if !s.tags.contains_key(&tag) {
        "TAG_ID_NOT_FOUND"
    } else if s.contact_tags.entry(contact).or_default().insert(tag) {
        "SUCCESS"
    } else {
        "DUPLICATE"
    }
}

fn fault_response(state: &Mutex<State>, fault: &Fault) -> Response<Full<Bytes>> {
    match fault {
        Fault::SpikeArrest => {
            lock(state).throttled += 1;
            respond(
                state,
                429,
                json!({"fault": {"faultstring": "Spike arrest violation. Allowed rate : MessageRate{messagesPerPeriod=10, periodInMicroseconds=1000000, maxBurstMessageCount=1.0}", "detail": {"errorcode": "policies.ratelimit.SpikeArrestViolation"}}}),
            )
        }
        Fault::MinuteThrottle => {
            let mut s = lock(state);
            s.throttled += 1;
            s.minute_budget.1 = 0;
            drop(s);
            respond(
                state,
                429,
                json!({"code": "429", "message": "Quota Exceeded", "status": "Request Throttled", "details": null}),
            )
        }
        Fault::DailyQuota => {
            let mut s = lock(state);
            s.throttled += 1;
            s.daily_budget.1 = 0;
            drop(s);
            respond(
                state,
                429,
                json!({"fault": {"faultstring": "Rate limit quota violation. Quota limit exceeded. Identifier : standin", "detail": {"errorcode": "policies.ratelimit.QuotaViolation"}}}),
            )
        }
        Fault::Unauthorized => token::invalid_access_token(state),
        Fault::Status(status) => respond(state, *status, json!({"message": "injected failure"})),
        Fault::Slow(_) => respond(state, 500, Value::Null),
    }
}

/// Every answer carries Keap's throttle headers and an `x-request-id`.
fn respond(state: &Mutex<State>, status: u16, body: Value) -> Response<Full<Bytes>> {
    let (minute, daily, request, expiry) = {
        let mut s = lock(state);
        if status != 429 {
            s.minute_budget.1 = s.minute_budget.1.saturating_sub(1);
            s.daily_budget.1 = s.daily_budget.1.saturating_sub(1);
        }
        (
            s.minute_budget,
            s.daily_budget,
            s.calls.len(),
            s.quota_expiry_ms,
        )
    };
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("x-request-id", format!("standin-{request}"))
        .header("x-keap-product-throttle-limit", minute.0.to_string())
        .header("x-keap-product-throttle-available", minute.1.to_string())
        .header("x-keap-product-throttle-time-unit", "minute")
        .header("x-keap-product-quota-limit", daily.0.to_string())
        .header("x-keap-product-quota-available", daily.1.to_string())
        .header("x-keap-product-quota-time-unit", "day")
        .header("x-keap-product-quota-expiry-time", expiry.to_string());
    if !text.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn percent_decode(value: &str) -> String {
    shared::chargify::FormBody::parse(format!("v={value}").as_bytes())
        .ok()
        .and_then(|f| f.get("v").map(str::to_owned))
        .unwrap_or_default()
}
