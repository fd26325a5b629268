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
//! [`env`] says what changes in the child's environment per mode; [`setup`] is the init-side
//! sequence (validate, install at step 3, child environment and filter, the record
//! `bottle-init exec` joins). The proxy's CONNECT side is `crate::proxy` (tunnel.rs).
//!
//! Pure parsing and policy (`mode`, `policy`, `env`) live apart from the mechanisms
//! (`seccomp`, `nft`, `apisock`, `resolve`), which are the only files here that touch the
//! kernel or the network.

pub mod addr;
pub mod apisock;
pub mod env;
pub mod mode;
pub mod nft;
pub mod policy;
pub mod resolve;
pub mod seccomp;
pub mod setup;

pub use addr::{AddrClass, classify};
pub use mode::{AllowEntry, AllowList, EgressConfig, EgressMode, HostPattern};
pub use policy::{Deny, Grant, TargetHost, check_resolved, decide_connect};
