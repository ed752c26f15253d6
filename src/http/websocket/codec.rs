//! Frames in and out (RFC 6455 section 5), by tungstenite's protocol core.
//!
//! `WebSocketContext` is tungstenite's state machine without a socket: it reads from and
//! writes to whatever `Read + Write` it is handed per call. Here that is `Duplex`, two
//! in-memory buffers: the bytes the connection just read, and the connection's output.
//! So tungstenite decodes, unmasks, reassembles fragments, checks UTF-8 and sizes, and
//! queues pongs and close answers, while payd keeps every socket operation, the output
//! bound and the timers to itself. The answers payd sends are text frames whose header
//! tungstenite writes (`FrameHeader::format`), followed by the payload, with no copy of
//! the payload into an intermediate frame.

use std::io::{self, Read, Write};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Error, Message, Utf8Bytes};

/// tungstenite's read buffer per connection; a larger frame grows it up to its size.
pub const READ_BUFFER_BYTES: usize = 4096;

/// The close codes of RFC 6455 section 7.4.1 that payd sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// What the next step of decoding came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete text message (reassembled, valid UTF-8, within the size limit).
    Text(Utf8Bytes),
    /// A ping or a pong: a sign of life. The pong a ping asks for is in the output.
    Control,
    /// Every byte given was taken and no complete message is left: read more.
    NeedInput,
    /// The client closed, with this code if it gave one; the close answer is in the output.
    ClosedByPeer(Option<u16>),
    /// The connection fails with this close code, whose close frame is in the output.
    Failed(u16),
}

/// One connection's decoder (and the encoder of its control frames).
pub struct Codec {
    context: WebSocketContext,
}

impl Codec {
    /// A server-side codec refusing messages (and frames) over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Codec {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            // Everything tungstenite writes goes straight to the output buffer.
            .write_buffer_size(0)
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes))
            .accept_unmasked_frames(false);
        Codec {
            context: WebSocketContext::new(Role::Server, Some(config)),
        }
    }

    /// Decodes from `input` (advanced past what was taken) until one thing happens.
    /// Control answers go to `output`.
    pub fn decode(&mut self, input: &mut &[u8], output: &mut Vec<u8>) -> Decoded {
        let mut duplex = Duplex { input, output };
        let result = self.context.read(&mut duplex);
        match result {
            Ok(Message::Text(text)) => Decoded::Text(text),
            Ok(Message::Binary(_)) => self.fail(close_code::UNSUPPORTED_DATA, output_of(duplex)),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Decoded::Control,
            Ok(Message::Close(frame)) => {
                // Writes the close answer tungstenite queued; it then reports the end.
                let _ = self.context.flush(&mut duplex);
                Decoded::ClosedByPeer(frame.map(|frame| u16::from(frame.code)))
            }
            Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                Decoded::NeedInput
            }
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => Decoded::ClosedByPeer(None),
            Err(Error::Capacity(_)) => self.fail(close_code::MESSAGE_TOO_BIG, output_of(duplex)),
            Err(Error::Utf8(_)) => self.fail(close_code::INVALID_PAYLOAD, output_of(duplex)),
            // Unmasked, reserved bits or opcodes, a control frame over 125 bytes or
            // fragmented, a continuation without a start, a message interrupted by another.
            Err(_) => self.fail(close_code::PROTOCOL_ERROR, output_of(duplex)),
        }
    }

    /// Appends a close frame with `code` (once; later calls add nothing).
    pub fn close(&mut self, code: u16, output: &mut Vec<u8>) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(""),
        };
        let mut nothing: &[u8] = &[];
        let mut duplex = Duplex {
            input: &mut nothing,
            output,
        };
        let _ = self.context.close(&mut duplex, Some(frame));
    }

    /// Appends a ping with an empty payload.
    pub fn ping(&mut self, output: &mut Vec<u8>) {
        let mut nothing: &[u8] = &[];
        let mut duplex = Duplex {
            input: &mut nothing,
            output,
        };
        let _ = self.context.write(&mut duplex, Message::Ping(Bytes::new()));
    }

    fn fail(&mut self, code: u16, output: &mut Vec<u8>) -> Decoded {
        self.close(code, output);
        Decoded::Failed(code)
    }
}

fn output_of<'o>(duplex: Duplex<'_, '_, 'o>) -> &'o mut Vec<u8> {
    duplex.output
}

/// Appends one unfragmented text frame carrying `payload`, which must be UTF-8 (payd's
/// own JSON). Server frames are not masked.
pub fn write_text_frame(output: &mut Vec<u8>, payload: &[u8]) {
    write_text_frame_parts(output, &[payload]);
}

/// Appends one text frame whose payload is `parts` one after the other, so an answer
/// goes out without being assembled in a buffer of its own first.
pub fn write_text_frame_parts(output: &mut Vec<u8>, parts: &[&[u8]]) {
    let length: usize = parts.iter().map(|part| part.len()).sum();
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    header
        .format(length as u64, output)
        .expect("writing into a Vec cannot fail");
    for part in parts {
        output.extend_from_slice(part);
    }
}

/// tungstenite's stream for one call: reads what the connection received, writes into
/// the connection's output. An empty input is "would block", never end of stream: the
/// connection tells the end of its socket itself.
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
