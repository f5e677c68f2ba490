//! Link probes: the round trip to a node from `GET /healthz`, and its bandwidth each way
//! from `GET /probe?bytes=N` and `POST /probe`, over one kept-alive HTTP/1.1 connection
//! (the node's WebSocket port serves both).

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body a probe reads.
const MAX_BODY: usize = 2 << 20;

/// A node's HTTP side, as a probe sees it.
pub(crate) struct Prober {
    /// `host:port`.
    addr: String,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

/// What `GET /healthz` says of a node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Health {
    /// `"edge"` or `"cloud"`.
    pub role: String,
    /// Its calibrated speed, if it reports one.
    pub speed: Option<f64>,
}

impl Prober {
    /// A prober for the node at WebSocket URL `url` (`ws://host:port`), dialled at `dial`.
    pub fn new(dial: &str, timeout: Duration) -> Result<Prober, String> {
        let rest = dial
            .strip_prefix("ws://")
            .ok_or_else(|| format!("cannot probe {dial}: only ws:// URLs are probed"))?;
        let addr = rest.split('/').next().unwrap_or(rest).to_string();
        Ok(Prober {
            addr,
            stream: None,
            timeout,
        })
    }

    /// One request that must be answered 200: the time from sending it to the whole
    /// response, and the body.
    async fn request(&mut self, head: &str, body: &[u8]) -> Result<(Duration, Vec<u8>), String> {
        let (took, status, answer) = self.request_any(head, body).await?;
        if status != 200 {
            return Err(format!("{} answered {status} to `{head}`", self.addr));
        }
        Ok((took, answer))
    }

    /// One request on the kept-alive connection (opened when there is none); the time
    /// from sending it to the whole response, the status and the body.
    async fn request_any(
        &mut self,
        head: &str,
        body: &[u8],
    ) -> Result<(Duration, u16, Vec<u8>), String> {
        let result = tokio::time::timeout(self.timeout, self.exchange(head, body)).await;
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(format!(
                    "no answer from {} within {:?}",
                    self.addr, self.timeout
                ))
            }
        }
    }

    async fn exchange(
        &mut self,
        head: &str,
        body: &[u8],
    ) -> Result<(Duration, u16, Vec<u8>), String> {
        let io = |e: std::io::Error| e.to_string();
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).await.map_err(io)?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let request = format!(
            "{head} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let started = Instant::now();
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(io)?;
        stream.get_mut().write_all(body).await.map_err(io)?;
        let mut status = String::new();
        stream.read_line(&mut status).await.map_err(io)?;
        let code = status
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("{} answered `{}`", self.addr, status.trim()))?;
        let mut length = None;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.map_err(io)? == 0 {
                return Err(format!("{} closed the connection", self.addr));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| format!("{} sent no Content-Length", self.addr))?;
        if length > MAX_BODY {
            return Err(format!("{} sent {length} bytes to a probe", self.addr));
        }
        let mut answer = vec![0; length];
        stream.read_exact(&mut answer).await.map_err(io)?;
        Ok((started.elapsed(), code, answer))
    }

    /// `GET /modules/<hash>`: whether the node holds the module.
    pub async fn holds_module(&mut self, hash: &[u8; 32]) -> Result<bool, String> {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        match self
            .request_any(&format!("GET /modules/{hex}"), &[])
            .await?
        {
            (_, 200, _) => Ok(true),
            (_, 404, _) => Ok(false),
            (_, status, _) => Err(format!("{} answered {status} about a module", self.addr)),
        }
    }

    /// `GET /healthz`: the round trip and what the node says of itself.
    pub async fn health(&mut self) -> Result<(Duration, Health), String> {
        let (took, body) = self.request("GET /healthz", &[]).await?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{} sent a health report that is not JSON: {e}", self.addr))?;
        Ok((
            took,
            Health {
                role: json["role"].as_str().unwrap_or("edge").to_string(),
                speed: json["speed"].as_f64().filter(|s| s.is_finite() && *s > 0.0),
            },
        ))
    }

    /// `GET /probe?bytes=N`: how long `bytes` took to come down, the round trip included.
    pub async fn down(&mut self, bytes: usize) -> Result<Duration, String> {
        let (took, body) = self
            .request(&format!("GET /probe?bytes={bytes}"), &[])
            .await?;
        if body.len() != bytes {
            return Err(format!(
                "{} sent {} bytes, not {bytes}",
                self.addr,
                body.len()
            ));
        }
        Ok(took)
    }

    /// `POST /probe`: how long `bytes` took to go up, the round trip included.
    pub async fn up(&mut self, bytes: usize) -> Result<Duration, String> {
        let (took, _) = self.request("POST /probe", &vec![0; bytes]).await?;
        Ok(took)
    }
}
