//! One WebSocket connection to a node, checked frame by frame by the protocol's
//! [`ClientSession`] state machine.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use roam_proto::{ClientSession, Frame, FrameLimits, PeerKind};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;
use crate::worker::WorkerOptions;

/// A connection to a node after the Hello/Welcome exchange.
pub(crate) struct Connection {
    url: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: ClientSession,
    limits: FrameLimits,
    /// Frame bytes sent and received, for move accounting.
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Connection {
    /// Connects to the node at `url` (through its route in `options`, if it has one) and
    /// negotiates the protocol version.
    pub async fn open(url: &str, options: &WorkerOptions) -> Result<Connection, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(dial_url(&options.routes, url))
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let mut conn = Connection {
            url: url.to_string(),
            ws,
            session: ClientSession::new(),
            limits: FrameLimits::default(),
            bytes_out: 0,
            bytes_in: 0,
        };
        let hello = ClientSession::hello(PeerKind::Client, &options.client_name);
        conn.send(&hello).await?;
        match conn.recv().await? {
            Frame::Welcome { .. } => Ok(conn),
            other => Err(conn.unexpected(&other, "Welcome")),
        }
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a frame, after the session agrees it may be sent now.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.session
            .on_send(frame)
            .map_err(|e| ClientError::Protocol {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let bytes = frame.encode();
        self.bytes_out += bytes.len() as u64;
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| self.lost(e.to_string()))
    }

    /// Receives the next frame. An Error frame from the node becomes [`ClientError::Refused`].
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            let message = self
                .ws
                .next()
                .await
                .ok_or_else(|| self.lost("the node closed the connection".into()))?
                .map_err(|e| self.lost(e.to_string()))?;
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => return Err(self.lost("the node closed the connection".into())),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Text(_) => {
                    return Err(ClientError::Protocol {
                        url: self.url.clone(),
                        reason: "the node sent a text message".into(),
                    })
                }
            };
            self.bytes_in += bytes.len() as u64;
            let frame = Frame::decode(&bytes, &self.limits).map_err(|e| ClientError::Protocol {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
            // The session sees Error frames too: a refusal ends the exchange in progress
            // (a refused Return, say) and the session must know, or it would refuse
            // everything after it.
            let seen = self.session.on_frame(&frame);
            if let Frame::Error { code, message, .. } = &frame {
                return Err(ClientError::Refused {
                    url: self.url.clone(),
                    code: format!("{code:?}"),
                    message: message.clone(),
                });
            }
            seen.map_err(|e| ClientError::Protocol {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
            return Ok(frame);
        }
    }

    /// Closes the connection politely; errors are of no interest any more.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    pub fn unexpected(&self, frame: &Frame, wanted: &str) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            reason: format!("expected {wanted}, got {}", frame.name()),
        }
    }

    fn lost(&self, reason: String) -> ClientError {
        ClientError::Lost {
            url: self.url.clone(),
            reason,
        }
    }
}

/// Where to connect to reach the node at `url`: its route in `routes` (a trailing `/` does
/// not matter), or `url` itself.
pub(crate) fn dial_url<'a>(routes: &'a BTreeMap<String, String>, url: &'a str) -> &'a str {
    let key = url.trim_end_matches('/');
    routes
        .iter()
        .find(|(from, _)| from.trim_end_matches('/') == key)
        .map_or(url, |(_, to)| to.as_str())
}
