//! The generated BPF skeletons (from `bpf/waitprof.bpf.c` and, in `sockets`, from
//! `bpf/sockets.bpf.c`; built by `build.rs`), and the `plain` impls that let user space
//! read the shared types out of maps, ring buffers and iterators.
#![allow(
    clippy::all,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    unused_imports
)]

include!(concat!(env!("OUT_DIR"), "/waitprof.skel.rs"));

pub use types::{agg_key, agg_val, thread_state, wp_kind, wp_outcome, wp_stack_marker, wp_stat};
pub use types::{waiter_key, wp_listener, wp_oncpu_key, wp_poll, wp_sysclass, wp_thread_flag};
pub use types::{wp_event, wp_event_type, wp_running, wp_waker, wp_waker_ctx};

// SAFETY: plain-old-data structs generated from BTF, valid for any bit pattern.
unsafe impl plain::Plain for types::agg_key {}
unsafe impl plain::Plain for types::agg_val {}
unsafe impl plain::Plain for types::thread_state {}
unsafe impl plain::Plain for types::waiter_key {}
unsafe impl plain::Plain for types::wp_listener {}
unsafe impl plain::Plain for types::wp_poll {}
unsafe impl plain::Plain for types::wp_oncpu_key {}
unsafe impl plain::Plain for types::wp_event {}
unsafe impl plain::Plain for types::wp_running {}

/// The off-CPU thread snapshot's skeleton (bpf/snapshot.bpf.c).
pub mod snapshot {
    include!(concat!(env!("OUT_DIR"), "/snapshot.skel.rs"));

    pub use types::wp_snapshot;

    // SAFETY: plain-old-data generated from BTF, valid for any bit pattern.
    unsafe impl plain::Plain for types::wp_snapshot {}
}

/// The socket iterator's skeleton.
/// (The lints allowed above cover it too.)
pub mod sockets {
    include!(concat!(env!("OUT_DIR"), "/sockets.skel.rs"));

    pub use types::wp_listen_sample;

    // SAFETY: plain-old-data generated from BTF, valid for any bit pattern.
    unsafe impl plain::Plain for types::wp_listen_sample {}
}
