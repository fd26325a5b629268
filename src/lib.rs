//! bottle-init: a PID 1 for Claude Code containers that keeps the upstream credential in a
//! process the child cannot read, and serves it to the child through a local proxy.
//!
//! The binary (src/main.rs) is the init half; the library exposes the modules so integration
//! tests can drive pure pieces (HTTP parsing, the proxy) in-process.

pub mod child;
pub mod cli;
pub mod config;
pub mod egress;
pub mod envclean;
pub mod exec;
pub mod fdlimit;
pub mod home;
pub mod http;
pub mod init;
pub mod logging;
pub mod privilege;
pub mod proxy;
pub mod relay;
pub mod runinfo;
pub mod scrub;
pub mod secret;
pub mod secretfile;
pub mod sys;
pub mod user;
