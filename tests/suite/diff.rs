//! `waitprof diff`: two sessions of the sleep fixture whose waits differ by a known
//! amount, and input that is not a folded file.

use std::path::Path;
use std::process::Command;

use super::common::*;

/// Runs `waitprof diff OLD NEW -o OUT` to completion.
fn waitprof_diff(old: &Path, new: &Path, out: &Path) -> std::process::Output {
    Command::new(WAITPROF)
        .arg("diff")
        .arg(old)
        .arg(new)
        .arg("-o")
        .arg(out)
        .output()
        .expect("waitprof diff")
}

/// The report's line for one kind of wait: (old, new) in ms per second.
fn kind_line(report: &str, kind: &str) -> (f64, f64) {
    let line = report
        .lines()
        .skip_while(|l| !l.contains("by kind of wait"))
        .take_while(|l| !l.contains("by stack"))
        .find(|l| l.trim_end().ends_with(kind))
        .unwrap_or_else(|| panic!("no change for {kind} in:\n{report}"));
    // "   +123.4 ms/s (+100%)  1.0 -> 2.0  [kind]"
    let (old, new) = line
        .split("  ")
        .find_map(|f| f.trim().split_once(" -> "))
        .unwrap_or_else(|| panic!("no values in {line}"));
    (
        old.parse().expect("old value"),
        new.parse().expect("new value"),
    )
}

#[test]
fn diff_normalises_two_sessions_by_their_length() {
    let _s = root_session();
    // the same sleeper, 20 ms then 120 ms a sleep, over sessions of different lengths:
    // three times the total, the same share of each second (the sleeper sleeps through)
    // (about 1.5 s and 3.9 s: the SVG titles give them to 0.1 s)
    let old = profile_fixture(&[], &["sleep", "60", "20"]);
    let new = profile_fixture(&[], &["sleep", "30", "120"]);
    let (_, _) = (old.folded(), new.folded());
    let out_dir = tempfile::tempdir().expect("tempdir");
    let svg = out_dir.path().join("d.svg");
    let diff = waitprof_diff(&old.folded_path, &new.folded_path, &svg);
    let report = String::from_utf8_lossy(&diff.stderr);
    assert_eq!(diff.status.code(), Some(0), "{report}");
    assert!(
        report.contains("normalised by each session's length"),
        "{report}"
    );
    // each side's rate is what the fixture measured over the session waitprof reported
    let rate = |run: &Run| run.measured_ns() as f64 / 1e6 / (run.session_ns() as f64 / 1e9);
    // the whole sleep, over every stack it was seen in (some before the unwind tables
    // were loaded), in the two columns of the diff's folded file (us per second)
    let two = std::fs::read_to_string(svg.with_extension("folded")).expect("diff folded");
    let (mut old_us, mut new_us) = (0.0, 0.0);
    for l in two
        .lines()
        .filter(|l| in_order(l, &["sleeper", "[clock_nanosleep]"]))
    {
        let mut v = l.rsplit(' ');
        new_us += v.next().unwrap().parse::<f64>().unwrap();
        old_us += v.next().unwrap().parse::<f64>().unwrap();
    }
    let kind = kind_line(&report, "[clock_nanosleep]");
    // the session length in the SVG title has one decimal: up to 0.05 s of 1.5 s (3.3%)
    for (what, got, want) in [
        ("old stacks", old_us / 1000.0, rate(&old)),
        ("new stacks", new_us / 1000.0, rate(&new)),
        ("old kind", kind.0, rate(&old)),
        ("new kind", kind.1, rate(&new)),
    ] {
        assert!(
            (got - want).abs() <= want * 0.08,
            "{what}: the diff says {got:.1} ms/s, the fixture measured {want:.1} ms/s\n{report}"
        );
    }
    // the report shows a stack by its leaf end, without kernel frames
    assert!(report.contains("::sleeper;"), "{report}");
    assert!(!report.contains("_[k]"), "{report}");
    let written = std::fs::read_to_string(&svg).expect("the diff SVG is written");
    assert!(written.contains("sleeper"), "the SVG names the stack");
    assert!(
        two.lines()
            .any(|l| l.contains("sleeper") && l.split(' ').count() >= 3),
        "{two}"
    );
    // the same two sessions' pprof profiles: the same rates (their lengths are their own,
    // to the nanosecond)
    let from_pprof = out_dir.path().join("p.svg");
    let diff = waitprof_diff(
        &old.svg.with_extension("pb.gz"),
        &new.svg.with_extension("pb.gz"),
        &from_pprof,
    );
    let report = String::from_utf8_lossy(&diff.stderr);
    assert_eq!(diff.status.code(), Some(0), "{report}");
    let kind = kind_line(&report, "[clock_nanosleep]");
    for (what, got, want) in [
        ("old kind (pprof)", kind.0, rate(&old)),
        ("new kind (pprof)", kind.1, rate(&new)),
    ] {
        assert!(
            (got - want).abs() <= want * 0.08,
            "{what}: the diff says {got:.1} ms/s, the fixture measured {want:.1} ms/s\n{report}"
        );
    }
}

#[test]
fn diff_refuses_what_is_not_a_folded_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.folded");
    std::fs::write(&good, "p;main;[futex]_[i] 100\n").unwrap();
    let corrupt = dir.path().join("corrupt.folded");
    std::fs::write(&corrupt, "p;main 100\n<svg> this is not folded\n").unwrap();
    let empty = dir.path().join("empty.folded");
    std::fs::write(&empty, "").unwrap();
    let fifo = dir.path().join("fifo.folded");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = dir.path().join("out.svg");
    // a gzip stream that is no profile, and one that would inflate past the limit
    let not_pprof = dir.path().join("x.pb.gz");
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"\xff\xff\xff this is not a profile").unwrap();
        std::fs::write(&not_pprof, gz.finish().unwrap()).unwrap();
    }
    let bomb = dir.path().join("bomb.pb.gz");
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..300 {
            gz.write_all(&zeros).unwrap();
        }
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
    }
    for (bad, want) in [
        (&not_pprof, "not a pprof profile"),
        (&bomb, "decompresses to more than 256 MiB"),
        (&corrupt, "line 2 is not folded stacks"),
        (&empty, "empty profile"),
        (&fifo, "not a regular file"),
        (&dir.path().join("missing.folded"), "cannot read"),
    ] {
        let run = waitprof_diff(&good, bad, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{}: {stderr}", bad.display());
        assert!(stderr.contains(want), "{}: {stderr}", bad.display());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "nothing is written for bad input");
    }
}
