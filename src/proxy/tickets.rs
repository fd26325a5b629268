//! The TLS session store of the upstream client: rustls' in-memory cache, except that it keeps
//! up to [`MAX_TICKETS`] TLS 1.3 tickets for the upstream instead of rustls' fixed 8 per
//! server. A ticket resumes one connection only, so after a burst of more than 8 new
//! connections (many concurrent clients and an empty pool) the rest would do full handshakes.

use std::collections::VecDeque;
use std::sync::Mutex;

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;

/// TLS 1.3 tickets kept per server (one upstream in practice); each is a few hundred bytes.
pub(crate) const MAX_TICKETS: usize = 256;

#[derive(Debug)]
pub(crate) struct TicketStore {
    /// Key exchange hints and TLS 1.2 sessions.
    inner: ClientSessionMemoryCache,
    /// Oldest first, per server name.
    tls13: Mutex<Vec<(ServerName<'static>, VecDeque<Tls13ClientSessionValue>)>>,
    max: usize,
}

impl TicketStore {
    pub(crate) fn new(max: usize) -> TicketStore {
        TicketStore {
            inner: ClientSessionMemoryCache::new(32),
            tls13: Mutex::new(Vec::new()),
            max,
        }
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut map = self.tls13.lock().unwrap_or_else(|p| p.into_inner());
        let i = match map.iter().position(|(n, _)| *n == server_name) {
            Some(i) => i,
            None => {
                // The proxy talks to one upstream; a handful of names at most.
                if map.len() >= 8 {
                    map.remove(0);
                }
                map.push((server_name, VecDeque::new()));
                map.len() - 1
            }
        };
        let q = &mut map[i].1;
        if q.len() >= self.max {
            q.pop_front();
        }
        q.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut map = self.tls13.lock().unwrap_or_else(|p| p.into_inner());
        let (_, q) = map.iter_mut().find(|(n, _)| n == server_name)?;
        // The newest ticket is the least likely to have expired.
        q.pop_back()
    }
}
