//! bottle-init: a PID 1 for Claude Code containers that keeps the upstream credential in a
//! process the child cannot read, and serves it to the child through a local proxy.
//!
//! [`start`] is the whole program (src/main.rs only calls [`start::main`]): it reads as the
//! start-up sequence. The library's public surface is what the integration tests and the fuzz
//! targets drive in-process: [`start`], [`proxy`], [`http`], [`egress`] and [`secret`];
//! every other module is private.
//!
//! Layers (a module imports only from the ones before it): `sys` < `secret`, `user`, `cli`,
//! `fdlimit`, `privilege`, `init`, `logging`, `egress::{addr, seccomp, nft, apisock, json}` <
//! `scrub`, `home`, `relay`, `egress::mode` < `config`, `egress::policy`, `child`,
//! `secretfile` < `egress::{resolve, lock}`, `recipe` < `record`, `http` < `proxy` < `failure`
//! < `start`.
//!
//! `unsafe` is denied everywhere but in `sys` (every raw system call) and the two places its
//! module doc names: `scrub` (the environment block) and `child::spawn`'s call of `sys::fork`.
//! The compiler enforces it: any other `unsafe` is an error.

#![deny(unsafe_code)]

mod child;
mod cli;
mod config;
pub mod egress;
mod failure;
mod fdlimit;
mod home;
// Its unit tests count allocations with a GlobalAlloc (test builds only).
#[cfg_attr(test, allow(unsafe_code))]
pub mod http;
mod init;
mod logging;
mod privilege;
pub mod proxy;
mod recipe;
mod record;
mod relay;
#[allow(unsafe_code)]
mod scrub;
pub mod secret;
mod secretfile;
pub mod start;
#[allow(unsafe_code)]
mod sys;
mod user;
