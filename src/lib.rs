//! kbuild: add a system call to a Linux kernel tree, build the kernel, boot
//! it and prove that the call works.
//!
//! The pipeline, in the order it runs: `project` (the project file),
//! `source` (the kernel tree), `patch` (syscall table and body), `build`
//! (config and make), `verify` (boot and check).

pub mod exit;
pub mod project;
pub mod source;
pub mod template;
pub mod ui;
