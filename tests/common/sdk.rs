//! The stock OpenAI Python SDK, driven against a gateway.
//!
//! Uses the Python named by `SWITCHYARD_TEST_PYTHON` if set (it must have the `openai`
//! package); otherwise `python3` with the pinned SDK from tests/sdk/requirements.txt,
//! which the first run installs with pip into the target directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::TestGateway;

/// The Python to run and the directory to add to its path (installed once per process).
fn python() -> &'static (String, Option<PathBuf>) {
    static PYTHON: OnceLock<(String, Option<PathBuf>)> = OnceLock::new();
    PYTHON.get_or_init(find_or_install)
}

fn find_or_install() -> (String, Option<PathBuf>) {
    if let Ok(python) = std::env::var("SWITCHYARD_TEST_PYTHON") {
        return (python, None);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-sdk");
    if !dir.join(".complete").exists() {
        // Install beside, then rename into place: parallel test processes never see a
        // half-installed SDK, and the loser of a race just uses the winner's copy.
        let staging = dir.with_extension(format!("staging-{}", std::process::id()));
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&staging)
            .args(["-r", "tests/sdk/requirements.txt"])
            .status()
            .expect("python3 with pip is installed");
        assert!(
            status.success(),
            "pip could not install tests/sdk/requirements.txt"
        );
        std::fs::write(staging.join(".complete"), "").unwrap();
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    ("python3".to_owned(), Some(dir))
}

/// Runs tests/sdk/openai_sdk_check.py against `gateway`: chat (streamed and not), models,
/// embeddings and errors through the stock OpenAI Python SDK.
pub async fn openai_sdk_check(gateway: &TestGateway, chat_model: &str, embedding_model: &str) {
    let args = [chat_model, embedding_model, super::TEST_KEY];
    run("tests/sdk/openai_sdk_check.py", gateway, &args).await;
}

/// Runs tests/sdk/openai_sdk_schemas_check.py against `gateway`: a strict tool and a
/// response_format built by the SDK from a pydantic model, on `chat_model`.
pub async fn openai_sdk_schemas_check(gateway: &TestGateway, chat_model: &str) {
    run(
        "tests/sdk/openai_sdk_schemas_check.py",
        gateway,
        &[chat_model, super::TEST_KEY],
    )
    .await;
}

/// Runs tests/sdk/openai_sdk_resumed_stream_check.py against `gateway`: a stream of
/// `chat_model` that breaks and is resumed reads whole through the SDK.
pub async fn openai_sdk_resumed_stream_check(gateway: &TestGateway, chat_model: &str) {
    run(
        "tests/sdk/openai_sdk_resumed_stream_check.py",
        gateway,
        &[chat_model, super::TEST_KEY],
    )
    .await;
}

/// Runs `script` with the gateway's `/v1` URL and `args`; it must exit 0 printing `ok`.
async fn run(script: &'static str, gateway: &TestGateway, args: &[&str]) {
    let base_url = format!("{}/v1", gateway.url);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        let (python, path) = python();
        let mut command = Command::new(python);
        if let Some(path) = path {
            command.env("PYTHONPATH", path);
        }
        command.arg(script).arg(&base_url).args(&args).output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok"));
}
