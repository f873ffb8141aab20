//! kbuild: add a system call to a Linux kernel tree, build the kernel, boot
//! it and prove that the call works.
//!
//! The pipeline, in the order it runs: `project` (the project file),
//! `source` (the kernel tree), `patch` (syscall table and body), `build`
//! (config and make), `verify` (boot and check). `commands` maps each
//! subcommand onto these steps; `ui` owns all output for the user.

pub mod build;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod exit;
pub mod guest;
pub mod host;
pub mod image;
pub mod logging;
pub mod patch;
pub mod paths;
pub mod profile;
pub mod project;
pub mod process_tree;
pub mod provision;
pub mod run;
pub mod source;
pub mod ssh;
pub mod template;
pub mod ui;
pub mod verify;
pub mod vm;
