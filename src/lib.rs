//! bottle-init: a PID 1 for Claude Code containers that keeps the upstream credential in a
//! process the child cannot read, and serves it to the child through a local proxy.
//!
//! [`start`] is the whole program (src/main.rs only calls [`start::main`]): it reads as the
//! start-up sequence. The library's public surface is what the integration tests and the fuzz
//! targets drive in-process: [`start`], [`proxy`], [`http`], [`egress`] and [`secret`];
//! every other module is private.
//!
//! Layers (a module imports only from layers before its own; `scripts/import-graph` finds no
//! cycle):
//! 1. `sys` (raw system calls), `egress::addr`, `egress::json`, `cli`, `user`;
//! 2. `secret`, `fdlimit`, `privilege`, `init`, `logging`, `home`, `egress::mode`,
//!    `egress::seccomp`, `egress::nft`, `egress::apisock`;
//! 3. `scrub`, `relay`, `secretfile`, `child`, `egress::policy`;
//! 4. `config`, `egress::resolve`, `egress::lock`;
//! 5. `recipe`, `http`;
//! 6. `record`, `proxy`;
//! 7. `failure`, `status`;
//! 8. `check` (its pure `check::report` and `check::verdict`, and `check::probe`, which it
//!    runs as the child user);
//! 9. `start`, then the binary.
//!
//! `unsafe` is denied everywhere but in `sys` (every raw system call) and the two places its
//! module doc names: `scrub` (the environment block) and `child::spawn`'s call of `sys::fork`
//! (and, in test builds only, `http`'s allocation-counting test allocator). The compiler
//! enforces it: any other `unsafe` is an error.

#![deny(unsafe_code)]

mod check;
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
mod status;
#[allow(unsafe_code)]
mod sys;
mod user;
