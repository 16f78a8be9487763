//! A target that works against its profiler: waitprof runs as root and reads what the
//! profiled process controls. Each test sets a trap with an unprivileged target (built
//! from tests/fixtures/hostile.c, run as nobody) and checks that the session still ends
//! in time with a complete profile or one clear line, that no file outside the output is
//! touched, and that no BPF program is left.

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::common::*;

#[path = "../../benches/common/rss.rs"]
mod rss;

const NOBODY: u32 = 65534;

fn built(name: &str, args: &[&str]) -> String {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let result = Command::new("cc")
        .args(args)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("running cc");
    assert!(
        result.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out.to_string_lossy().into_owned()
}

fn fixture_src(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn hostile() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| built("hostile", &["-O2", "-g", &fixture_src("hostile.c"), "-ldl"]))
}

/// The library `hostile dlopen` loads; `impostor` builds it with its function renamed.
fn hostile_lib(impostor: bool) -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    static I: OnceLock<String> = OnceLock::new();
    let src = fixture_src("hostile_lib.c");
    if impostor {
        I.get_or_init(|| {
            built(
                "libimpostor.so",
                &[
                    "-O2",
                    "-g",
                    "-shared",
                    "-fPIC",
                    "-Dlib_wait=host_impostor",
                    &src,
                ],
            )
        })
    } else {
        P.get_or_init(|| built("libhostile.so", &["-O2", "-g", "-shared", "-fPIC", &src]))
    }
}

/// A directory nobody can use: mode 1777 (sticky and world-writable, as /tmp) or 0755.
fn shared_dir(mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

fn copy_to(dir: &Path, from: &str, name: &str) -> String {
    let to = dir.join(name);
    std::fs::copy(from, &to).expect("copying a fixture");
    to.to_string_lossy().into_owned()
}

/// The hostile target, killed when dropped.
struct Target {
    child: Child,
}

impl Target {
    /// Starts `cmd` (as nobody unless it says otherwise) and waits for its "ready".
    fn start(mut cmd: Command) -> Target {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the target");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("reading the target");
        assert_eq!(line.trim(), "ready", "the target did not get ready");
        Target { child }
    }

    fn hostile(args: &[&str]) -> Target {
        Self::start(as_nobody(hostile(), args))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn as_nobody(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).uid(NOBODY).gid(NOBODY);
    cmd
}

/// One waitprof run: what it printed, how long it took, its peak RSS.
struct Session {
    run: Run,
    elapsed: Duration,
    peak_rss_kb: u64,
}

/// Runs waitprof with `args` (and `-o DIR/out.svg` unless they have an -o), measuring
/// its own peak RSS (VmHWM, polled every 5 ms).
fn session(setup: impl FnOnce(&mut Command), args: &[&str]) -> Session {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = match args.iter().position(|a| *a == "-o") {
        Some(i) => PathBuf::from(args[i + 1]),
        None => dir.path().join("out.svg"),
    };
    let mut cmd = Command::new(WAITPROF);
    if !args.contains(&"-o") {
        cmd.arg("-o").arg(&svg);
    }
    cmd.args(args);
    setup(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running waitprof");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    // the peak from the child's own VmHWM while it runs, not from wait4 (see rss.rs)
    let pid = child.id();
    let poller = std::thread::spawn(move || rss::watch_peak_kb(pid));
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).ok();
        b
    });
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut out, &mut stdout).ok();
    let stderr = reader.join().unwrap();
    let peak_rss_kb = poller.join().unwrap();
    let status = child.wait().expect("waiting for waitprof");
    let elapsed = started.elapsed();
    Session {
        run: Run {
            output: std::process::Output {
                status,
                stdout,
                stderr,
            },
            folded_path: svg.with_extension("folded"),
            svg,
            _dir: dir,
        },
        elapsed,
        peak_rss_kb,
    }
}

/// Checks what every session must end with: exit 0, a complete profile, nothing raw
/// from the target on the terminal, no program left loaded.
fn assert_clean(s: &Session, what: &str, limit: Duration) {
    let stderr = s.run.stderr();
    assert_eq!(s.run.code(), Some(0), "{what}: waitprof failed:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "{what}: waitprof panicked:\n{stderr}"
    );
    assert!(
        s.elapsed < limit,
        "{what}: took {:?} (limit {limit:?}):\n{stderr}",
        s.elapsed
    );
    assert!(s.run.svg.exists(), "{what}: no SVG written");
    assert_programs_unload();
}

/// Blocked time under `frames`, against the session's length: the target sleeps in
/// them for the whole session.
fn assert_whole_session_in(s: &Session, frames: &[&str], what: &str) {
    let us = attributed_us(&s.run.folded(), frames);
    assert_close(what, us * 1000, s.run.session_ns(), TOLERANCE);
}

#[test]
fn planted_symlinks_redirect_nothing() {
    let _s = root_session();
    let target = Target::hostile(&["wait"]);
    // root-only files the attacker would like overwritten, truncated or given away
    let victims = tempfile::tempdir().unwrap();
    let victim = |n: &str| victims.path().join(n);
    for n in ["a", "b", "c", "d", "e", "f", "dir"] {
        if n == "dir" {
            std::fs::create_dir(victim(n)).unwrap();
        } else {
            std::fs::write(victim(n), b"precious").unwrap();
            std::fs::set_permissions(victim(n), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    // a sticky /tmp-like directory and one the attacker owns, under sudo and not
    for (mode, sudo) in [
        (0o1777, true),
        (0o755, true),
        (0o1777, false),
        (0o755, false),
    ] {
        let out = shared_dir(mode);
        // every name waitprof writes, and the names it used to create first
        let names = [
            "p.svg",
            "p.folded",
            "p.offwake.svg",
            "p.offwake.folded",
            "p.runq.svg",
            "p.runq.folded",
        ];
        for (n, v) in names.iter().zip(["a", "b", "c", "d", "e", "f"]) {
            std::os::unix::fs::symlink(victim(v), out.path().join(n)).unwrap();
        }
        for pid in 0..64u32 {
            let me = std::process::id() + pid;
            std::os::unix::fs::symlink(victim("a"), out.path().join(format!(".p.svg.tmp-{me}")))
                .unwrap();
            std::os::unix::fs::symlink(
                victim("b"),
                out.path().join(format!(".waitprof-write-test-{me}")),
            )
            .unwrap();
        }
        // a user-owned directory: the attacker owns it (mode 0755 case)
        if mode == 0o755 {
            std::os::unix::fs::chown(out.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let svg = out.path().join("p.svg");
        let s = session(
            |cmd| {
                if sudo {
                    cmd.env("SUDO_UID", NOBODY.to_string())
                        .env("SUDO_GID", NOBODY.to_string());
                } else {
                    cmd.env_remove("SUDO_UID").env_remove("SUDO_GID");
                }
            },
            &[
                "-p",
                &target.pid().to_string(),
                "-d",
                "1s",
                "-o",
                svg.to_str().unwrap(),
            ],
        );
        let stderr = s.run.stderr();
        assert_eq!(s.run.code(), Some(0), "{stderr}");
        for v in ["a", "b", "c", "d", "e", "f"] {
            let m = std::fs::metadata(victim(v)).unwrap();
            assert_eq!(
                std::fs::read(victim(v)).unwrap(),
                b"precious",
                "{v} was written"
            );
            assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{v} changed hands");
        }
        assert_eq!(std::fs::metadata(victim("dir")).unwrap().uid(), 0);
        for n in ["p.svg", "p.folded"] {
            let m = std::fs::symlink_metadata(out.path().join(n)).unwrap();
            assert!(m.is_file(), "{n} is a regular file in place of the symlink");
            let owner = if sudo { NOBODY } else { 0 };
            assert_eq!(
                m.uid(),
                owner,
                "{n}: handed to the sudo user, or root's without sudo"
            );
        }
        // nothing else was created: no temporary file left behind
        let strays: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                !n.starts_with("p.")
                    && !n.starts_with(".p.svg.tmp-")
                    && !n.starts_with(".waitprof-write-test-")
            })
            .collect();
        assert!(strays.is_empty(), "stray files: {strays:?}");
    }
    drop(target);
    assert_programs_unload();
}

#[test]
fn a_default_output_directory_that_is_not_yours_is_refused() {
    let _s = root_session();
    let target = Target::hostile(&["wait"]);
    let victim = tempfile::tempdir().unwrap();
    type Plant = fn(&Path, &Path);
    let cases: [(&str, Plant); 2] = [
        ("a symlink", |cwd, victim| {
            std::os::unix::fs::symlink(victim, cwd.join("flamegraphs")).unwrap()
        }),
        ("another user's directory", |cwd, _| {
            std::fs::create_dir(cwd.join("flamegraphs")).unwrap();
            std::os::unix::fs::chown(cwd.join("flamegraphs"), Some(NOBODY), Some(NOBODY)).unwrap();
        }),
    ];
    for (what, plant) in cases {
        let cwd = shared_dir(0o1777);
        plant(cwd.path(), victim.path());
        let out = Command::new(WAITPROF)
            .args(["-p", &target.pid().to_string(), "-d", "1s"])
            .current_dir(cwd.path())
            .env("SUDO_UID", "1000")
            .env("SUDO_GID", "1000")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("the output directory flamegraphs"),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains("choose another with -o"),
            "{what}: {stderr}"
        );
        assert_eq!(
            std::fs::read_dir(victim.path()).unwrap().count(),
            0,
            "{what}"
        );
        assert_eq!(
            std::fs::metadata(victim.path()).unwrap().uid(),
            0,
            "{what}: chowned"
        );
    }
    // one waitprof creates itself is handed to the sudo user, and used
    let cwd = shared_dir(0o755);
    let out = Command::new(WAITPROF)
        .args(["-p", &target.pid().to_string(), "-d", "1s"])
        .current_dir(cwd.path())
        .env("SUDO_UID", NOBODY.to_string())
        .env("SUDO_GID", NOBODY.to_string())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = cwd.path().join("flamegraphs");
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), NOBODY);
    assert!(std::fs::read_dir(&dir).unwrap().count() >= 2);
    drop(target);
    assert_programs_unload();
}

#[test]
fn deleted_files_and_fifos_in_their_place_do_not_stall_or_lose_the_profile() {
    let _s = root_session();
    let dir = shared_dir(0o755);
    // the target's own directory: it can put what it likes there
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let exe = copy_to(dir.path(), hostile(), "hostile");
    let lib = copy_to(dir.path(), hostile_lib(false), "libhostile.so");
    let target = Target::start(as_nobody(&exe, &["dlopen", &lib]));
    // a package upgrade: the binary and the library are deleted while it runs; then
    // FIFOs where the library was and where a JIT's perf map would be
    std::fs::remove_file(&exe).unwrap();
    std::fs::remove_file(&lib).unwrap();
    let fifo = |p: &str| {
        let status = Command::new("mkfifo")
            .arg(p)
            .uid(NOBODY)
            .gid(NOBODY)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo {p}");
    };
    fifo(&lib);
    let perf_map = format!("/tmp/perf-{}.map", target.pid());
    let _ = std::fs::remove_file(&perf_map);
    fifo(&perf_map);
    let s = session(|_| {}, &["-p", &target.pid().to_string(), "-d", "1s"]);
    let _ = std::fs::remove_file(&perf_map);
    assert_clean(&s, "deleted files, FIFOs", Duration::from_secs(8));
    assert_whole_session_in(
        &s,
        &["main", "lib_wait", "[clock_nanosleep]"],
        "the deleted library's lib_wait under the deleted binary's main",
    );
}

#[test]
fn a_library_seen_only_in_the_targets_mount_namespace_is_named_from_there() {
    let _s = root_session();
    let dir = shared_dir(0o755);
    // the host has an impostor at the path; the target's namespace mounts its own there
    let libdir = dir.path().join("lib");
    std::fs::create_dir(&libdir).unwrap();
    copy_to(&libdir, hostile_lib(true), "libhostile.so");
    let lib = libdir.join("libhostile.so");
    let script = format!(
        "mount -t tmpfs none {d} && cp {real} {d}/libhostile.so && exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups {exe} dlopen {lib}",
        d = libdir.display(),
        real = hostile_lib(false),
        exe = hostile(),
        lib = lib.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let target = Target::start(cmd);
    let s = session(|_| {}, &["-p", &target.pid().to_string(), "-d", "1s"]);
    assert_clean(&s, "mount namespace", Duration::from_secs(8));
    assert!(
        s.run.stderr().contains("another mount namespace"),
        "the summary says so:\n{}",
        s.run.stderr()
    );
    let folded = s.run.folded();
    assert!(
        !folded.iter().any(|(l, _)| l.contains("host_impostor")),
        "named from the host's file"
    );
    assert_whole_session_in(
        &s,
        &["main", "lib_wait", "[clock_nanosleep]"],
        "lib_wait in the namespace",
    );
}

#[test]
fn names_with_escape_sequences_are_escaped_everywhere() {
    let _s = root_session();
    let dir = shared_dir(0o755);
    // a copy of the fixture whose function is named with a terminal escape, a newline
    // that would forge a summary line, and a bell
    let marker = b"zzzz_marker_0123456789abcdef0123456789";
    let evil: &[u8] = b"\x1b[2J\nwaitprof: forged\x07;<b>&";
    let mut name = evil.to_vec();
    name.resize(marker.len(), b'X');
    let mut bin = std::fs::read(hostile()).unwrap();
    let mut patched = 0;
    let mut i = 0;
    while let Some(at) = bin[i..].windows(marker.len()).position(|w| w == marker) {
        bin[i + at..i + at + marker.len()].copy_from_slice(&name);
        i += at + marker.len();
        patched += 1;
    }
    assert!(patched > 0);
    let exe = dir.path().join("hostile-names");
    std::fs::write(&exe, &bin).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // and a thread name that sets the terminal's title and breaks the line
    let comm = b"\x1b]0;pwn\x07\n/..";
    let hex: String = comm.iter().map(|b| format!("{b:02x}")).collect();
    let target = Target::start(as_nobody(exe.to_str().unwrap(), &["name", &hex]));
    // without -o: the default file name is made from the thread name
    let cwd = shared_dir(0o755);
    let out = Command::new(WAITPROF)
        .args(["-p", &target.pid().to_string(), "-d", "1s"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !out.stderr.iter().any(|&b| b == 0x1b || b == 0x07),
        "raw escape on stderr:\n{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("waitprof: forged")),
        "a forged line:\n{stderr}"
    );
    // the thread name, escaped, in the summary (the symbol is checked in the files)
    assert!(stderr.contains("\\x1b]0;pwn\\x07\\x0a/.."), "{stderr}");
    let files: Vec<PathBuf> = std::fs::read_dir(cwd.path().join("flamegraphs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "file name {name:?}"
        );
        // a pprof profile is compressed: its strings are what must be clean, each with
        // no control byte at all
        let data = if name.ends_with(".pb.gz") {
            let strings =
                pprof_strings(f).unwrap_or_else(|| panic!("{name} is not a pprof profile"));
            for s in &strings {
                assert!(
                    !s.bytes().any(|b| b < 0x20),
                    "control bytes in {name}: {s:?}"
                );
            }
            strings.join(" ").into_bytes()
        } else {
            std::fs::read(f).unwrap()
        };
        assert!(
            !data.iter().any(|&b| b < 0x20 && b != b'\n' && b != b'\t'),
            "control bytes in {name}"
        );
        if name.ends_with(".folded") {
            let text = String::from_utf8_lossy(&data);
            // one line per stack: the newline in the name did not split one
            assert!(
                text.lines().all(|l| l
                    .rsplit(' ')
                    .next()
                    .is_some_and(|v| v.parse::<u64>().is_ok())),
                "{text}"
            );
        } else if name.ends_with(".svg") {
            let text = String::from_utf8_lossy(&data);
            assert!(!text.contains("<b>&"), "unescaped markup in {name}");
        }
    }
    let main = files
        .iter()
        .find(|f| {
            f.extension().is_some_and(|e| e == "folded")
                && !f.to_string_lossy().contains(".offwake.")
                && !f.to_string_lossy().contains(".runq.")
        })
        .unwrap();
    let folded = parse_folded(&std::fs::read_to_string(main).unwrap());
    let us = attributed_us(
        &folded,
        &[
            "main",
            "\\x1b[2J\\x0awaitprof: forged\\x07:<b>&",
            "[clock_nanosleep]",
        ],
    );
    assert!(us >= 900_000, "{us} us under the escaped name");
    drop(target);
    assert_programs_unload();
}

/// An ELF with a compressed .debug_frame that claims 1 GiB, and no .eh_frame: built
/// from the fixture library with objcopy, its SHF_COMPRESSED header written here.
fn compression_bomb(dir: &Path) -> PathBuf {
    use std::io::Write;
    let blob = dir.join("bomb.zlib");
    let mut chdr = Vec::new();
    chdr.extend_from_slice(&1u32.to_le_bytes()); // ELFCOMPRESS_ZLIB
    chdr.extend_from_slice(&0u32.to_le_bytes());
    chdr.extend_from_slice(&(1u64 << 30).to_le_bytes());
    chdr.extend_from_slice(&8u64.to_le_bytes());
    let mut z = flate2::write::ZlibEncoder::new(chdr, flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        z.write_all(&zeros).unwrap();
    }
    std::fs::write(&blob, z.finish().unwrap()).unwrap();
    let bomb = dir.join("bomb.so");
    let status = Command::new("objcopy")
        .args([
            "--remove-section",
            ".eh_frame",
            "--remove-section",
            ".eh_frame_hdr",
        ])
        .arg("--add-section")
        .arg(format!(".debug_frame={}", blob.display()))
        .arg(hostile_lib(false))
        .arg(&bomb)
        .status()
        .unwrap();
    assert!(status.success(), "objcopy");
    // set SHF_COMPRESSED on .debug_frame
    let mut elf = std::fs::read(&bomb).unwrap();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&elf, 0x28),
        u16_at(&elf, 0x3a),
        u16_at(&elf, 0x3c),
        u16_at(&elf, 0x3e),
    );
    let strtab = u64_at(&elf, shoff + shstrndx * shentsize + 0x18);
    let mut found = false;
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        let name_off = u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) as usize;
        if elf[strtab + name_off..].starts_with(b".debug_frame\0") {
            let flags = u64_at(&elf, h + 8) | 0x800;
            elf[h + 8..h + 16].copy_from_slice(&(flags as u64).to_le_bytes());
            found = true;
        }
    }
    assert!(found, "no .debug_frame in the bomb");
    std::fs::write(&bomb, elf).unwrap();
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 4 << 20, "the bomb is small on disk: {size}");
    bomb
}

#[test]
fn a_compression_bomb_and_a_sparse_mapping_cost_bounded_memory() {
    let _s = root_session();
    let dir = shared_dir(0o755);
    let bomb = compression_bomb(dir.path());
    // a 2 GiB file, almost all of it a hole: the library with 2 GiB of nothing after it
    let sparse = dir.path().join("sparse.so");
    std::fs::copy(hostile_lib(false), &sparse).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    for (what, file) in [("compression bomb", &bomb), ("sparse 2 GiB", &sparse)] {
        let target = Target::hostile(&["mapexec", file.to_str().unwrap()]);
        let s = session(|_| {}, &["-p", &target.pid().to_string(), "-d", "1s"]);
        assert_clean(&s, what, Duration::from_secs(8));
        // a session on this target peaks near 30 MB (VmHWM); 1 GiB read would show
        eprintln!("{what}: peak RSS {} MB", s.peak_rss_kb / 1024);
        assert!(
            s.peak_rss_kb < 250 * 1024,
            "{what}: peak RSS {} MB",
            s.peak_rss_kb / 1024
        );
        assert_whole_session_in(
            &s,
            &[
                "main",
                "zzzz_marker_0123456789abcdef0123456789",
                "[clock_nanosleep]",
            ],
            what,
        );
        if what == "compression bomb" {
            assert!(
                s.run.stderr().contains(".debug_frame claims 1024 MiB"),
                "the summary names the file and why it has no table:\n{}",
                s.run.stderr()
            );
        }
    }
}

#[test]
fn a_library_loaded_and_unloaded_over_and_over_is_named() {
    let _s = root_session();
    let run = waitprof(&["--", hostile(), "churn", hostile_lib(false), "200"]);
    let folded = run.folded();
    let us = attributed_us(&folded, &["main", "lib_wait", "[clock_nanosleep]"]);
    let measured = run.measured("lib_wait");
    // every nanosleep of the program is lib_wait's: all its time is in the profile
    let all = attributed_us(&folded, &["[clock_nanosleep]"]);
    assert_close(
        "lib_wait, 200 dlopen/dlclose (all)",
        all * 1000,
        measured,
        0.10,
    );
    // its first calls come before the unwind tables of the new program load (walked by
    // frame pointers, which glibc's nanosleep does not keep: 10-160 ms of 1 s in a debug
    // build on a loaded machine, as the tables' build starts early or late)
    assert!(
        us * 1000 >= measured * 3 / 4,
        "lib_wait kept its caller for {us} us of {measured} ns"
    );
}

#[test]
fn a_command_that_exits_at_once_is_profiled_every_time() {
    let _s = root_session();
    for i in 0..20 {
        let run = waitprof(&["--", "/bin/true"]);
        let stderr = run.stderr();
        // a complete profile, or one clear line that nothing waited
        assert!(
            matches!(run.code(), Some(0 | 1)),
            "run {i}: exit {:?}:\n{stderr}",
            run.code()
        );
        assert!(!stderr.contains("error"), "run {i}:\n{stderr}");
        assert_eq!(run.svg.exists(), run.code() == Some(0), "run {i}");
    }
    assert_programs_unload();
}

#[test]
fn a_pid_namespace_is_refused() {
    let _s = root_session();
    let out = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            WAITPROF,
            "-p",
            "2",
            "-d",
            "1s",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("waitprof runs inside a pid namespace"),
        "{stderr}"
    );
    assert_programs_unload();
}

#[test]
fn a_target_that_execs_another_program_mid_session_keeps_its_stacks() {
    let _s = root_session();
    let script = format!("sleep 0.3; exec {} wait", hostile());
    let run = waitprof(&["-d", "1500ms", "--", "sh", "-c", &script]);
    let folded = run.folded();
    // sh waits for its sleep, then becomes the fixture, which sleeps in its marker until
    // the end: the marker's chain holds the session after the wait
    let before: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains("[wait4]"))
        .map(|(_, v)| v)
        .sum();
    let after = attributed_us(
        &folded,
        &[
            "main",
            "zzzz_marker_0123456789abcdef0123456789",
            "[clock_nanosleep]",
        ],
    );
    assert!(before >= 250_000, "sh's wait: {before} us");
    // a C function named `t` keeps its name (a C++ demangler reads it as a type)
    assert!(
        folded
            .iter()
            .any(|(s, _)| in_order(s, &["zzzz_marker"]) && s.split(';').any(|f| f == "t")),
        "no frame named t"
    );
    assert!(
        !folded.iter().any(|(s, _)| s.contains("unsigned short")),
        "t read as a type"
    );
    assert_close(
        "the exec'd program's marker",
        after * 1000,
        run.session_ns() - before * 1000,
        TOLERANCE,
    );
    assert_programs_unload();
}

#[test]
fn a_truncated_file_a_bad_section_table_and_a_newline_in_a_path_cost_only_their_frames() {
    let _s = root_session();
    let dir = shared_dir(0o755);
    let lib = std::fs::read(hostile_lib(false)).unwrap();
    // cut in half: the section headers (at the end) are gone
    let truncated = dir.path().join("truncated.so");
    std::fs::write(&truncated, &lib[..lib.len() / 2]).unwrap();
    // the section-header table said to be far past the end, with a huge count
    let mut bad = lib.clone();
    bad[0x28..0x30].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bad[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
    let bad_shdr = dir.path().join("bad-shdr.so");
    std::fs::write(&bad_shdr, &bad).unwrap();
    // a library whose path holds a newline and an escape
    let odd = dir.path().join("odd\nname\x1b[1m.so");
    std::fs::write(&odd, &lib).unwrap();
    let target = Target::hostile(&[
        "mapexec",
        truncated.to_str().unwrap(),
        bad_shdr.to_str().unwrap(),
        odd.to_str().unwrap(),
    ]);
    let s = session(|_| {}, &["-p", &target.pid().to_string(), "-d", "1s"]);
    assert_clean(&s, "bad files", Duration::from_secs(8));
    assert_whole_session_in(
        &s,
        &[
            "main",
            "zzzz_marker_0123456789abcdef0123456789",
            "[clock_nanosleep]",
        ],
        "the marker, beside the bad files",
    );
    let stderr = s.run.stderr();
    for f in ["truncated.so (", "bad-shdr.so ("] {
        assert!(
            stderr.contains(f),
            "{f} is named with its reason:\n{stderr}"
        );
    }
    drop(target);
    // the same library loaded from that path: its function is named
    let target = Target::hostile(&["dlopen", odd.to_str().unwrap()]);
    let s = session(|_| {}, &["-p", &target.pid().to_string(), "-d", "1s"]);
    assert_clean(&s, "a newline in a library's path", Duration::from_secs(8));
    assert_whole_session_in(
        &s,
        &["main", "lib_wait", "[clock_nanosleep]"],
        "lib_wait from the odd path",
    );
}

#[test]
fn a_library_its_owner_truncates_while_waitprof_reads_it_costs_no_crash() {
    let _s = root_session();
    let dir = shared_dir(0o755);
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let lib = copy_to(dir.path(), hostile_lib(false), "libflip.so");
    std::os::unix::fs::chown(&lib, Some(NOBODY), Some(NOBODY)).unwrap();
    // the target runs in the library for the first 2 s, then in its own binary; from
    // then on a helper of the same user truncates the library and writes it back, over
    // and over, while waitprof ends its session and names the library's frames
    let target = Target::hostile(&["once", &lib, "2000"]);
    let flipper = std::thread::spawn({
        let lib = lib.clone();
        move || {
            std::thread::sleep(Duration::from_millis(2300));
            Target::hostile(&["flip", &lib])
        }
    });
    let s = session(|_| {}, &["-p", &target.pid().to_string(), "-d", "2s"]);
    let flipping = flipper.join().unwrap();
    drop(flipping);
    assert_clean(
        &s,
        "a library truncated over and over",
        Duration::from_secs(10),
    );
    // whether or not its frames could be named, every wait is there, under main
    assert_whole_session_in(&s, &["main", "[clock_nanosleep]"], "all of main's sleeps");
}
