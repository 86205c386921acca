//! Clients that stall or hoard cannot exhaust the real `ferry-server` binary (tiny model): slow
//! headers, slow bodies and idle keep-alive connections are closed on deadlines, connections past
//! the cap are closed at once, a client that stops reading a stream neither keeps the engine slot
//! nor its connection, and a request with absurd counts is refused before it is admitted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = common::models_dir().join("tiny-gguf");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let hf_home = std::env::temp_dir().join(format!("ferry-hostile-hf-{port}"));
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-server"))
            .args([
                "--model-path",
                dir.to_str().unwrap(),
                "--gguf-file",
                "tiny-q8_0.gguf",
            ])
            .args(["--served-model-name", "tiny", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--log-format", "text"])
            .args(extra)
            .env("HF_HOME", hf_home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferry-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = Server { child, addr };
        let started = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return server;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// One whole request on a fresh connection; the status line and the body.
    fn request(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = self.connect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_headers_slow_bodies_idle_and_excess_connections_are_closed() {
    let server = Server::start(&[
        "--header-timeout-seconds",
        "2",
        "--body-timeout-seconds",
        "2",
        "--max-connections",
        "20",
    ]);
    let mut slow_headers = server.connect();
    slow_headers
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .unwrap();
    let (_, after) = read_to_close(&mut slow_headers);
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&after),
        "slow headers closed after {after:?}"
    );

    let mut slow_body = server.connect();
    slow_body
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":")
        .unwrap();
    let (answer, after) = read_to_close(&mut slow_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(after < Duration::from_secs(6), "{after:?}");

    // 25 connections against a cap of 20: 5 closed at once; the others close when idle. (The
    // connections above must be gone first: each holds a slot until it closes.)
    drop((slow_headers, slow_body));
    std::thread::sleep(Duration::from_millis(500));
    let mut conns: Vec<TcpStream> = (0..25).map(|_| server.connect()).collect();
    let started = Instant::now();
    // Which were closed at once: after a moment, a read that would block means still open.
    std::thread::sleep(Duration::from_millis(300));
    let mut closed_at_once = 0;
    for s in &mut conns {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed_at_once += 1,
        }
        s.set_nonblocking(false).unwrap();
    }
    assert_eq!(closed_at_once, 5);
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        read_to_close(s);
    }
    println!(
        "slow headers closed after {after:?}; 5 of 25 connections closed at once (cap 20), the \
         rest idle-closed after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn a_client_that_stops_reading_keeps_neither_the_engine_slot_nor_its_connection() {
    let server = Server::start(&[
        "--max-num-seqs",
        "1",
        "--max-queue",
        "4",
        "--stalled-client-timeout-seconds",
        "3",
    ]);
    // A long stream to a client with a tiny receive window that never reads it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stalled: TcpStream = socket.into();
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":"a"}],"max_tokens":900,"ignore_eos":true,"stream":true}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(body.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // With one engine slot, another request is still answered: the slot was freed when the
    // stalled stream's generation ended, not when (if ever) its client reads it.
    let started = Instant::now();
    let answer = server.request(
        "POST",
        "/v1/chat/completions",
        r#"{"model":"tiny","messages":[{"role":"user","content":"b"}],"max_tokens":4}"#,
    );
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");

    // After the stalled-client timeout the kernel has cut the connection: reading now gives
    // what fitted in the buffers, then the reset, never the end of the stream.
    std::thread::sleep(Duration::from_secs(6));
    stalled
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (got, _) = read_to_close(&mut stalled);
    println!(
        "second request answered after {waited:?} with the only slot's client stalled; the \
         stalled stream was cut after {} bytes",
        got.len()
    );
    assert!(
        !got.contains("data: [DONE]"),
        "the stalled stream was not cut"
    );
}

#[test]
fn absurd_requests_are_refused_before_they_are_admitted() {
    let server = Server::start(&["--max-messages", "100"]);
    let messages: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"role":"user","content":"m{i}"}}"#))
        .collect();
    let body = format!(r#"{{"model":"tiny","messages":[{}]}}"#, messages.join(","));
    let started = Instant::now();
    let answer = server.request("POST", "/v1/chat/completions", &body);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("at most 100 messages; this one has 10000"),
        "{answer}"
    );
    assert!(answer.contains("\"param\":\"messages\""), "{answer}");
    println!("10,000 messages refused in {:?}", started.elapsed());
}
