//! The HTTP clients of queue long-polls. Over HTTP/2 one client multiplexes every poll to a
//! host on one connection, and a server's `SETTINGS_MAX_CONCURRENT_STREAMS` (typically 100 to
//! 128) would then block every poll beyond it for as long as the others wait — the HTTP/2
//! client opens no second connection (RFC 9113 §9.1). So polls are spread over clients of at
//! most `ingest.polls_per_connection` polls in flight each; a client is added when all are full.
//! Over HTTP/1.1 each poll has a connection anyway and the spread changes nothing.
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The poll clients; cheap to clone.
#[derive(Clone)]
pub struct PollClients {
    inner: Arc<Inner>,
}

struct Inner {
    per_client: usize,
    make: Box<dyn Fn() -> reqwest::Result<reqwest::Client> + Send + Sync>,
    /// Each client and how many polls it carries now.
    clients: Mutex<Vec<(reqwest::Client, usize)>>,
}

/// One poll's place on a client, given back when dropped.
pub struct PollSlot {
    client: reqwest::Client,
    index: usize,
    inner: Arc<Inner>,
}

impl PollClients {
    /// Clients of at most `per_client` polls each, built alike: connect timeout, idle timeout,
    /// user agent, and HTTP/2 without negotiation when `prior_knowledge` (plain-HTTP stand-ins
    /// of Webex such as the simulator).
    pub fn new(
        per_client: usize,
        connect_timeout: Duration,
        idle_timeout: Duration,
        user_agent: &'static str,
        prior_knowledge: bool,
    ) -> reqwest::Result<Self> {
        let make = move || {
            let b = reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .pool_idle_timeout(idle_timeout)
                .user_agent(user_agent);
            if prior_knowledge {
                b.http2_prior_knowledge().build()
            } else {
                b.build()
            }
        };
        let first = make()?;
        Ok(Self {
            inner: Arc::new(Inner {
                per_client: per_client.max(1),
                make: Box::new(make),
                clients: Mutex::new(vec![(first, 0)]),
            }),
        })
    }

    /// A place for one poll: on the first client with room, else on a new client (if building
    /// one fails, the least busy existing one).
    pub fn slot(&self) -> PollSlot {
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = match clients.iter().position(|(_, n)| *n < self.inner.per_client) {
            Some(i) => i,
            None => match (self.inner.make)() {
                Ok(c) => {
                    clients.push((c, 0));
                    clients.len() - 1
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no further poll client; sharing a busy one");
                    (0..clients.len())
                        .min_by_key(|&i| clients[i].1)
                        .unwrap_or(0)
                }
            },
        };
        clients[index].1 += 1;
        PollSlot {
            client: clients[index].0.clone(),
            index,
            inner: self.inner.clone(),
        }
    }

    /// How many clients exist (each holds its own connections).
    pub fn len(&self) -> usize {
        self.inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether there is no client (never: there is always a first one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PollSlot {
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, n)) = clients.get_mut(self.index) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(per: usize) -> PollClients {
        PollClients::new(
            per,
            Duration::from_secs(1),
            Duration::from_secs(1),
            "test",
            false,
        )
        .unwrap()
    }

    #[test]
    fn polls_fill_a_client_before_the_next_and_give_their_place_back() {
        let c = clients(2);
        let a = c.slot();
        let b = c.slot();
        assert_eq!((a.index, b.index, c.len()), (0, 0, 1));
        let third = c.slot();
        assert_eq!((third.index, c.len()), (1, 2));
        drop(a);
        let again = c.slot();
        assert_eq!((again.index, c.len()), (0, 2), "a freed place is reused");
        drop((b, third, again));
        let counts: Vec<usize> = c
            .inner
            .clients
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.1)
            .collect();
        assert_eq!(counts, vec![0, 0]);
    }
}
