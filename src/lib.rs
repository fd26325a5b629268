//! bottle-init: a PID 1 for Claude Code containers that keeps the upstream credential in a
//! process the child cannot read, and serves it to the child through a local proxy.
//!
//! The binary (src/main.rs) is the init half; the library exposes the modules so integration
//! tests can drive pure pieces (HTTP parsing, the proxy) in-process.

pub mod egress;
pub mod http;
pub mod proxy;
pub mod secret;
