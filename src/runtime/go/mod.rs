//! The Go runtime, read from outside: its function table (`pclntab`, which survives
//! stripping) and the shape of its stacks (`frames`).

pub mod binary;
pub mod classify;
pub mod frames;
pub mod goroutines;
pub mod offsets;
pub mod pclntab;
pub mod report;
