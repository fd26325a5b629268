//! bottle-init: a PID 1 for Claude Code containers that keeps the upstream credential in a
//! process the child cannot read, and serves it to the child through a local proxy.
//!
//! The binary (src/main.rs) is the init half; the library exposes the modules so integration
//! tests can drive pure pieces (HTTP parsing, the proxy) in-process.
//!
//! `unsafe` is denied everywhere but in [`sys`] (every raw system call) and the two places
//! its module doc names: [`scrub`] (the environment block) and [`child::spawn`]'s call of
//! `sys::fork`. The compiler enforces it: any other `unsafe` is an error.

#![deny(unsafe_code)]

pub mod child;
pub mod cli;
pub mod config;
pub mod egress;
pub mod failure;
pub mod fdlimit;
pub mod home;
// Its unit tests count allocations with a GlobalAlloc (test builds only).
#[cfg_attr(test, allow(unsafe_code))]
pub mod http;
pub mod init;
pub mod logging;
pub mod privilege;
pub mod proxy;
pub mod recipe;
pub mod record;
pub mod relay;
#[allow(unsafe_code)]
pub mod scrub;
pub mod secret;
pub mod secretfile;
#[allow(unsafe_code)]
pub mod sys;
pub mod user;
