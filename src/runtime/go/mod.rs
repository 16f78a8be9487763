//! The Go runtime, read from outside: its function table (`pclntab`, which survives
//! stripping) and the shape of its stacks (`frames`).

pub mod frames;
pub mod pclntab;
