//! Oversized and slow HTTP requests against a running service: the limits answer with problem
//! documents before a body is read, and slow clients do not hold up the others.
//!
//! The requests are written by hand on raw TCP connections: HTTP clients will not send a
//! head they know is incomplete, or a body slower than they can.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use template_tests::ServiceProcess;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

use crate::probe::Scenario;

/// `DEFAULT_BODY_LIMIT` of `template/crates/pipeforce/src/http/problem.rs`, the limit of the
/// example's `POST /greetings`.
const BODY_LIMIT: usize = 256 * 1024;

/// How long any answer may take here: generous, these tests are about behaviour, not speed.
const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_json_body_over_the_limit_is_refused_with_413_on_its_content_length_alone() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    // At the limit: accepted.
    let at_limit = greeting_of_length(BODY_LIMIT);
    let accepted = reqwest::Client::new()
        .post(format!("{}/greetings", service.http))
        .header("content-type", "application/json")
        .body(at_limit)
        .timeout(PROMPTLY)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "{}", service.logs());

    // One byte over: refused from the head, before a byte of the body is sent.
    let mut connection = connect(&service).await;
    let head = format!(
        "POST /greetings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        BODY_LIMIT + 1
    );
    connection.write_all(head.as_bytes()).await.unwrap();
    let response = read_response_promptly(&mut connection)
        .await
        .expect("a response, not a closed connection");
    assert_problem(&response, 413);
    assert_still_serving(&service).await;
}

#[tokio::test]
async fn a_chunked_body_without_content_length_is_refused_with_411_while_it_streams() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    let (mut reading, mut writing) = connect(&service).await.into_split();
    // A body far over the limit, in chunks, for as long as the server takes it.
    let streaming = tokio::spawn(async move {
        let head = "POST /greetings HTTP/1.1\r\nHost: localhost\r\n\
                    Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        writing.write_all(head.as_bytes()).await?;
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        let mut sent = 0;
        while sent < 64 * BODY_LIMIT {
            writing.write_all(chunk.as_bytes()).await?;
            sent += 64 * 1024;
        }
        Ok::<_, std::io::Error>(sent)
    });

    let response = read_response_promptly(&mut reading)
        .await
        .expect("a response, not a closed connection");
    assert_problem(&response, 411);
    // The server stops reading: the rest of the body either waits or fails to send.
    let streamed = tokio::time::timeout(Duration::from_secs(2), streaming).await;
    assert!(
        !matches!(streamed, Ok(Ok(Ok(_)))),
        "the server read the whole 16 MiB body it had refused"
    );
    assert_still_serving(&service).await;
}

#[tokio::test]
async fn a_huge_header_is_refused_with_431_or_a_closed_connection() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    let (mut reading, mut writing) = connect(&service).await.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Huge: {}\r\n\r\n",
            "a".repeat(1024 * 1024)
        );
        // Fails when the server closes the connection before taking it all.
        let _ = writing.write_all(head.as_bytes()).await;
    });

    // The server may close the connection before the client can read the 431: either is a
    // refusal.
    if let Some(response) = read_response_promptly(&mut reading).await {
        assert_eq!(response.status, 431, "{}", response.head);
    }
    writer.abort();
    assert_still_serving(&service).await;
}

#[tokio::test]
async fn request_heads_sent_byte_by_byte_do_not_hold_up_other_clients_and_time_out() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    // Slowloris: 50 connections that send their heads a byte at a time and never finish, and
    // one that sends nothing at all.
    let started = Instant::now();
    let mut silent = connect(&service).await;
    let mut slow = JoinSet::new();
    for _ in 0..50 {
        let mut connection = connect(&service).await;
        slow.spawn(async move {
            let head = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
            let mut written = connection.write_all(head).await;
            while written.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                written = connection.write_all(b"a").await;
            }
        });
    }

    // While they hang: new connections are accepted and answered.
    let client = fresh_connection_client();
    for _ in 0..10 {
        for path in ["/health/live", "/health/ready", "/greetings/stats"] {
            let response = client
                .get(format!("{}{path}", service.http))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path} while slow heads hang: {e}"));
            assert_eq!(response.status(), 200, "{path}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slow.try_join_next().is_none(),
        "every slow connection stayed open, its head unfinished, while the others were served"
    );

    // The service closes each of them once its head has taken 30 s (`HEADER_READ_TIMEOUT`).
    let limit = Duration::from_secs(30 + 15);
    let mut buffer = [0; 64];
    let read = tokio::time::timeout(limit, silent.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the silent connection is closed: {read:?}"
    );
    while let Some(ended) =
        tokio::time::timeout(limit.saturating_sub(started.elapsed()), slow.join_next())
            .await
            .expect("every slow connection is closed within 45 s")
    {
        ended.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "closed after the timeout, not before: {:?}",
        started.elapsed()
    );
    assert_still_serving(&service).await;
}

#[tokio::test]
async fn bodies_trickled_slowly_do_not_hold_up_other_clients_and_are_served_in_the_end() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    // Ten greetings whose bodies arrive a byte every 150 ms (about 3 s each).
    const TRICKLING: usize = 10;
    let (begun, mut bodies_begun) = tokio::sync::mpsc::channel(TRICKLING);
    let mut trickling = JoinSet::new();
    for i in 0..TRICKLING {
        let mut connection = connect(&service).await;
        let begun = begun.clone();
        trickling.spawn(async move {
            let body = json!({ "name": format!("trickle-{i}") }).to_string();
            let head = format!(
                "POST /greetings HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            connection.write_all(head.as_bytes()).await.unwrap();
            for (sent, byte) in body.as_bytes().iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(150)).await;
                connection.write_all(&[*byte]).await.unwrap();
                if sent == 0 {
                    begun.send(()).await.unwrap();
                }
            }
            read_response_promptly(&mut connection)
                .await
                .expect("a response to the trickled greeting")
        });
    }

    // Meanwhile, once every trickled body has begun, a greeting sent at full speed goes
    // through.
    for started in 0..TRICKLING {
        tokio::time::timeout(PROMPTLY, bodies_begun.recv())
            .await
            .unwrap_or_else(|_| panic!("only {started} of the trickled bodies began within 5 s"));
    }
    let quick = fresh_connection_client()
        .post(format!("{}/greetings", service.http))
        .json(&json!({ "name": "quick" }))
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 202);
    assert!(
        trickling.try_join_next().is_none(),
        "the trickled bodies were complete before the quick greeting was answered"
    );

    while let Some(response) = trickling.join_next().await {
        assert_eq!(response.unwrap().status, 202);
    }
    // All eleven made it through the broker to the service's handler.
    service
        .wait_for_json(
            "/greetings/stats",
            |stats| stats["greetings"] == 11,
            Duration::from_secs(10),
        )
        .await;
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Status line and headers, header names in lowercase.
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    }
}

/// The problem document of `status` that the service answers refused requests with.
fn assert_problem(response: &RawResponse, status: u16) {
    assert_eq!(response.status, status, "{}", response.head);
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{}",
        response.head
    );
    let problem: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(problem["status"], status, "{problem}");
}

/// `{"name":"aaa…"}` of exactly `length` bytes.
fn greeting_of_length(length: usize) -> String {
    let frame = json!({ "name": "" }).to_string().len();
    let body = json!({ "name": "a".repeat(length - frame) }).to_string();
    assert_eq!(body.len(), length);
    body
}

async fn connect(service: &ServiceProcess) -> TcpStream {
    let address = service.http.trim_start_matches("http://");
    TcpStream::connect(address).await.unwrap()
}

/// A client that opens a new connection for every request, so each one is accepted anew.
fn fresh_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(PROMPTLY)
        .build()
        .unwrap()
}

/// One response, read within [`PROMPTLY`]; `None` if the server closed (or reset) the
/// connection before a whole head arrived.
async fn read_response_promptly(connection: &mut (impl AsyncRead + Unpin)) -> Option<RawResponse> {
    tokio::time::timeout(PROMPTLY, read_response(connection))
        .await
        .expect("an answer within 5 s")
}

async fn read_response(connection: &mut (impl AsyncRead + Unpin)) -> Option<RawResponse> {
    let mut received = Vec::new();
    let mut buffer = [0; 8192];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match connection.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    };
    let head = lowercase_header_names(&String::from_utf8_lossy(&received[..head_end]));
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut response = RawResponse {
        status,
        head,
        body: received[head_end + 4..].to_vec(),
    };
    let length: usize = response
        .header("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    while response.body.len() < length {
        match connection.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => response.body.extend_from_slice(&buffer[..read]),
        }
    }
    Some(response)
}

fn lowercase_header_names(head: &str) -> String {
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_owned();
    lines.fold(status_line, |mut out, line| {
        let line = match line.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => line.to_owned(),
        };
        out.push('\n');
        out.push_str(&line);
        out
    })
}

/// Liveness and the example's stats answer promptly on new connections.
async fn assert_still_serving(service: &ServiceProcess) {
    let client = fresh_connection_client();
    for path in ["/health/live", "/greetings/stats"] {
        let response = client
            .get(format!("{}{path}", service.http))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", service.logs()));
        assert_eq!(response.status(), 200, "{path}");
    }
    assert!(!service.logs().contains("panicked"), "{}", service.logs());
}
