//! A QMP client: the QEMU Machine Protocol over a session's control socket, for the few
//! commands a snapshot and a restore need (`stop`, `migrate`, `query-migrate`,
//! `query-status`, `cont`).
//!
//! QMP is JSON lines: QEMU greets, the client sends `qmp_capabilities`, then each command gets
//! a `return` or an `error`, with asynchronous `event` lines interleaved, which are skipped.
//! The `qapi` crate (with its `qmp` and `async-tokio-net` features) was considered: its
//! `qapi-qmp` types are generated from a whole QEMU QAPI schema (one QEMU release's), a large
//! build on a small machine for five commands whose replies are each read for one field, and
//! it was not added (no crate for QMP is in the lock file yet). A hundred lines over
//! `serde_json`, already a dependency, do the job and report QEMU's own error text.

use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The longest line accepted from QEMU (replies here are small; events too).
const MAX_LINE: u64 = 1 << 20;

/// How long one command may take to be answered (`migrate` itself returns at once).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A QMP connection past capability negotiation.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path` and enters command mode.
    pub async fn connect(path: &Path) -> io::Result<Qmp> {
        let stream = UnixStream::connect(path).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("connecting to QMP at {}: {error}", path.display()),
            )
        })?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(invalid(format!("QMP greeting expected, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value; QEMU's error is an error naming it.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> io::Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let message = self.read_message().await?;
                if let Some(value) = message.get("return") {
                    return Ok(value.clone());
                }
                if let Some(error) = message.get("error") {
                    let text = error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description");
                    return Err(io::Error::other(format!("QMP {command}: {text}")));
                }
                // An event: not the answer.
            }
        })
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "QMP {command}: no answer in {} s",
                    COMMAND_TIMEOUT.as_secs()
                ),
            )
        })?
    }

    async fn read_message(&mut self) -> io::Result<Value> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QEMU closed its QMP socket",
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(invalid(format!(
                "QMP line longer than {MAX_LINE} bytes or cut short"
            )));
        }
        serde_json::from_slice(&line)
            .map_err(|error| invalid(format!("QMP sent something that is not JSON: {error}")))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QEMU stand-in that greets, then answers each line with the next of `replies`.
    fn qemu(path: &Path, replies: Vec<&'static str>) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            writer
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let Some(line) = lines.next_line().await.unwrap() else {
                    break;
                };
                seen.push(line);
                writer.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        })
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = qemu(
            &path,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"STOP\"}\n{\"return\": {}}\n",
                "{\"return\": {\"status\": \"completed\"}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"State blocked\"}}\n",
            ],
        );
        let mut qmp = Qmp::connect(&path).await.unwrap();
        assert_eq!(qmp.execute("stop", None).await.unwrap(), json!({}));
        let status = qmp.execute("query-migrate", None).await.unwrap();
        assert_eq!(status["status"], "completed");
        let error = qmp
            .execute("migrate", Some(json!({"uri": "unix:/x"})))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "QMP migrate: State blocked");
        let seen = server.await.unwrap();
        assert_eq!(seen[0], "{\"execute\":\"qmp_capabilities\"}");
        assert_eq!(
            seen[3],
            "{\"arguments\":{\"uri\":\"unix:/x\"},\"execute\":\"migrate\"}"
        );
    }

    #[tokio::test]
    async fn garbage_and_hangups_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _server = qemu(&path, vec!["not json\n"]);
        let error = Qmp::connect(&path).await.unwrap_err();
        assert!(error.to_string().contains("not JSON"), "{error}");
        let path = dir.path().join("gone.sock");
        let _server = qemu(&path, vec![]);
        let error = Qmp::connect(&path).await.unwrap_err();
        // Gone after its greeting: the request or the wait for its answer fails.
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
            ),
            "{error}"
        );
    }
}
