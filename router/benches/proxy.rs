//! What the router adds to a request, next to nginx doing the same job, with a backend so fast
//! that the proxies are what is measured:
//!
//!     cargo bench -p ferry-router --bench proxy
//!
//! Three processes besides this driver: a minimal OpenAI-shaped backend (canned chat completion),
//! `ferry-router` (its real request path, routing table given directly instead of discovered), and
//! nginx from Debian (installed with apt when missing) as a keep-alive reverse proxy. Rounds
//! alternate between direct / router / nginx so that machine noise hits all three alike:
//! latency at concurrency 1 (added p50/p99 = proxy minus direct), then requests/s at concurrency
//! 32. On a 2-core machine all processes share the cores, so the absolute throughput is the
//! machine's; the ratio is what compares the proxies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_router::table::{Backend, Endpoint, Route, Table};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The router's allocator, as in the `ferry-router` binary (the driver and the backend, which run
/// from this binary too, serve every target alike).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CANNED: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;
const REQUEST: &str = r#"{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":8}"#;

fn main() {
    match std::env::var("FERRY_BENCH_ROLE").as_deref() {
        Ok("backend") => return role(backend()),
        Ok("router") => return role(router()),
        _ => {}
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench binaries; nothing to list.
    }
    let backend_port = free_port();
    let router_port = free_port();
    let nginx_port = free_port();
    let _backend = spawn_role("backend", &[("PORT", backend_port)]);
    let _router = spawn_role(
        "router",
        &[("PORT", router_port), ("BACKEND_PORT", backend_port)],
    );
    let _nginx = start_nginx(nginx_port, backend_port);
    let targets = [
        ("direct", backend_port),
        ("ferry-router", router_port),
        ("nginx", nginx_port),
    ];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (_, port) in targets {
            wait_up(port).await;
        }
        let client = client();
        // Warm-up: connections open, caches hot.
        for (_, port) in targets {
            run_closed_loop(&client, port, 4, Duration::from_millis(500)).await;
        }

        let mut latencies: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        for _ in 0..10 {
            for (name, port) in targets {
                let l = latencies.entry(name).or_default();
                for _ in 0..300 {
                    let started = Instant::now();
                    send(&client, port).await;
                    l.push(started.elapsed());
                }
            }
        }
        let mut throughput: BTreeMap<&str, (u64, Duration)> = BTreeMap::new();
        for _ in 0..5 {
            for (name, port) in targets {
                let (n, took) = run_closed_loop(&client, port, 32, Duration::from_secs(2)).await;
                let t = throughput.entry(name).or_default();
                t.0 += n;
                t.1 += took;
            }
        }

        let pct = |v: &mut Vec<Duration>, q: f64| {
            v.sort();
            v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
        };
        let mut p: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for (name, v) in latencies.iter_mut() {
            p.insert(name, (pct(v, 0.50), pct(v, 0.99)));
        }
        let rps = |name: &str| {
            let (n, took) = throughput[name];
            n as f64 / took.as_secs_f64()
        };
        println!(
            "\nproxy overhead, fast backend, {} CPUs, one run",
            num_cpus()
        );
        println!(
            "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s at c=32 | vs nginx |"
        );
        println!("|---|---|---|---|---|---|---|");
        let (d50, d99) = p["direct"];
        for (name, _) in targets {
            let (p50, p99) = p[name];
            println!(
                "| {name} | {p50:.3} | {p99:.3} | {:.3} | {:.3} | {:.0} | {:.2} |",
                p50 - d50,
                p99 - d99,
                rps(name),
                rps(name) / rps("nginx")
            );
        }
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn role(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

fn env_port(name: &str) -> u16 {
    std::env::var(name).unwrap().parse().unwrap()
}

async fn backend() {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|_body: Bytes| async { ([("content-type", "application/json")], CANNED) }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", env_port("PORT")))
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}

async fn router() {
    use clap::Parser;
    let backend: SocketAddr = ([127, 0, 0, 1], env_port("BACKEND_PORT")).into();
    let table = Table {
        routes: BTreeMap::from([(
            "bench".to_string(),
            Route {
                model: "bench".into(),
                namespace: "bench".into(),
                deployment: "bench".into(),
                backends: vec![Backend {
                    version: "v1".into(),
                    weight: 100,
                    variant: None,
                    endpoints: vec![Arc::new(Endpoint::new("bench-0", backend))],
                }],
                stickiness: None,
            },
        )]),
        synced: true,
    };
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(table));
    let args = ferry_router::Args::parse_from(["ferry-router"]);
    let app = args.app(rx).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", env_port("PORT")))
        .await
        .unwrap();
    ferry_router::serve(app, listener, std::future::pending())
        .await
        .unwrap();
}

struct Killed(Child);

impl Drop for Killed {
    /// SIGTERM, so that nginx's master stops its workers too.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn spawn_role(role: &str, env: &[(&str, u16)]) -> Killed {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("FERRY_BENCH_ROLE", role).stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v.to_string());
    }
    Killed(cmd.spawn().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(port: u16, backend_port: u16) -> Killed {
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("installing nginx from Debian (apt-get install nginx-light)");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "nginx-light"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
            || Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "nginx"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "could not install nginx with apt-get");
    }
    let dir = std::env::temp_dir().join(format!("ferry-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = format!(
        "user root;
worker_processes auto;
error_log {dir}/logs/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }}
  }}
}}
",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Killed(
        Command::new("nginx")
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                path.to_str().unwrap(),
                "-g",
                "daemon off;",
            ])
            .spawn()
            .expect("nginx starts"),
    )
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

async fn send(client: &HttpClient, port: u16) {
    let request = hyper::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .unwrap();
    let response = client.request(request).await.expect("request succeeds");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.len() > 100);
}

async fn wait_up(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "port {port} never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `concurrency` loops sending back to back for `duration`; requests done and the time taken.
async fn run_closed_loop(
    client: &HttpClient,
    port: u16,
    concurrency: usize,
    duration: Duration,
) -> (u64, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let loops = (0..concurrency).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                send(&client, port).await;
                n += 1;
            }
            n
        })
    });
    let mut total = 0;
    for l in loops {
        total += l.await.unwrap();
    }
    (total, started.elapsed())
}
