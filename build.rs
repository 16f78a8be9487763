//! Compiles the BPF programs and generates their Rust skeletons into OUT_DIR.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// Each object and the skeleton generated from it: the profiler, the socket iterator and
/// the off-CPU thread snapshot (apart, so a kernel without them still runs the profiler).
const OBJECTS: [(&str, &str); 3] = [
    ("bpf/waitprof.bpf.c", "waitprof.skel.rs"),
    ("bpf/sockets.bpf.c", "sockets.skel.rs"),
    ("bpf/snapshot.bpf.c", "snapshot.skel.rs"),
];

fn main() {
    // the program reads the syscall number from x86-64's pt_regs, and vmlinux.h is x86-64's
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch != "x86_64" {
        panic!("waitprof supports x86_64 only for now (target architecture: {arch})");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    for (src, skel) in OBJECTS {
        SkeletonBuilder::new()
            .source(src)
            .clang_args([
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wno-unused-parameter",
                "-Ibpf",
            ])
            .build_and_generate(out_dir.join(skel))
            .unwrap_or_else(|e| panic!("building {src} failed (needs clang; see README): {e}"));
        println!("cargo:rerun-if-changed={src}");
    }
    // pprof's profile.proto (upstream, unchanged), compiled by protox: no protoc needed
    let proto = "src/export/profile.proto";
    let descriptors = protox::compile([proto], ["src/export"])
        .unwrap_or_else(|e| panic!("compiling {proto} failed: {e}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the pprof types failed: {e}"));
    println!("cargo:rerun-if-changed={proto}");
    for f in [
        "bpf/waitprof.h",
        "bpf/unwind.h",
        "bpf/sock.h",
        "bpf/vmlinux.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
}
