//! One integration-test binary: the pure pipeline (golden files) and, as root, waitprof
//! itself profiling fixtures with known blocking.
mod suite;
