//! Egress lockdown (issue 5): what the child may reach on the network.
//!
//! The modes (`BOTTLE_EGRESS`):
//! - `open`: no restriction (the default; init logs that egress is not restricted).
//! - `api-only`: the child's process tree has no IP network at all. [`seccomp`] refuses every
//!   socket family but `AF_UNIX` and `AF_NETLINK` and closes the known bypasses; claude reaches
//!   the API over a Unix socket ([`apisock`]) served by the proxy.
//! - `allowlist`: the kernel lets the child's uid send only to the proxy's loopback port
//!   ([`nft`]); the proxy serves HTTP CONNECT to the hosts in `BOTTLE_ALLOW_HOSTS`
//!   ([`mode::AllowList`]), deciding each tunnel with [`policy`] and resolving names at each
//!   connection with [`resolve`].
//!
//! [`lock`] is the init side: [`lock::check`] (nothing installed yet) and [`lock::lock`],
//! which returns what it made (the API socket's listener, the allowlist) for main to hand to
//! the proxy. The child's side of a mode (environment, seccomp
//! filter) is `crate::recipe`'s; the proxy's CONNECT side is `crate::proxy` (tunnel.rs). No
//! module here imports the proxy.
//!
//! Pure parsing and policy (`addr`, `mode`, `policy`) live apart from the mechanisms
//! (`seccomp`, `nft`, `apisock`, `resolve`), which are the only files here that touch the
//! kernel or the network. Imports go one way: `addr` < `mode` < `policy` < `resolve`;
//! `seccomp`, `nft`, `apisock` < `lock`.

pub mod addr;
pub mod apisock;
pub mod json;
pub mod lock;
pub mod mode;
pub mod nft;
pub mod policy;
pub mod resolve;
pub mod seccomp;

pub use addr::{AddrClass, classify};
pub use mode::{AllowEntry, AllowList, EgressConfig, EgressMode, HostPattern};
pub use policy::{Deny, Grant, TargetHost, check_resolved, decide_connect};
