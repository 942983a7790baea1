//! Answering a socket refused at accept: an HTTP response with the JSON error body,
//! `Retry-After` and `Connection: close`, whatever the client meant to send.
//!
//! The answer waits (up to [`WAIT_FOR_REQUEST`]) for the client's first bytes: an HTTP client
//! that gets a response before it has sent its request treats it as a broken exchange rather than
//! an answer. A socket that sends nothing gets the answer when the wait ends. Closing a socket
//! that still has unread bytes resets the connection, and a reset can make the client drop the
//! response it has not read yet, so afterwards the answer reads and drops what the client sends
//! until it closes. All of it takes at most [`LINGER`].

use std::time::Duration;

use herald_core::error::error_body;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::Refusal;

/// How long a refused socket may take to send its request before it is answered anyway.
/// (A client sends its request right after connecting: it arrives within one round trip.)
pub const WAIT_FOR_REQUEST: Duration = Duration::from_millis(500);
/// The longest a refused socket is kept open.
pub const LINGER: Duration = Duration::from_secs(2);

/// The bytes of the HTTP response for `refusal`.
pub fn response(refusal: Refusal) -> Vec<u8> {
    let code = refusal.code();
    let body = error_body(code, refusal.message());
    let reason = match code.http_status() {
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: {}\r\nconnection: close\r\n\r\n{body}",
        code.http_status(),
        body.len(),
        refusal.retry_after_secs(),
    )
    .into_bytes()
}

/// Answers a socket refused at accept (see the module docs).
pub async fn answer(mut stream: TcpStream, refusal: Refusal) {
    let mut first = [0u8; 512];
    let _ = tokio::time::timeout(WAIT_FOR_REQUEST, stream.read(&mut first)).await;
    write_and_close(stream, &response(refusal)).await;
}

/// Writes a final response and closes. Whatever else the client sends is read and dropped for a
/// moment (at most 64 KiB, within [`LINGER`]), so that closing does not reset the connection
/// under the response.
pub async fn write_and_close(mut stream: TcpStream, response: &[u8]) {
    let bounded = async {
        stream.write_all(response).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, bounded).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_status_code_and_retry_after() {
        let text = String::from_utf8(response(Refusal::RateLimited {
            retry_after: Duration::from_millis(1200),
        }))
        .expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nretry-after: 2\r\n"), "{text}");
        assert!(
            text.ends_with(
                r#""code":"rate_limited","message":"too many new connections from this address"}}"#
            ),
            "{text}"
        );
        let text = String::from_utf8(response(Refusal::OverCapacity)).expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("over_capacity"), "{text}");
    }
}
