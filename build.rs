//! Compiles the BPF program and generates its Rust skeleton into OUT_DIR.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/waitprof.bpf.c";

fn main() {
    // the program reads the syscall number from x86-64's pt_regs, and vmlinux.h is x86-64's
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch != "x86_64" {
        panic!("waitprof supports x86_64 only for now (target architecture: {arch})");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("waitprof.skel.rs");
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unused-parameter",
            "-Ibpf",
        ])
        .build_and_generate(&out)
        .expect("building the BPF program failed (needs clang; see README)");
    for f in ["bpf/waitprof.bpf.c", "bpf/waitprof.h", "bpf/vmlinux.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
