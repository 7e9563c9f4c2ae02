//! Reading the hub's answers about a job. Their shape is not documented, so both readers
//! accept what the hub, Kubernetes and common tools say, and anything else is shown as it came.

use pipeforce::hub::Value;

/// How far a job is, as read from a `service.job.status` answer.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Succeeded,
    Failed,
    /// Not finished, or not recognisably so: what the hub said, shortened.
    Running(String),
}

/// Reads a `service.job.status` answer liberally, because its shape is not documented: a word
/// (`Succeeded`, `completed`, `FAILED`, `running`, ...), or JSON whose `status`, `state`,
/// `phase` or `result` holds such a word (nested objects too), Kubernetes job counters
/// (`succeeded`, `failed`, `active`), Kubernetes conditions (`Complete`/`Failed` = `True`), or
/// an `exitCode`. A failure anywhere wins over a success; anything else is still running.
pub fn job_state(answer: &str) -> JobState {
    let (signals, said) = match answer.parse::<Value>() {
        Ok(value) => {
            let mut signals = Vec::new();
            collect_signals(&value, &mut signals);
            (signals, value.to_string())
        }
        Err(_) => {
            let text = answer.trim().to_owned();
            let signals = text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter_map(word_state)
                .collect();
            (signals, text)
        }
    };
    if signals.contains(&Finished::Failed) {
        JobState::Failed
    } else if signals.contains(&Finished::Succeeded) {
        JobState::Succeeded
    } else {
        JobState::Running(shortened(&said, 200))
    }
}

#[derive(Debug, PartialEq)]
enum Finished {
    Succeeded,
    Failed,
}

fn collect_signals(value: &Value, signals: &mut Vec<Finished>) {
    match value {
        Value::String(word) => signals.extend(word_state(word)),
        Value::Array(items) => items.iter().for_each(|item| collect_signals(item, signals)),
        Value::Object(fields) => {
            let field = |wanted: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(wanted))
                    .map(|(_, value)| value)
            };
            let count = |wanted: &str| match field(wanted) {
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                Some(Value::Bool(true)) => 1,
                _ => 0,
            };
            for key in ["status", "state", "phase", "result", "job", "data"] {
                if let Some(value) = field(key) {
                    collect_signals(value, signals);
                }
            }
            // Kubernetes Job status: counters of pods, and conditions.
            if count("active") == 0 {
                if count("failed") > 0 {
                    signals.push(Finished::Failed);
                } else if count("succeeded") > 0 {
                    signals.push(Finished::Succeeded);
                }
            }
            if let Some(Value::Array(conditions)) = field("conditions") {
                for condition in conditions {
                    let is_true = condition
                        .get("status")
                        .and_then(Value::as_str)
                        .is_some_and(|status| status.eq_ignore_ascii_case("true"));
                    match condition.get("type").and_then(Value::as_str) {
                        Some("Complete" | "SuccessCriteriaMet") if is_true => {
                            signals.push(Finished::Succeeded);
                        }
                        Some("Failed" | "FailureTarget") if is_true => {
                            signals.push(Finished::Failed);
                        }
                        _ => {}
                    }
                }
            }
            let exit_code = field("exitCode").or_else(|| field("exit_code"));
            if let Some(code) = exit_code.and_then(Value::as_i64) {
                signals.push(if code == 0 {
                    Finished::Succeeded
                } else {
                    Finished::Failed
                });
            }
        }
        _ => {}
    }
}

/// Whether one word says that a job has finished, and how.
fn word_state(word: &str) -> Option<Finished> {
    match word.trim().to_ascii_lowercase().as_str() {
        "succeeded" | "success" | "successful" | "completed" | "complete" | "done" | "passed" => {
            Some(Finished::Succeeded)
        }
        "failed"
        | "failure"
        | "error"
        | "errored"
        | "crashed"
        | "cancelled"
        | "canceled"
        | "aborted"
        | "killed"
        | "backofflimitexceeded"
        | "deadlineexceeded" => Some(Finished::Failed),
        _ => None,
    }
}

/// The text of a `service.job.logs` answer: a JSON string or a `logs`/`log`/`output` field is
/// unwrapped, a JSON list of lines joined, anything else shown as it came.
pub fn logs_text(answer: &str) -> String {
    let Ok(value) = answer.parse::<Value>() else {
        return answer.to_owned();
    };
    let lines = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    };
    lines(&value)
        .or_else(|| {
            ["logs", "log", "output"]
                .iter()
                .find_map(|key| value.get(key).and_then(lines))
        })
        .unwrap_or_else(|| format!("{value:#}"))
}

fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_are_read_from_words_fields_counters_conditions_and_exit_codes() {
        let running = |said: &str| JobState::Running(said.to_owned());
        for (answer, expected) in [
            ("Succeeded", JobState::Succeeded),
            ("job finished: COMPLETED", JobState::Succeeded),
            ("FAILED", JobState::Failed),
            ("running", running("running")),
            (r#""Completed""#, JobState::Succeeded),
            (
                r#"{"status": "Running"}"#,
                running(r#"{"status":"Running"}"#),
            ),
            (r#"{"status": "succeeded"}"#, JobState::Succeeded),
            (r#"{"state": "Error", "message": "x"}"#, JobState::Failed),
            (r#"{"phase": "Failed"}"#, JobState::Failed),
            (r#"{"result": {"status": "done"}}"#, JobState::Succeeded),
            (
                r#"{"status": {"active": 1}}"#,
                running(r#"{"status":{"active":1}}"#),
            ),
            (r#"{"status": {"succeeded": 1}}"#, JobState::Succeeded),
            (r#"{"active": 0, "failed": 2}"#, JobState::Failed),
            (
                r#"{"active": 1, "failed": 1}"#,
                running(r#"{"active":1,"failed":1}"#),
            ),
            (
                r#"{"conditions": [{"type": "Complete", "status": "True"}]}"#,
                JobState::Succeeded,
            ),
            (
                r#"{"conditions": [{"type": "Failed", "status": "True"}]}"#,
                JobState::Failed,
            ),
            (
                r#"{"status": "Completed", "exitCode": 3}"#,
                JobState::Failed,
            ),
            (r#"{"exitCode": 0}"#, JobState::Succeeded),
            ("", running("")),
        ] {
            assert_eq!(job_state(answer), expected, "{answer}");
        }
    }

    #[test]
    fn logs_are_unwrapped_from_the_usual_shapes() {
        assert_eq!(logs_text("plain\nlines"), "plain\nlines");
        assert_eq!(logs_text(r#""a\nb""#), "a\nb");
        assert_eq!(logs_text(r#"["a", "b"]"#), "a\nb");
        assert_eq!(logs_text(r#"{"logs": "a\nb"}"#), "a\nb");
        assert_eq!(logs_text(r#"{"output": ["a", "b"]}"#), "a\nb");
        assert_eq!(logs_text(r#"{"other": 1}"#), "{\n  \"other\": 1\n}");
    }
}
