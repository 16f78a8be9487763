//! What waitprof knows about the language runtimes its targets run on: how they lay out
//! their stacks and their own bookkeeping, read from outside the process.

pub mod go;
