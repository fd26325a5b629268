//! The proxy's one resolver: name lookups off the event loop, for the upstream and for CONNECT
//! tunnels. `getaddrinfo` blocks, and a blocked loop stalls every stream, so helper threads
//! resolve and wake the loop through its `Waker`; the loop collects what arrived with
//! [`Resolver::answers`]. Two lanes share the one answer queue:
//! - the upstream name: one thread, coalesced: at most one lookup in flight, and its answer
//!   serves every exchange that asked while it ran. The list of who waits is kept here and
//!   nowhere else (a connection only knows it has no upstream yet);
//! - CONNECT names (`allowlist`): a queue bounded at [`MAX_LOOKUPS`] lookups waiting or
//!   running, so a flood of CONNECTs costs no more than that; threads start on demand, up to
//!   one per lookup (a slow name never delays another), and leave after [`IDLE_EXIT`] without
//!   work. Each lookup is checked by `crate::egress::resolve::resolve_grant`: what it returns is
//!   all the tunnel may connect to.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mio::Waker;

use crate::egress::policy::Grant;
use crate::egress::resolve::{ResolveError, Resolved, resolve_grant};

/// CONNECT lookups waiting or running at once; one more is refused (503).
pub(crate) const MAX_LOOKUPS: usize = 64;
/// A CONNECT lookup thread with nothing to do this long exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A lookup result, as the loop receives it.
pub(crate) enum Answer {
    /// The upstream's addresses (or why not), for every client that asked.
    Upstream {
        waiting: Vec<u64>,
        result: Result<Vec<SocketAddr>, String>,
    },
    /// A CONNECT target's allowed addresses, for the client that asked.
    Connect {
        id: u64,
        result: Result<Resolved, ResolveError>,
    },
}

enum Done {
    Upstream(Result<Vec<SocketAddr>, String>),
    Connect(u64, Result<Resolved, ResolveError>),
}

/// The CONNECT lane's shared queue.
struct Lane {
    state: Mutex<LaneState>,
    ready: Condvar,
}

struct LaneState {
    jobs: VecDeque<(u64, Grant)>,
    /// Threads waiting for a job.
    idle: usize,
    threads: usize,
}

/// Why a CONNECT lookup was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`MAX_LOOKUPS`] are already waiting or running.
    Full,
    /// This proxy serves no tunnels.
    NoTunnels,
}

pub(crate) struct Resolver {
    upstream_requests: Sender<()>,
    done_tx: Sender<Done>,
    done: Receiver<Done>,
    waker: Arc<Waker>,
    upstream_in_flight: bool,
    upstream_waiting: Vec<u64>,
    lane: Option<Arc<Lane>>,
    /// CONNECT lookups queued or running (the loop's count; the cap applies to it).
    connect_pending: usize,
}

impl Resolver {
    /// Starts the upstream lookup thread (it exits when the resolver goes away); `tunnels`:
    /// also serve CONNECT lookups.
    pub(crate) fn start(
        host: String,
        port: u16,
        waker: Arc<Waker>,
        tunnels: bool,
    ) -> io::Result<Resolver> {
        let (upstream_requests, requests) = channel::<()>();
        let (done_tx, done) = channel::<Done>();
        let (tx, wake) = (done_tx.clone(), waker.clone());
        std::thread::Builder::new()
            .name("proxy-dns".into())
            .spawn(move || {
                crate::sys::block_signals_in_thread();
                for () in requests {
                    let result = lookup(&host, port);
                    if tx.send(Done::Upstream(result)).is_err() {
                        break;
                    }
                    notify(&wake);
                }
            })?;
        let lane = tunnels.then(|| {
            Arc::new(Lane {
                state: Mutex::new(LaneState {
                    jobs: VecDeque::new(),
                    idle: 0,
                    threads: 0,
                }),
                ready: Condvar::new(),
            })
        });
        Ok(Resolver {
            upstream_requests,
            done_tx,
            done,
            waker,
            upstream_in_flight: false,
            upstream_waiting: Vec::new(),
            lane,
            connect_pending: 0,
        })
    }

    /// Client `id` needs the upstream's addresses: joins the lookup in flight, or starts one.
    pub(crate) fn upstream(&mut self, id: u64) {
        self.upstream_waiting.push(id);
        if self.upstream_in_flight {
            return;
        }
        if self.upstream_requests.send(()).is_ok() {
            self.upstream_in_flight = true;
        } else {
            // Answered at the next `answers`; the waker makes sure that comes.
            let _ = self
                .done_tx
                .send(Done::Upstream(Err("the DNS helper thread is gone".into())));
            self.upstream_in_flight = true;
            notify(&self.waker);
        }
    }

    /// Client `id` wants a tunnel to `grant`: queued, unless [`MAX_LOOKUPS`] already are.
    pub(crate) fn connect(&mut self, id: u64, grant: Grant) -> Result<(), Refused> {
        let Some(lane) = &self.lane else {
            return Err(Refused::NoTunnels);
        };
        if self.connect_pending >= MAX_LOOKUPS {
            return Err(Refused::Full);
        }
        let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
        st.jobs.push_back((id, grant));
        if st.jobs.len() > st.idle && st.threads < MAX_LOOKUPS {
            let (lane2, tx, wake) = (lane.clone(), self.done_tx.clone(), self.waker.clone());
            let spawned = std::thread::Builder::new()
                .name("proxy-connect-dns".into())
                .spawn(move || connect_worker(&lane2, &tx, &wake));
            match spawned {
                Ok(_) => st.threads += 1,
                // The queued job waits for a running thread, if there is one.
                Err(e) if st.threads > 0 => {
                    log::warn!("proxy: cannot start another lookup thread: {e}");
                }
                Err(e) => {
                    st.jobs.pop_back();
                    log::error!("proxy: cannot start a lookup thread: {e}");
                    return Err(Refused::Full);
                }
            }
        }
        drop(st);
        lane.ready.notify_one();
        self.connect_pending += 1;
        Ok(())
    }

    /// Everything answered since the last call.
    pub(crate) fn answers(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        while let Ok(done) = self.done.try_recv() {
            out.push(match done {
                Done::Upstream(result) => {
                    self.upstream_in_flight = false;
                    Answer::Upstream {
                        waiting: std::mem::take(&mut self.upstream_waiting),
                        result,
                    }
                }
                Done::Connect(id, result) => {
                    self.connect_pending = self.connect_pending.saturating_sub(1);
                    Answer::Connect { id, result }
                }
            });
        }
        out
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // Idle CONNECT threads notice at their next wake-up that nobody listens any more.
        if let Some(lane) = &self.lane {
            lane.ready.notify_all();
        }
    }
}

fn notify(waker: &Waker) {
    if let Err(e) = waker.wake() {
        log::error!("proxy: cannot wake the event loop after a DNS answer: {e}");
    }
}

fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("no addresses".to_string())
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

fn connect_worker(lane: &Lane, done: &Sender<Done>, waker: &Waker) {
    crate::sys::block_signals_in_thread();
    loop {
        let (id, grant) = {
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                st.idle += 1;
                let (guard, wait) = lane
                    .ready
                    .wait_timeout(st, IDLE_EXIT)
                    .unwrap_or_else(|p| p.into_inner());
                st = guard;
                st.idle -= 1;
                // Decided under the lock, so a job queued meanwhile is seen here or by a
                // thread the queue side starts: never left behind.
                if wait.timed_out() && st.jobs.is_empty() {
                    st.threads -= 1;
                    return;
                }
            }
        };
        let result = resolve_grant(&grant);
        if done.send(Done::Connect(id, result)).is_err() {
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            st.threads -= 1;
            return;
        }
        notify(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::mode::AllowList;
    use crate::egress::policy::decide_connect;
    use std::time::Instant;

    fn waker() -> (mio::Poll, Arc<Waker>) {
        let poll = mio::Poll::new().unwrap();
        let w = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (poll, w)
    }

    fn wait_for(r: &mut Resolver, n: usize) -> Vec<Answer> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < n && start.elapsed() < Duration::from_secs(10) {
            got.extend(r.answers());
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// One upstream lookup serves every client that asked while it was in flight.
    #[test]
    fn upstream_lookups_are_coalesced() {
        let (_poll, w) = waker();
        let mut r = Resolver::start("localhost".into(), 443, w, false).unwrap();
        r.upstream(1);
        r.upstream(2);
        r.upstream(3);
        let got = wait_for(&mut r, 1);
        assert_eq!(got.len(), 1, "one lookup for three clients");
        match &got[0] {
            Answer::Upstream { waiting, result } => {
                assert_eq!(waiting, &[1, 2, 3]);
                let addrs = result.as_ref().unwrap();
                assert!(
                    addrs
                        .iter()
                        .all(|a| a.ip().is_loopback() && a.port() == 443)
                );
            }
            Answer::Connect { .. } => panic!("a CONNECT answer"),
        }
        // A later client starts a new lookup.
        r.upstream(4);
        match &wait_for(&mut r, 1)[0] {
            Answer::Upstream { waiting, .. } => assert_eq!(waiting, &[4]),
            Answer::Connect { .. } => panic!("a CONNECT answer"),
        }
        assert_eq!(
            r.connect(5, grant("1.1.1.1", "1.1.1.1:443")),
            Err(Refused::NoTunnels)
        );
    }

    fn grant(list: &str, target: &str) -> Grant {
        decide_connect(target, &AllowList::parse(list).unwrap()).unwrap()
    }

    /// CONNECT lookups are answered per client, checked by the policy, and bounded.
    #[test]
    fn connect_lookups_are_answered_per_client_and_bounded() {
        let (_poll, w) = waker();
        let mut r = Resolver::start("localhost".into(), 443, w, true).unwrap();
        r.connect(7, grant("1.1.1.1", "1.1.1.1:443")).unwrap();
        r.connect(8, grant("localhost", "localhost:443")).unwrap();
        let mut got = wait_for(&mut r, 2);
        got.sort_by_key(|a| match a {
            Answer::Connect { id, .. } => *id,
            Answer::Upstream { .. } => 0,
        });
        match &got[..] {
            [
                Answer::Connect {
                    id: 7,
                    result: Ok(ok),
                },
                Answer::Connect {
                    id: 8,
                    result: Err(ResolveError::Denied(d)),
                },
            ] => {
                assert_eq!(ok.allowed, ["1.1.1.1:443".parse().unwrap()]);
                assert!(d.to_string().contains("loopback"), "{d}");
            }
            _ => panic!("unexpected answers"),
        }
        // The cap counts lookups not yet collected by the loop.
        for id in 0..MAX_LOOKUPS as u64 {
            r.connect(id, grant("1.1.1.1", "1.1.1.1:443")).unwrap();
        }
        assert_eq!(
            r.connect(99, grant("1.1.1.1", "1.1.1.1:443")),
            Err(Refused::Full)
        );
        assert_eq!(wait_for(&mut r, MAX_LOOKUPS).len(), MAX_LOOKUPS);
        r.connect(100, grant("1.1.1.1", "1.1.1.1:443")).unwrap();
        assert_eq!(wait_for(&mut r, 1).len(), 1);
    }
}
