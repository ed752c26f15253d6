//! `--transport ws`: one generator connection as a WebSocket client of `GET /v1/ws`.
//!
//! The opening is a signed GET answered 101; then each batch is `--pipeline` request
//! messages written together, and the batch is done when every one of them is answered.
//! Answers come in any order: each carries the `id` its request had, and ids run in
//! sequence per connection, so `id - first id of the batch` names the request. Status
//! pushes (202 payments that became final) are not answers and are skipped. Frames are
//! tungstenite's (client frames are masked), over in-memory buffers as in payd.

use crate::client::Exchange;
use crate::signing::sign_hex;
use crate::stats::Failure;
use crate::workload::{Workload, WorkloadConfig};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io::{self, Read, Write};
use std::time::Instant;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

/// Bytes read from the socket at a time.
const READ_BYTES: usize = 64 * 1024;
/// A valid `Sec-WebSocket-Key` (base64 of 16 bytes). payd checks its form, not its
/// randomness, and the generator does not check the accept value: it is no browser.
const KEY: &str = "bG9hZHRlc3Qta2V5LTAwMQ==";
/// The largest opening answer the generator reads.
const OPENING_ANSWER_BYTES_MAX: usize = 8 * 1024;

/// A WebSocket client connection's codec and buffers.
pub struct Socket {
    context: WebSocketContext,
    input: Vec<u8>,
    /// Bytes read but not yet given to the codec (after the 101's head).
    pending: Vec<u8>,
    control: Vec<u8>,
}

/// What the generator takes from one answer.
struct Answer {
    id: u64,
    status: u16,
    code: String,
}

impl Socket {
    pub fn new() -> Socket {
        let config = WebSocketConfig::default()
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20));
        Socket {
            context: WebSocketContext::new(Role::Client, Some(config)),
            input: vec![0; READ_BYTES],
            pending: Vec::new(),
            control: Vec::new(),
        }
    }

    /// Sends the signed opening and reads its 101.
    pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        config: &WorkloadConfig,
        now_secs: u64,
    ) -> Result<(), Failure> {
        let mut signature = Vec::with_capacity(64);
        sign_hex(
            &config.secret,
            now_secs,
            "GET",
            "/v1/ws",
            b"",
            &mut signature,
        );
        let mut request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\nX-Payd-Merchant: {}\r\n\
             X-Payd-Timestamp: {now_secs}\r\nX-Payd-Signature: v1=",
            config.host, config.merchant
        )
        .into_bytes();
        request.extend_from_slice(&signature);
        request.extend_from_slice(b"\r\n\r\n");
        stream.write_all(&request).await.map_err(|_| Failure::Io)?;
        stream.flush().await.map_err(|_| Failure::Io)?;
        let mut filled = 0;
        loop {
            let count = stream
                .read(&mut self.input[filled..OPENING_ANSWER_BYTES_MAX])
                .await
                .map_err(|_| Failure::Io)?;
            if count == 0 {
                return Err(Failure::Io);
            }
            filled += count;
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.input[..filled]) {
                Ok(httparse::Status::Complete(head)) if response.code == Some(101) => {
                    self.pending = self.input[head..filled].to_vec();
                    return Ok(());
                }
                Ok(httparse::Status::Complete(_)) | Err(_) => return Err(Failure::BadResponse),
                Ok(httparse::Status::Partial) if filled == OPENING_ANSWER_BYTES_MAX => {
                    return Err(Failure::BadResponse)
                }
                Ok(httparse::Status::Partial) => {}
            }
        }
    }

    /// Appends `text` as one masked text frame.
    pub fn write_text(&mut self, text: &[u8], output: &mut Vec<u8>) {
        let text = Utf8Bytes::try_from(text.to_vec()).expect("the workload writes UTF-8");
        let mut nothing: &[u8] = &[];
        let mut duplex = Duplex {
            input: &mut nothing,
            output,
        };
        self.context
            .write(&mut duplex, Message::Text(text))
            .expect("writing into a Vec cannot fail");
    }

    /// The next answer (pushes and control frames skipped); pongs are sent as needed.
    async fn next_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Answer, Failure> {
        loop {
            let pending = std::mem::take(&mut self.pending);
            let mut input: &[u8] = &pending;
            let mut duplex = Duplex {
                input: &mut input,
                output: &mut self.control,
            };
            let result = self.context.read(&mut duplex);
            self.pending = input.to_vec();
            if !self.control.is_empty() {
                stream
                    .write_all(&self.control)
                    .await
                    .map_err(|_| Failure::Io)?;
                self.control.clear();
            }
            match result {
                Ok(Message::Text(text)) => {
                    if let Some(answer) = parse_answer(text.as_bytes())? {
                        return Ok(answer);
                    }
                }
                Ok(Message::Close(_)) => return Err(Failure::Io),
                Ok(_) => {}
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    let count = stream
                        .read(&mut self.input)
                        .await
                        .map_err(|error| crate::client::failure_of(&error))?;
                    if count == 0 {
                        return Err(Failure::Io);
                    }
                    self.pending.extend_from_slice(&self.input[..count]);
                }
                Err(_) => return Err(Failure::BadResponse),
            }
        }
    }
}

impl Default for Socket {
    fn default() -> Self {
        Socket::new()
    }
}

/// `{"id":N,"status":S,...,"body":{...}}`, or `None` for a push.
fn parse_answer(text: &[u8]) -> Result<Option<Answer>, Failure> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|_| Failure::BadResponse)?;
    if value.get("event").is_some() {
        return Ok(None);
    }
    let id = value["id"].as_u64().ok_or(Failure::BadResponse)?;
    let status = value["status"].as_u64().ok_or(Failure::BadResponse)? as u16;
    let code = match status {
        400.. => value["body"]["error"]["code"]
            .as_str()
            .unwrap_or("no_error_code")
            .to_string(),
        _ => String::new(),
    };
    Ok(Some(Answer { id, status, code }))
}

impl Exchange {
    /// Sends batches of messages on one opened WebSocket until the end or a failure.
    pub async fn run_websocket<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        workload: &mut Workload<'static>,
    ) {
        let mut socket = Socket::new();
        let config = workload.config();
        if let Err(failure) = socket
            .open(&mut stream, config, crate::client::unix_secs())
            .await
        {
            self.record_failure(Instant::now(), failure, 1);
            return;
        }
        let mut text = Vec::with_capacity(1024);
        loop {
            let Some(due) = self.wait_until_due().await else {
                return;
            };
            self.output.clear();
            self.kinds.clear();
            let first_id = workload.next_message_id();
            let timestamp_secs = crate::client::unix_secs();
            for _ in 0..self.plan.pipeline_depth {
                text.clear();
                self.kinds
                    .push(workload.next_request(timestamp_secs, &mut text));
                socket.write_text(&text, &mut self.output);
            }
            let written = match stream.write_all(&self.output).await {
                Ok(()) => stream.flush().await,
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                self.record_failure(due, crate::client::failure_of(&error), self.kinds.len());
                return;
            }
            if !self
                .read_answers(&mut socket, &mut stream, due, first_id)
                .await
            {
                return;
            }
        }
    }

    async fn read_answers<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        socket: &mut Socket,
        stream: &mut S,
        due: Instant,
        first_id: u64,
    ) -> bool {
        for answered in 0..self.kinds.len() {
            let answer = match socket.next_answer(stream).await {
                Ok(answer) => answer,
                Err(failure) => {
                    self.record_failure(due, failure, self.kinds.len() - answered);
                    return false;
                }
            };
            let kind = answer
                .id
                .checked_sub(first_id)
                .and_then(|index| self.kinds.get(index as usize).copied());
            let Some(kind) = kind else {
                self.record_failure(due, Failure::BadResponse, self.kinds.len() - answered);
                return false;
            };
            if due >= self.plan.measure_from {
                let latency_us = due.elapsed().as_micros() as u64;
                let mut stats = self.stats.borrow_mut();
                stats.record_response(kind, answer.status, &answer.code, latency_us);
            }
        }
        true
    }
}

/// tungstenite's stream for one call: the bytes read so far, and an output buffer.
struct Duplex<'r, 'i, 'o> {
    input: &'r mut &'i [u8],
    output: &'o mut Vec<u8>,
}

impl Read for Duplex<'_, '_, '_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let count = buffer.len().min(self.input.len());
        buffer[..count].copy_from_slice(&self.input[..count]);
        *self.input = &self.input[count..];
        Ok(count)
    }
}

impl Write for Duplex<'_, '_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_give_id_status_and_error_code_and_pushes_are_skipped() {
        let created = br#"{"id":7,"status":201,"replayed":false,"body":{"id":"pay_1"}}"#;
        let answer = parse_answer(created).unwrap().unwrap();
        assert_eq!(
            (answer.id, answer.status, answer.code.as_str()),
            (7, 201, "")
        );
        let refused = br#"{"id":8,"status":429,"replayed":false,"body":{"error":{"code":"overloaded","message":"m"}}}"#;
        let answer = parse_answer(refused).unwrap().unwrap();
        assert_eq!((answer.status, answer.code.as_str()), (429, "overloaded"));
        let push = br#"{"event":"payment.updated","data":{"id":"pay_1"}}"#;
        assert!(parse_answer(push).unwrap().is_none());
        assert!(parse_answer(b"{\"id\":null,\"status\":400}").is_err());
    }

    #[test]
    fn client_frames_are_masked_text() {
        let mut socket = Socket::new();
        let mut output = Vec::new();
        socket.write_text(b"{}", &mut output);
        assert_eq!(output[0], 0x81, "FIN and text");
        assert_eq!(output[1], 0x80 | 2, "masked, two bytes");
        assert_eq!(output.len(), 2 + 4 + 2);
    }
}
