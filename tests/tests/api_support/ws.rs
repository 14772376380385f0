//! A websocket client of `/v1/stream` for the tests (tokio-tungstenite, nothing of ours).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct StreamClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The cursor of the last message that carried one.
    pub cursor: Option<String>,
}

/// `http://…` to `ws://…/v1/stream?query`.
pub fn stream_url(api: &str, query: &str) -> String {
    format!("{}/v1/stream?{query}", api.replacen("http://", "ws://", 1))
}

/// Connects with `key` in the Authorization header (none when `None`); an HTTP refusal is
/// its status and JSON body.
pub async fn connect(
    api: &str,
    key: Option<&str>,
    query: &str,
) -> Result<StreamClient, (u16, Value)> {
    let mut request = stream_url(api, query).into_client_request().unwrap();
    if let Some(key) = key {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(StreamClient { ws, cursor: None }),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .and_then(|body| serde_json::from_slice(body).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(error) => panic!("websocket connect failed: {error}"),
    }
}

/// [`subscribe`] over a socket with a 4 KiB receive buffer, so that a client that stops
/// reading fills it (and the server's queue for it) after little data.
pub async fn subscribe_small_buffer(api: &str, key: &str, query: &str) -> StreamClient {
    let address: std::net::SocketAddr = api.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(address).await.unwrap();
    let mut request = stream_url(api, query).into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut client = StreamClient { ws, cursor: None };
    client.subscribed().await;
    client
}

/// [`connect`], retried while the fan-out is still starting (503).
pub async fn connect_ready(api: &str, key: &str, query: &str) -> StreamClient {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(api, Some(key), query).await {
            Ok(client) => return client,
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((status, body)) => panic!("stream refused: {status} {body}"),
        }
    }
}

/// [`connect_ready`], then waits for `subscribed`.
pub async fn subscribe(api: &str, key: &str, query: &str) -> StreamClient {
    let mut client = connect_ready(api, key, query).await;
    client.subscribed().await;
    client
}

impl StreamClient {
    /// The next JSON message, skipping pings and pongs; a close frame comes back as
    /// `{"type":"close","code":…,"reason":…}`; `None` after `timeout` with nothing, or when the
    /// connection ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if let Some(cursor) = value["cursor"].as_str() {
                        self.cursor = Some(cursor.to_owned());
                    }
                    return Some(value);
                }
                Ok(Message::Close(frame)) => {
                    return Some(match frame {
                        Some(frame) => serde_json::json!({
                            "type": "close",
                            "code": u16::from(frame.code),
                            "reason": frame.reason.as_str(),
                        }),
                        None => serde_json::json!({"type": "close"}),
                    })
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// [`Self::next`], skipping heartbeats.
    pub async fn reply(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let message = self.next(timeout).await?;
            if message["type"] != "heartbeat" {
                return Some(message);
            }
        }
    }

    /// Waits for `subscribed`, failing on anything else but heartbeats.
    pub async fn subscribed(&mut self) -> Value {
        loop {
            let message = self
                .next(Duration::from_secs(60))
                .await
                .expect("no subscribed message");
            match message["type"].as_str() {
                Some("subscribed") => return message,
                Some("heartbeat") => continue,
                _ => panic!("expected subscribed, got {message}"),
            }
        }
    }

    /// Events until `done` holds for the ids gathered (or `timeout` passes), failing on an
    /// error; other messages are returned apart.
    pub async fn events_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> (Vec<Value>, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        let mut others = Vec::new();
        while !done(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(message) = self.next(left).await else {
                break;
            };
            match message["type"].as_str() {
                Some("event") => events.push(message["event"].clone()),
                Some("error") | Some("close") => panic!("the stream ended: {message}"),
                _ => others.push(message),
            }
        }
        (events, others)
    }

    /// Every event that arrives within `quiet` of the previous message.
    pub async fn drain(&mut self, quiet: Duration) -> (Vec<Value>, Vec<Value>) {
        let mut events = Vec::new();
        let mut others = Vec::new();
        while let Some(message) = self.next(quiet).await {
            match message["type"].as_str() {
                Some("event") => events.push(message["event"].clone()),
                _ => others.push(message),
            }
        }
        (events, others)
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The `event_id`s of events.
pub fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect()
}
