//! A built function under `cargo lambda watch` (a local Lambda Runtime API on 127.0.0.1), for
//! the binary tests. Needs `cargo lambda` on PATH; `tests/run.sh` provides it.

use crate::repo_root;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

/// The watcher and the function it runs; both are killed when this is dropped, pass or fail.
pub struct LambdaWatch {
    child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        // cargo lambda runs the function as a child process in its own group.
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How [`LambdaWatch::invoke`] reports an invoke cut off while the watcher may still be
/// building the function.
const STILL_STARTING: &str = "still starting";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl LambdaWatch {
    /// Starts `cargo lambda watch` for `package`'s binary of the same name on a free port,
    /// with `remove` taken out of and `env` added to the environment, and dummy AWS
    /// credentials (the emulators check none).
    pub fn start(package: &str, env: &[(&str, &str)], remove: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = std::env::temp_dir().join(format!("cargo-lambda-watch-{package}-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new("cargo");
        for name in remove {
            command.env_remove(name);
        }
        command
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .current_dir(repo_root())
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--quiet",
                // The invocation deadline the function sees (and how long an invoke waits).
                "--timeout",
                "60",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .args(["--package", package, "--bin", package])
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("`cargo lambda` is on PATH (run the tests with `bash tests/run.sh`)");
        Self { child, port, log }
    }

    /// `cargo lambda invoke <function> --data-file <event>`: the function's JSON answer, or
    /// the error text when the invocation failed.
    pub fn invoke(&self, function: &str, event: &str) -> Result<serde_json::Value, String> {
        // Bounded: a function that failed to start never answers.
        let output = Command::new("timeout")
            .current_dir(repo_root())
            .args(["120", "cargo", "lambda", "invoke", "-A", "127.0.0.1", "-P"])
            .arg(self.port.to_string())
            .args(["--output-format", "json", "--data-file", event, function])
            .stdin(Stdio::null())
            .output()
            .expect("cargo lambda invoke runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.code() == Some(124) {
            // The watcher holds an invoke while it compiles; a cold build can outlast one.
            return Err(format!("{STILL_STARTING}: no answer within 120 s"));
        }
        if !output.status.success() {
            return Err(format!(
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("invoke {event} printed {stdout}: {e}"))
    }

    /// [`Self::invoke`], retried while the watcher is still building and starting the binary
    /// (bounded: a first build can take minutes). Blocks its thread while each invoke runs, so
    /// a stand-in the function calls must be served by another (a multi-threaded test).
    pub async fn invoke_when_ready(
        &self,
        function: &str,
        event: &str,
    ) -> Result<serde_json::Value, String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(400);
        loop {
            let result = self.invoke(function, event);
            let starting = matches!(&result, Err(e) if e.contains("connect") || e.contains("Connection refused") || e.contains("error sending request") || e.starts_with(STILL_STARTING));
            if !starting || std::time::Instant::now() > deadline {
                return result;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The function's own JSON log lines (tracing's, with a `level`), in order: not the
    /// watcher's text, nor the EMF documents.
    pub fn function_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
            .filter(|line| line.get("level").is_some() && line.get("message").is_some())
            .collect()
    }

    /// Checks that the function's lines carry their invocation, as shared::telemetry writes
    /// them: every line names `function` and says whether it belongs to the cold start; the
    /// lines before the first invocation (the cold start's, `ready` among them, and the
    /// runtime's own) say `cold_start: true` and carry no request id; every line from the first
    /// invocation on carries its invocation's request id and X-Ray trace id; the first
    /// invocation's lines say
    /// `cold_start: true` and every later one's `false`. Returns the request ids, in the order
    /// they first appear.
    pub fn assert_lines_carry_the_invocation(&self, function: &str, ready: &str) -> Vec<String> {
        let lines = self.function_lines();
        let first_invocation = lines
            .iter()
            .position(|l| l.get("function_request_id").is_some())
            .unwrap_or_else(|| panic!("no line carries a request id:\n{}", self.log_text()));
        assert!(
            lines[..first_invocation]
                .iter()
                .any(|l| l["message"] == ready),
            "no `{ready}` line before the first invocation:\n{}",
            self.log_text()
        );
        let mut ids: Vec<String> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["function_name"], function, "{line}");
            let cold = line["cold_start"]
                .as_bool()
                .unwrap_or_else(|| panic!("no cold_start flag: {line}"));
            if i < first_invocation {
                assert!(
                    cold,
                    "a line before the first invocation says it is not: {line}"
                );
                continue;
            }
            let id = line["function_request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a line of an invocation has no request id: {line}"));
            if !ids.iter().any(|seen| seen == id) {
                ids.push(id.to_owned());
            }
            // cargo lambda, like Lambda, sends each invocation an X-Ray trace header.
            assert!(
                line["xray_trace_id"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Root=1-")),
                "a line of an invocation has no trace id: {line}"
            );
            let first = ids[0] == id;
            assert_eq!(
                cold, first,
                "only the first invocation is the cold start: {line}"
            );
        }
        assert!(!ids.is_empty(), "no invocation logged a line");
        ids
    }
}
