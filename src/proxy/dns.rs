//! Upstream name resolution off the event loop. `getaddrinfo` blocks, and a blocked loop
//! stalls every stream, so one helper thread resolves and wakes the loop with the answer.
//! The loop coalesces: at most one lookup is in flight, and its answer serves every request
//! that was waiting for it.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

pub(crate) type Answer = Result<Vec<SocketAddr>, String>;

pub(crate) struct Resolver {
    requests: Sender<()>,
    answers: Receiver<Answer>,
}

impl Resolver {
    /// Starts the helper thread. It exits when the loop (and so `requests`) goes away.
    pub(crate) fn start(host: String, port: u16, waker: Arc<mio::Waker>) -> io::Result<Resolver> {
        let (req_tx, req_rx) = channel::<()>();
        let (ans_tx, ans_rx) = channel::<Answer>();
        std::thread::Builder::new()
            .name("proxy-dns".into())
            .spawn(move || {
                crate::sys::block_signals_in_thread();
                for () in req_rx {
                    let answer = match (host.as_str(), port).to_socket_addrs() {
                        Ok(addrs) => {
                            let addrs: Vec<SocketAddr> = addrs.collect();
                            if addrs.is_empty() {
                                Err("no addresses".to_string())
                            } else {
                                Ok(addrs)
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    if ans_tx.send(answer).is_err() {
                        break;
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("proxy: cannot wake the event loop after a DNS answer: {e}");
                    }
                }
            })?;
        Ok(Resolver {
            requests: req_tx,
            answers: ans_rx,
        })
    }

    /// Asks for one lookup of the upstream name.
    pub(crate) fn request(&self) -> Result<(), String> {
        self.requests
            .send(())
            .map_err(|_| "the DNS helper thread is gone".to_string())
    }

    /// The next answer, if one arrived.
    pub(crate) fn try_answer(&self) -> Option<Answer> {
        match self.answers.try_recv() {
            Ok(a) => Some(a),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err("the DNS helper thread is gone".into())),
        }
    }
}
