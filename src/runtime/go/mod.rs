//! The Go runtime, read from outside: its function table (`pclntab`, which survives
//! stripping), the shape of its stacks (`frames`), its goroutines (`goroutines`, read by
//! a sampler) and its own scheduler statistics (`sched`).

pub mod binary;
pub mod classify;
pub mod frames;
pub mod goroutines;
pub mod offsets;
pub mod pclntab;
pub mod report;
pub mod running;
pub mod sched;
