//! What one client's connections can hold: HTTP/2 only when turned on, and
//! then a few streams each, an answer its client will not take ended after
//! the send timeout, slow and idle connections closed, and a cap on how
//! many there are. Each against the real server, with a client that does
//! what a hostile one would.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, ServerProcess, TestApp};

fn socket_address(address: &str) -> String {
    address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `limit` passes);
/// answers what it sent and how long the close took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return (received, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

async fn healthz_answers(app_address: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client");
    client
        .get(format!("{app_address}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// An HTTP/2 client that grants no flow-control window to its streams:
/// the server may send answers' heads but none of their bodies.
async fn stingy_http2_client(
    address: &str,
) -> Result<
    (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ),
    h2::Error,
> {
    let tcp = TcpStream::connect(socket_address(address)).await.expect("connects");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await?;
    Ok((client, tokio::spawn(connection)))
}

fn get(address: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("{address}{path}"))
        .body(())
        .expect("a request")
}

#[tokio::test]
async fn http2_over_cleartext_is_off_unless_turned_on() {
    let app = spawn_app_with(&[]).await;
    let refused = match stingy_http2_client(&app.address).await {
        Err(_) => true,
        Ok((client, connection)) => {
            let answered = async {
                let mut client = client.ready().await?;
                let (response, _) = client.send_request(get(&app.address, "/healthz"), true)?;
                response.await
            };
            let answered = tokio::time::timeout(Duration::from_secs(5), answered).await;
            connection.abort();
            !matches!(answered, Ok(Ok(_)))
        }
    };
    assert!(refused, "an HTTP/2 request was answered with EXDAAS_HTTP2 unset");
    // HTTP/1.1 is served as ever.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn an_http2_client_gets_few_streams_and_one_that_takes_nothing_is_closed() {
    let app = spawn_app_with(&[
        ("EXDAAS_HTTP2", "on"),
        ("EXDAAS_HTTP2_MAX_STREAMS", "8"),
        ("EXDAAS_SEND_TIMEOUT_SECS", "1"),
    ])
    .await;
    let (client, connection) = stingy_http2_client(&app.address).await.expect("an HTTP/2 handshake");
    let mut client = client.ready().await.expect("ready");
    // The server's SETTINGS arrive with its first frames: a request and
    // its answer's head make sure they are in.
    let (first, _) = client.send_request(get(&app.address, "/docs"), true).expect("sent");
    let head = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the head of /docs within 5 s")
        .expect("an answer");
    assert_eq!(head.status(), 200);
    assert_eq!(
        client.current_max_send_streams(),
        8,
        "the server lets one connection open more streams than EXDAAS_HTTP2_MAX_STREAMS"
    );
    // Seven more stalled answers, then nothing taken: the server ends the
    // connection once the send timeout has passed without progress.
    let mut stalled = Vec::new();
    for _ in 0..7 {
        let mut ready = client.clone().ready().await.expect("ready");
        let (response, _) = ready.send_request(get(&app.address, "/docs"), true).expect("sent");
        stalled.push(response);
    }
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        closed.is_ok(),
        "a connection whose answers were not taken for 1 s was still open after 10 s"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("exdaas_connections_closed_total{reason=\"stalled\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

/// The review's attack, on the release binary's path: connections of
/// stalled `/docs` answers (1.8 MB each) hold no copy of the page each,
/// and the server keeps answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_answers_do_not_grow_memory() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(
        folder.path(),
        &[
            ("EXDAAS_HTTP2", "on"),
            ("EXDAAS_HTTP2_MAX_STREAMS", "32"),
            ("EXDAAS_SEND_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let address = format!("http://127.0.0.1:{}", server.port);
    let pid = server.child.id().expect("running");
    let resident_mib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("VmRSS")
            / 1024
    };
    // Once, so the page's first use is not counted.
    assert!(reqwest::get(format!("{address}/docs")).await.is_ok());
    let before = resident_mib();
    let (mut held, mut connections) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let (client, connection) = stingy_http2_client(&address).await.expect("an HTTP/2 handshake");
        for _ in 0..32 {
            let mut ready = client.clone().ready().await.expect("ready");
            let (response, _) = ready.send_request(get(&address, "/docs"), true).expect("sent");
            held.push(response);
        }
        connections.push((client, connection));
    }
    // Every answer's head is in: each answer exists on the server.
    for response in held.iter_mut() {
        let head = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("a head within 10 s")
            .expect("an answer");
        assert_eq!(head.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = resident_mib().saturating_sub(before);
    assert!(
        healthz_answers(&address).await,
        "/healthz did not answer while 320 stalled answers were held"
    );
    // 320 copies of the 1.8 MB page would be 576 MiB.
    assert!(
        grown < 64,
        "320 stalled answers of /docs grew the server by {grown} MiB"
    );
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(socket_address(&app.address))
        .await
        .expect("connects")
}

#[tokio::test]
async fn a_request_head_sent_slowly_or_never_is_cut_off() {
    let app = spawn_app_with(&[("EXDAAS_HEAD_TIMEOUT_SECS", "1"), ("EXDAAS_IDLE_TIMEOUT_SECS", "60")]).await;
    // One header line every 300 ms, as a slow client trickles them.
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("written");
    let trickle = async {
        for n in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(format!("x-slow-{n}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .expect("the writes end");
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a head trickled over 12 s was still being read");

    // A connection that sends nothing at all.
    let mut silent = connect(&app).await;
    let (sent, closed) = read_until_closed(&mut silent, Duration::from_secs(6)).await;
    let closed = closed.expect("a silent connection was closed");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    assert!(sent.is_empty());

    // A client that sends its heads promptly is served as ever.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not() {
    let app = spawn_app_with(&[("EXDAAS_IDLE_TIMEOUT_SECS", "1"), ("EXDAAS_HEAD_TIMEOUT_SECS", "5")]).await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    // Busy: a request every 400 ms for 3 s, all on one connection.
    let mut busy = connect(&app).await;
    for _ in 0..8 {
        busy.write_all(request).await.expect("the connection stays open");
        let mut answer = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), busy.read(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer[..n])
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then idle: closed after about a second.
    let (_, closed) = read_until_closed(&mut busy, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle connection was closed");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    app.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_and_the_others_go_on() {
    let app = spawn_app_with(&[("EXDAAS_MAX_CONNECTIONS", "4")]).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect(&app).await;
    let (sent, closed) = read_until_closed(&mut fifth, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the fifth connection was kept");
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.starts_with("HTTP/1.1 503"), "{sent}");
    assert!(sent.to_ascii_lowercase().contains("retry-after: 1"), "{sent}");

    // The four open ones are served.
    let first = &mut open[0];
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("written");
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), first.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    // Once one closes, a new client gets in.
    open.truncate(3);
    let mut served = false;
    for _ in 0..20 {
        if healthz_answers(&app.address).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no room for a new connection after one of four closed");
    drop(open);
    app.stop().await;
}

/// A client on a slow link takes a large answer bit by bit: that is
/// progress, and the send timeout does not cut it off, however long the
/// whole answer takes (here 4 MiB at about 1 MiB/s with a 2 s timeout).
#[tokio::test]
async fn a_slow_reader_of_a_large_answer_is_not_cut_off() {
    let app = spawn_app_with(&[("EXDAAS_SEND_TIMEOUT_SECS", "2")]).await;
    let large = "x".repeat(1_000_000);
    for n in 0..4 {
        let resp = app
            .put_doc("big", &format!("d{n}"), &serde_json::json!({"text": large}))
            .await;
        assert_eq!(resp.status(), 201);
    }
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(16 << 10).expect("a small receive buffer");
    let mut stream = socket
        .connect(socket_address(&app.address).parse().expect("an address"))
        .await
        .expect("connects");
    stream
        .write_all(b"GET /v1/collections/big/docs?limit=100 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("written");
    let started = Instant::now();
    let mut received = 0usize;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("bytes within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        received += n;
        // About 1 MiB/s.
        tokio::time::sleep(Duration::from_millis(n as u64 * 1000 / (1 << 20))).await;
    }
    let took = started.elapsed();
    assert!(
        received > 4_000_000,
        "the answer was cut off after {received} bytes and {took:?}"
    );
    assert!(took > Duration::from_secs(3), "the read was not slow: {took:?}");
    app.stop().await;
}

/// The same over HTTP/2, where an answer's chunk waits for the stream's
/// window: a client that opens its window a little at a time (about
/// 256 KiB/s for the 1.8 MB Swagger page, with a 2 s timeout) gets all of it.
#[tokio::test]
async fn a_slow_http2_reader_is_not_cut_off() {
    let app = spawn_app_with(&[("EXDAAS_HTTP2", "on"), ("EXDAAS_SEND_TIMEOUT_SECS", "2")]).await;
    let tcp = TcpStream::connect(socket_address(&app.address))
        .await
        .expect("connects");
    let (client, connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let (response, _) = client.send_request(get(&app.address, "/docs"), true).expect("sent");
    let response = response.await.expect("an answer");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let started = Instant::now();
    let mut received = 0usize;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .expect("bytes within 10 s")
    {
        let chunk = chunk.expect("the stream goes on");
        received += chunk.len();
        tokio::time::sleep(Duration::from_millis(chunk.len() as u64 * 1000 / (256 << 10))).await;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let took = started.elapsed();
    assert!(
        received > 1_500_000,
        "the page was cut off after {received} bytes and {took:?}"
    );
    assert!(took > Duration::from_secs(3), "the read was not slow: {took:?}");
    connection.abort();
    app.stop().await;
}

/// A client that opens a small window and never more: the stream holds at
/// most a slice or two of the answer, and the connection is closed once it
/// has taken nothing for the send timeout.
#[tokio::test]
async fn an_http2_stream_with_a_window_that_never_grows_is_closed() {
    let app = spawn_app_with(&[("EXDAAS_HTTP2", "on"), ("EXDAAS_SEND_TIMEOUT_SECS", "1")]).await;
    let tcp = TcpStream::connect(socket_address(&app.address))
        .await
        .expect("connects");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("an HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let (response, _) = client.send_request(get(&app.address, "/docs"), true).expect("sent");
    let response = response.await.expect("an answer");
    assert_eq!(response.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(8), connection).await;
    assert!(
        closed.is_ok(),
        "a stream that took 1 KiB of 1.8 MB was kept open for 8 s"
    );
    app.stop().await;
}

/// The review's case: a process allowed 256 open files, and 400 idle
/// connections with no key. The cap is lowered at boot to what the limit
/// leaves room for (and says so), connections past it are refused at once
/// rather than failing `accept`, the idle ones are closed after the head
/// timeout, and `/healthz` answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_open_files_limit_do_not_lock_everyone_out() {
    use tokio::io::AsyncBufReadExt;
    let folder = tempfile::tempdir().expect("temp dir");
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\"", env!("CARGO_BIN_EXE_exdaas")])
        .env("DETS_ROOT", folder.path())
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1")
        .env("EXDAAS_LOG_FORMAT", "json")
        .env("EXDAAS_HEAD_TIMEOUT_SECS", "1")
        .env("RUST_LOG", "info")
        .env_remove("EXDAAS_DATABASE_URL")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("exdaas starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut warned = false;
    let port = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("logs within 30 s")
            .expect("stderr")
            .expect("the server exited before listening");
        warned |= line.contains("open-files limit");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["fields"]["message"] == "exdaas listening" {
            break event["fields"]["port"].as_u64().expect("port");
        }
    };
    assert!(warned, "no warning that the open-files limit lowers the connection cap");
    let address = format!("http://127.0.0.1:{port}");
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(stream) = TcpStream::connect(socket_address(&address)).await {
            idle.push(stream);
        }
    }
    let started = Instant::now();
    let mut answered = false;
    while started.elapsed() < Duration::from_secs(6) {
        if healthz_answers(&address).await {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "/healthz did not answer within 6 s of 400 idle connections");
    assert!(child.try_wait().expect("status").is_none(), "the server exited");
    drop(idle);
}
