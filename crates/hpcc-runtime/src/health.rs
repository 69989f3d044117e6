//! Noticing a session that stopped answering.
//!
//! A guest can fail in ways that leave a job's connection open and silent: its agent dead (the
//! kernel then panics, and `panic=-1` with `-no-reboot` ends QEMU), its kernel hung, the VMM or
//! the vsock backend killed or frozen. The job's own deadline (the job timeout plus
//! [`crate::agent_client::ANSWER_GRACE`]) would end it eventually, but a compile may take
//! minutes. [`watch`] runs beside a job instead and resolves as soon as the session is found
//! broken: at once when one of its host processes has exited ([`Session::is_alive`]), else when
//! [`HealthPolicy::failures`] pings in a row get no welcome within
//! [`HealthPolicy::ping_timeout`]. A ping is a fresh connection that says hello and waits for
//! the agent's welcome ([`Session::ping`]): the agent answers it from its own task
//! whatever its jobs are doing, so a busy guest still answers and a stuck one does not.

use std::time::Duration;

use crate::{RuntimeError, Session};

/// How often, and how patiently, a session is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// How often the session's host processes are looked at.
    pub interval: Duration,
    /// A ping every this many intervals.
    pub ping_every: u32,
    /// How long a ping may take.
    pub ping_timeout: Duration,
    /// Failed pings in a row that make a session broken.
    pub failures: u32,
}

impl Default for HealthPolicy {
    /// Processes every 500 ms, a ping every 2 s with 5 s to answer, broken after 2 failed
    /// pings: a dead VMM is noticed within half a second, a frozen guest within about 12 s,
    /// and a guest slowed by software emulation on a loaded host is not taken for dead.
    fn default() -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_millis(500),
            ping_every: 4,
            ping_timeout: Duration::from_secs(5),
            failures: 2,
        }
    }
}

/// One health check: the session's processes run and its agent welcomes a ping in time.
pub async fn check(session: &dyn Session, timeout: Duration) -> Result<(), RuntimeError> {
    if !session.is_alive() {
        return Err(broken(session, EXITED.into()));
    }
    match tokio::time::timeout(timeout, session.ping(timeout)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(broken(
            session,
            format!("its agent did not answer a ping: {error}"),
        )),
        Err(_) => Err(broken(
            session,
            format!(
                "its agent did not answer a ping within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// A check [`watch_with`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Whether the session's host processes still run ([`Session::is_alive`]).
    Alive,
    /// A full [`check`] within this time.
    Ping(Duration),
}

/// Resolves, with why, once `session` is broken by `policy`'s rules; pending while it is well.
pub async fn watch(session: &dyn Session, policy: HealthPolicy) -> RuntimeError {
    watch_with(policy, |probe| async move {
        match probe {
            Probe::Alive if session.is_alive() => Ok(()),
            Probe::Alive => Err(broken(session, EXITED.into())),
            Probe::Ping(timeout) => check(session, timeout).await,
        }
    })
    .await
}

/// [`watch`] for a session reached through `probe` (for callers that must not hold the session
/// between checks, such as a pool that stops it from another task).
pub async fn watch_with<F, Fut>(policy: HealthPolicy, mut probe: F) -> RuntimeError
where
    F: FnMut(Probe) -> Fut,
    Fut: std::future::Future<Output = Result<(), RuntimeError>>,
{
    let mut failed = 0;
    let mut tick: u32 = 0;
    loop {
        tokio::time::sleep(policy.interval).await;
        tick = tick.wrapping_add(1);
        if let Err(error) = probe(Probe::Alive).await {
            return error;
        }
        if !tick.is_multiple_of(policy.ping_every.max(1)) {
            continue;
        }
        match probe(Probe::Ping(policy.ping_timeout)).await {
            Ok(()) => failed = 0,
            Err(error) => {
                failed += 1;
                tracing::warn!(%error, failed, "health check failed");
                if failed >= policy.failures.max(1) {
                    return error;
                }
            }
        }
    }
}

const EXITED: &str = "its VMM or device backend has exited";

fn broken(session: &dyn Session, why: String) -> RuntimeError {
    RuntimeError::Agent {
        session: session.id().to_owned(),
        message: format!("session stopped answering: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use hpcc_proto::agent::{agent_message, AgentMessage, AgentWelcome, HostMessage};
    use hpcc_proto::AGENT_PROTOCOL_VERSION;

    use super::*;
    use crate::AgentStream;
    use hpcc_core::frame::asynchronous::{read_frame, write_frame};
    use hpcc_proto::MAX_AGENT_FRAME_LEN;

    /// A session whose agent is an in-memory task: it welcomes, stays silent, or is gone.
    struct Fake {
        alive: AtomicBool,
        answer: AtomicBool,
        pings: Arc<AtomicU32>,
    }

    #[async_trait]
    impl Session for Fake {
        fn id(&self) -> &str {
            "fake"
        }

        async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
            let (host, mut agent) = tokio::io::duplex(4096);
            let answer = self.answer.load(Ordering::SeqCst);
            let pings = Arc::clone(&self.pings);
            tokio::spawn(async move {
                let hello: Option<HostMessage> = read_frame(&mut agent, MAX_AGENT_FRAME_LEN)
                    .await
                    .ok()
                    .flatten();
                if hello.is_none() {
                    return;
                }
                pings.fetch_add(1, Ordering::SeqCst);
                if !answer {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let welcome = AgentMessage {
                    kind: Some(agent_message::Kind::Welcome(AgentWelcome {
                        protocol_version: AGENT_PROTOCOL_VERSION,
                        agent_version: "test".into(),
                    })),
                };
                let _ = write_frame(&mut agent, &welcome, MAX_AGENT_FRAME_LEN).await;
            });
            Ok(Box::new(host))
        }

        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::SeqCst)
        }

        async fn stop(self: Box<Self>) -> Result<(), RuntimeError> {
            Ok(())
        }
    }

    fn fake(alive: bool, answer: bool) -> Fake {
        Fake {
            alive: AtomicBool::new(alive),
            answer: AtomicBool::new(answer),
            pings: Arc::new(AtomicU32::new(0)),
        }
    }

    fn quick() -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_millis(10),
            ping_every: 2,
            ping_timeout: Duration::from_millis(100),
            failures: 2,
        }
    }

    #[tokio::test]
    async fn a_healthy_session_is_never_reported() {
        let session = fake(true, true);
        let watched = tokio::time::timeout(Duration::from_millis(500), watch(&session, quick()));
        assert!(
            watched.await.is_err(),
            "watch resolved for a healthy session"
        );
        assert!(session.pings.load(Ordering::SeqCst) >= 5, "it was pinged");
        check(&session, Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_process_is_noticed_at_the_next_interval() {
        let session = fake(false, true);
        let error = tokio::time::timeout(Duration::from_secs(5), watch(&session, quick()))
            .await
            .expect("noticed");
        assert!(error.to_string().contains("exited"), "{error}");
        assert_eq!(session.pings.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_silent_agent_is_broken_after_the_failures_in_a_row() {
        let session = fake(true, false);
        let error = tokio::time::timeout(Duration::from_secs(5), watch(&session, quick()))
            .await
            .expect("noticed");
        assert!(
            error.to_string().contains("did not answer a ping"),
            "{error}"
        );
        assert_eq!(
            session.pings.load(Ordering::SeqCst),
            2,
            "two pings, no more"
        );
        let error = check(&session, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("stopped answering"), "{error}");
    }
}
