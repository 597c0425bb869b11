//! A `metrics` recorder for unit tests: it keeps each `(name, labels)` key with its sum (counters)
//! or last value (gauges, histograms), so a test sees exactly the label sets the recording
//! functions produce, which the EMF recorder turns into dimensions. Used with
//! `metrics::with_local_recorder`, so tests running in parallel do not share it.

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Seen = Arc<Mutex<BTreeMap<(String, Vec<(String, String)>), f64>>>;

#[derive(Default)]
pub(crate) struct Capture {
    seen: Seen,
}

struct Slot {
    key: (String, Vec<(String, String)>),
    seen: Seen,
    add: bool,
}

impl Slot {
    fn put(&self, value: f64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(self.key.clone()).or_insert(0.0);
        *entry = if self.add { *entry + value } else { value };
    }
}
impl CounterFn for Slot {
    fn increment(&self, value: u64) {
        self.put(value as f64)
    }
    fn absolute(&self, value: u64) {
        self.put(value as f64)
    }
}
impl GaugeFn for Slot {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.put(value)
    }
}
impl HistogramFn for Slot {
    fn record(&self, value: f64) {
        self.put(value)
    }
}

impl Capture {
    fn slot(&self, key: &Key, add: bool) -> Arc<Slot> {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        Arc::new(Slot {
            key: (key.name().to_owned(), labels),
            seen: Arc::clone(&self.seen),
            add,
        })
    }
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.seen
            .lock()
            .ok()?
            .get(&(name.to_owned(), labels))
            .copied()
    }
    pub(crate) fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key, true))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key, false))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.slot(key, false))
    }
}
