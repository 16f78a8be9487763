//! The parsers waitprof owns, against input a target controls: every ELF parser (unwind
//! tables, load bias, `.gopclntab`) over real files corrupted at random (a fixed seed,
//! so a failure reproduces), and the text parsers (`/proc/PID/maps`, perf maps) over the
//! corpus in tests/corpus. None may panic, hang or allocate by a size it was told;
//! what they return for the corpus is checked.

use std::path::Path;

use waitprof::model::Mapping;
use waitprof::runtime::go::pclntab::GoFuncs;
use waitprof::symbolize::PerfMap;

/// xorshift64*: deterministic, so a failing case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte ranges worth corrupting: the ELF header and section headers, the first KiB of
/// each named section (its header: counts, offsets, lengths).
fn hot_ranges(data: &[u8], sections: &[&str]) -> Vec<std::ops::Range<usize>> {
    use object::{Object, ObjectSection};
    let mut hot = Vec::new();
    hot.push(0..64);
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let shoff = u64_at(0x28);
    hot.push(shoff..(shoff + u16_at(0x3a) * u16_at(0x3c)).min(data.len()));
    let file = object::File::parse(data).expect("a real ELF file");
    for name in sections {
        if let Some((off, size)) = file.section_by_name(name).and_then(|s| s.file_range()) {
            hot.push(off as usize..(off + size.min(1024)) as usize);
            // and its first words (magic, counts, offsets) most often
            hot.push(off as usize..(off + size.min(64)) as usize);
        }
    }
    hot
}

/// `data` with a few bytes changed: flipped, set to extreme values, or cut short.
fn corrupt(data: &[u8], hot: &[std::ops::Range<usize>], rng: &mut Rng) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..1 + rng.below(8) {
        let r = &hot[rng.below(hot.len())];
        if r.is_empty() {
            continue;
        }
        let at = r.start + rng.below(r.len());
        match rng.below(4) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d[at] = rng.next() as u8,
            _ => {
                let v =
                    [0u64, u64::MAX, u32::MAX as u64, 1 << 40, d.len() as u64 * 2][rng.below(5)];
                let end = (at + 8).min(d.len());
                let n = end - at;
                d[at..end].copy_from_slice(&v.to_le_bytes()[..n]);
            }
        }
    }
    if rng.below(10) == 0 {
        d.truncate(rng.below(d.len()));
    }
    d
}

fn fuzz_elf(path: &str, sections: &[&str], rounds: usize, seed: u64) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // the untouched file parses: the corruption is what the rounds test
    assert!(waitprof::unwind::table_rows(&data[..]).is_ok() || sections.contains(&".gopclntab"));
    let hot = hot_ranges(&data, sections);
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let d = corrupt(&data, &hot, &mut rng);
        let started = std::time::Instant::now();
        let _ = waitprof::unwind::table_rows(&d[..]);
        let _ = waitprof::unwind::bias(&d[..], 0x7f00_0000_0000, 0);
        if let Some(go) = GoFuncs::load(&d[..]) {
            let _ = go.name(0x40_1000);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{path}: round {round} (seed {seed}) took {:?}",
            started.elapsed()
        );
    }
}

// The two corrupting tests keep both CPUs busy for seconds: they take the session lock,
// so the BPF tests' timing (CPU-bound fixtures, run-queue waits) is not disturbed.

#[test]
fn corrupted_libc_never_panics_the_unwind_compiler() {
    let _s = super::common::root_session();
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("glibc");
    fuzz_elf(
        libc,
        &[".eh_frame", ".eh_frame_hdr", ".text"],
        300,
        0x5eed_0001,
    );
}

#[test]
fn corrupted_go_binaries_never_panic_the_gopclntab_reader() {
    let _s = super::common::root_session();
    let (version, go) = &super::golang::toolchains()[0];
    let stripped = super::golang::go_fixture(
        go,
        &format!("gofix-{version}-stripped"),
        &["-ldflags=-s -w"],
    );
    let full = super::golang::go_fixture(go, &format!("gofix-{version}"), &[]);
    // the untouched stripped binary names its functions: the reader is exercised
    let data = std::fs::read(&stripped).unwrap();
    assert!(
        GoFuncs::load(&data[..]).is_some(),
        "{version}: .gopclntab not read"
    );
    fuzz_elf(&stripped, &[".gopclntab", ".text"], 300, 0x5eed_0002);
    fuzz_elf(&full, &[".debug_frame", ".gopclntab"], 150, 0x5eed_0003);
}

fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "an empty corpus in {}", dir.display());
    files
}

#[test]
fn maps_lines_from_the_corpus_parse_safely() {
    for (name, data) in corpus("maps") {
        let text = String::from_utf8_lossy(&data);
        let maps: Vec<Mapping> = text.lines().filter_map(Mapping::parse).collect();
        for m in &maps {
            assert!(
                !m.path.chars().any(char::is_control),
                "{name}: raw control in {:?}",
                m.path
            );
        }
        if name == "hostile.txt" {
            let paths: Vec<&str> = maps.iter().map(|m| m.path.as_str()).collect();
            assert!(
                paths.contains(&"/tmp/a dir/with  spaces.so")
                    || paths.contains(&"/tmp/a dir/with spaces.so"),
                "{paths:?}"
            );
            assert!(
                paths.contains(&"/tmp/esc\\x1b[2Jtitle\\x1b]0;pwn\\x07.so"),
                "{paths:?}"
            );
            assert!(paths.contains(&"/tmp/é/ünïcode.so"), "{paths:?}");
            // the garbage and short lines are dropped, not guessed at
            assert!(!paths.contains(&"/garbage"), "{paths:?}");
            assert_eq!(
                maps.iter().filter(|m| m.executable && m.is_file()).count(),
                6,
                "{paths:?}"
            );
        }
    }
}

#[test]
fn perf_maps_from_the_corpus_parse_safely() {
    for (name, data) in corpus("perf-map") {
        let map = PerfMap::parse(&data);
        if name == "hostile.map" {
            assert_eq!(map.name(0x7f00_0000_1010), Some("JIT compiled js:main"));
            assert_eq!(map.name(0x7f00_0000_1040), None, "past its size");
            assert_eq!(map.name(0x7f00_0000_2000), Some("with \x1b[31mescape\x07"));
            assert_eq!(map.name(0x7f00_0000_3000), None, "a broken size");
            assert_eq!(map.name(0x7f00_0000_5000), None, "zero size");
            assert_eq!(map.name(u64::MAX), Some("the very end"));
        }
    }
}
