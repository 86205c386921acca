//! Clients that stall or hoard cannot exhaust the real `ferry-router` binary: slow headers, slow
//! bodies and idle connections are closed on deadlines, connections past the cap are closed at
//! once, and request bodies in memory stay within their budget (the process's peak RSS is
//! measured). Needs the local Kubernetes (the router watches it): run with `bash e2e/test.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Router {
    child: Child,
    addr: SocketAddr,
}

impl Router {
    fn start(extra: &[&str]) -> Router {
        let kubeconfig = std::env::var("FERRY_KUBECONFIG").expect(
            "FERRY_KUBECONFIG is not set: this test needs the local Kubernetes (bash e2e/test.sh)",
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-router"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--watch-namespace",
                "ferry-hostile-none",
                "--log-format",
                "text",
            ])
            .args(["--threads", "2"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferry-router");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "router never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Router { child, addr }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Peak resident memory of the router process, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until the peer closes (or the read timeout); returns what came and how long it took.
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
fn slow_headers_slow_bodies_and_idle_connections_are_closed_on_their_deadlines() {
    let router = Router::start(&[
        "--header-timeout-seconds",
        "2",
        "--body-timeout-seconds",
        "2",
    ]);

    // Half a request line, then nothing: closed after the header timeout.
    let mut slow_headers = router.connect();
    slow_headers
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, after) = read_to_close(&mut slow_headers);
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&after),
        "slow headers closed after {after:?}"
    );

    // A body announced at 1000 bytes, 10 sent: 408 after the body timeout.
    let mut slow_body = router.connect();
    slow_body
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ")
        .unwrap();
    let (answer, after) = read_to_close(&mut slow_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(
        after < Duration::from_secs(6),
        "slow body answered after {after:?}"
    );

    // Keep-alive connections left idle after a request: closed after the header timeout too.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = router.connect();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    let started = Instant::now();
    for s in &mut idle {
        let (rest, _) = read_to_close(s);
        assert!(rest.is_empty(), "{rest}");
    }
    let closed_after = started.elapsed();
    println!(
        "slow headers closed after {after:?}; 50 idle keep-alive connections closed after {closed_after:?}"
    );
    assert!(closed_after < Duration::from_secs(6), "{closed_after:?}");
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let router = Router::start(&["--max-connections", "40", "--header-timeout-seconds", "30"]);
    // The start-up probe's connection must be gone first (it holds a slot until it closes).
    std::thread::sleep(Duration::from_millis(500));
    let mut conns: Vec<TcpStream> = (0..50).map(|_| router.connect()).collect();
    // Which were closed at once: after a moment, a read that would block means still open.
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = 0;
    for s in &mut conns {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
        s.set_nonblocking(false).unwrap();
    }
    println!("50 connections against a cap of 40: {closed} closed at once");
    assert_eq!(closed, 10);
    // The 40 still open serve requests.
    let mut first = conns.remove(0);
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[test]
fn stalled_bodies_stay_within_the_memory_budget() {
    let router = Router::start(&[
        "--max-buffered-body-bytes",
        "33554432",
        "--body-timeout-seconds",
        "30",
    ]);
    let baseline = router.peak_rss_mib();
    // 24 clients each send most of a 4 MiB body, then stall.
    let body_len = 4 * 1024 * 1024;
    let chunk = vec![b' '; 64 * 1024];
    let mut clients = Vec::new();
    for _ in 0..24 {
        let mut s = router.connect();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sent = 0;
        while sent < body_len - 256 * 1024 && s.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        clients.push(s);
    }
    // Past the 32 MiB budget a body is refused at once with 503, not held until its deadline.
    let mut refused = 0;
    for s in &mut clients {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1024];
        if let Ok(n) = s.read(&mut buf) {
            let answer = String::from_utf8_lossy(&buf[..n]);
            if answer.starts_with("HTTP/1.1 503") {
                assert!(answer.contains("router_overloaded"), "{answer}");
                assert!(
                    answer.to_ascii_lowercase().contains("retry-after: 1"),
                    "{answer}"
                );
                refused += 1;
            }
        }
    }
    let peak = router.peak_rss_mib();
    println!(
        "24 clients stalling with ~4 MiB bodies against a 32 MiB budget: {refused} refused with 503; \
         router peak RSS {peak:.0} MiB (idle {baseline:.0} MiB)"
    );
    assert!(
        refused >= 14,
        "bodies past the budget must be refused: {refused}"
    );
    // The 32 MiB budget plus connection buffers: bounded, far under the chart's 512 MiB limit.
    assert!(peak < baseline + 64.0, "peak RSS {peak:.0} MiB");
}
