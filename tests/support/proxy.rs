//! A fault-injecting TCP proxy between the services and moto. It forwards
//! requests untouched until told to fail them for a while: refuse
//! connections (the dependency is down), answer 503 (it is overloaded), or
//! answer one service's calls with a throttling error
//! (`ProvisionedThroughputExceededException`, `ThrottlingException`). It never answers an AWS call itself other than with an
//! error, so it injects faults without faking the API.
//!
//! Each forwarded request is rewritten to `Connection: close`, so every
//! request opens its own connection and a fault switched on affects the
//! very next call rather than only new connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head the proxy reads before giving up on a connection.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Accept and immediately close every connection.
    Refuse,
    /// Answer every request with 503 Service Unavailable.
    ServiceUnavailable,
    /// Answer the JSON-protocol requests whose `X-Amz-Target` starts with
    /// the first string (`DynamoDB_`, `RekognitionService.`) with a 400
    /// carrying the second as the error code; forward the rest.
    Throttle(&'static str, &'static str),
}

pub struct FaultProxy {
    /// Base URL to give the services instead of moto's.
    pub endpoint: String,
    fault: Arc<Mutex<Fault>>,
    injected: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the proxy forwards plain HTTP, not {upstream}"))
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listener");
        let address = listener.local_addr().expect("proxy address");
        let fault = Arc::new(Mutex::new(Fault::None));
        let injected = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let fault = fault.clone();
            let injected = injected.clone();
            let forwarded = forwarded.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let mode = *fault.lock().unwrap_or_else(|p| p.into_inner());
                    let upstream = upstream.clone();
                    let injected = injected.clone();
                    let forwarded = forwarded.clone();
                    tokio::spawn(async move {
                        handle(client, mode, &upstream, &injected, &forwarded).await;
                    });
                }
            }
        });
        FaultProxy {
            endpoint: format!("http://{address}"),
            fault,
            injected,
            forwarded,
            task,
        }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Requests answered with a fault so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Requests passed to moto so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    mut client: TcpStream,
    mode: Fault,
    upstream: &str,
    injected: &AtomicU64,
    forwarded: &AtomicU64,
) {
    if mode == Fault::Refuse {
        injected.fetch_add(1, Ordering::Relaxed);
        drop(client);
        return;
    }
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let target = header(&head, "x-amz-target").unwrap_or_default();
    let json_protocol = !target.is_empty();
    let answer = match mode {
        Fault::ServiceUnavailable => Some((503, "ServiceUnavailable")),
        Fault::Throttle(prefix, code) if target.starts_with(prefix) => Some((400, code)),
        _ => None,
    };
    if let Some((status, code)) = answer {
        injected.fetch_add(1, Ordering::Relaxed);
        // Drain the body the client announced so it is not cut off mid-send.
        if let Some(length) = header(&head, "content-length").and_then(|l| l.parse::<usize>().ok())
        {
            let mut remaining = length.saturating_sub(rest.len());
            let mut sink = [0u8; 8192];
            while remaining > 0 {
                match client.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => remaining = remaining.saturating_sub(n),
                }
            }
        }
        let (content_type, body) = if json_protocol {
            (
                "application/x-amz-json-1.0",
                format!(r#"{{"__type":"{code}","message":"injected by the test proxy"}}"#),
            )
        } else {
            let short = code.rsplit('#').next().unwrap_or(code);
            (
                "application/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{short}</Code>\
                     <Message>injected by the test proxy</Message></Error>"
                ),
            )
        };
        let reason = if status == 503 {
            "Service Unavailable"
        } else {
            "Bad Request"
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             x-amzn-errortype: {code}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    forwarded.fetch_add(1, Ordering::Relaxed);
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&close_connection(&head)).await.is_err()
        || server.write_all(&rest).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Reads up to the end of the request head; returns the head (without the
/// blank line) and whatever body bytes came with it.
async fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let rest = buffer[end + 4..].to_vec();
            return Some((head, rest));
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn close_connection(head: &str) -> Vec<u8> {
    let mut out = String::with_capacity(head.len() + 24);
    for (i, line) in head.split("\r\n").enumerate() {
        if i > 0
            && line
                .split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}
