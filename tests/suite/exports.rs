//! The exports beside the flame graph, opened with the tools users open them with: the
//! pprof profiles of a fixture session in `go tool pprof` (its own decoder, not
//! waitprof's), against the folded file and the fixture's own timing.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use super::common::*;

/// One sample as `go tool pprof -raw` prints it.
#[derive(Debug)]
struct RawSample {
    values: Vec<i64>,
    /// Function names, leaf first (an inlined function before the one it is in).
    functions: Vec<String>,
    labels: String,
}

/// What `go tool pprof -raw` prints of a profile: its samples, and each location's
/// lines (`function file:line`).
struct Raw {
    text: String,
    samples: Vec<RawSample>,
    lines: HashMap<u64, Vec<String>>,
}

fn go_pprof(args: &[&str], file: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .output()
        .expect("go tool pprof (golang-go, installed by .ci/setup)");
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {} failed:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn raw(file: &Path) -> Raw {
    let text = go_pprof(&["-raw"], file);
    // Locations:  `   7: 0x55.. M=1 fn file:line s=0()`, then `             inner file:line`
    // for each function inlined there, before it
    let mut lines: HashMap<u64, Vec<String>> = HashMap::new();
    let mut current = None;
    let mut section = "";
    let mut samples: Vec<(Vec<i64>, Vec<u64>, String)> = Vec::new();
    for line in text.lines() {
        match line {
            "Samples:" | "Locations" | "Mappings" => {
                section = line;
                continue;
            }
            _ => {}
        }
        let t = line.trim();
        match section {
            "Samples:" => {
                if let Some((values, locs)) = t.split_once(": ") {
                    let values: Option<Vec<i64>> =
                        values.split_whitespace().map(|v| v.parse().ok()).collect();
                    if let Some(values) = values {
                        let locs = locs
                            .split_whitespace()
                            .map(|l| l.parse().expect("a location id"))
                            .collect();
                        samples.push((values, locs, String::new()));
                        continue;
                    }
                }
                if let Some(s) = samples.last_mut() {
                    s.2.push_str(t);
                    s.2.push(' ');
                }
            }
            "Locations" => {
                let (id, rest) = match t.split_once(": ") {
                    Some((id, rest)) if id.parse::<u64>().is_ok() => {
                        (id.parse().ok(), rest.split_once(' ').map_or("", |(_, r)| r))
                    }
                    _ => (None, t),
                };
                if id.is_some() {
                    current = id;
                }
                // `M=1 fn file:line s=0()` or, inlined, `fn file:line s=0()`
                let rest = rest
                    .strip_prefix("M=")
                    .map_or(rest, |r| r.split_once(' ').map_or("", |(_, after)| after));
                let function = rest.rsplit_once(" s=").map_or(rest, |(f, _)| f);
                if let Some(c) = current {
                    lines.entry(c).or_default().push(function.to_string());
                }
            }
            _ => {}
        }
    }
    let samples = samples
        .into_iter()
        .map(|(values, locs, labels)| RawSample {
            values,
            functions: locs
                .iter()
                .flat_map(|l| lines.get(l).cloned().unwrap_or_default())
                .collect(),
            labels,
        })
        .collect();
    Raw {
        text,
        samples,
        lines,
    }
}

impl Raw {
    fn total(&self, index: usize) -> i64 {
        self.samples.iter().map(|s| s.values[index]).sum()
    }

    /// The time (of sample type `index`) of the samples with a function named `name`.
    fn under(&self, name: &str, index: usize) -> i64 {
        self.samples
            .iter()
            .filter(|s| s.functions.iter().any(|f| f.starts_with(name)))
            .map(|s| s.values[index])
            .sum()
    }
}

fn folded_us(path: &Path) -> (u64, usize) {
    let text = std::fs::read_to_string(path).expect("the folded file");
    let lines = parse_folded(&text);
    (lines.iter().map(|(_, v)| v).sum(), lines.len())
}

/// The sleep fixture: the pprof profile opens in `go tool pprof`, with the folded
/// file's total, the fixture's measured sleep under its own function (with its source
/// file and line), the binary's mapping and build id, and the wait's labels.
#[test]
fn pprof_opens_in_go_tool_pprof_with_the_folded_totals() {
    let _s = root_session();
    let run = profile_fixture(&["--per-thread"], &["sleep", "20", "50"]);
    let _ = run.folded();
    let pprof = run.svg.with_extension("pb.gz");
    let raw = raw(&pprof);
    let header = raw
        .text
        .lines()
        .find(|l| l.contains("[dflt]"))
        .unwrap_or("");
    assert!(
        header.starts_with(
            "off_cpu/nanoseconds[dflt] blocked/nanoseconds runq/nanoseconds waits/count"
        ),
        "sample types: {header}"
    );
    // the folded file's total, each of its lines rounded to the microsecond
    let (us, lines) = folded_us(&run.folded_path);
    let off_cpu = raw.total(0);
    assert!(
        off_cpu.abs_diff(us as i64 * 1000) <= 500 * lines as u64,
        "pprof {off_cpu} ns, folded {us} us over {lines} lines"
    );
    assert_eq!(
        raw.total(0),
        raw.total(1) + raw.total(2),
        "off-CPU = blocked + run queue"
    );
    // the fixture's measured sleep, in the function that sleeps
    assert_close(
        "pprof: sleep 20 50 under sleeper",
        raw.under("waitprof_fixture::sleeper", 0) as u64,
        run.measured_ns(),
        TOLERANCE,
    );
    // its source line, the binary it is in, and the labels that are frames in the folded file
    let sleeper = raw
        .lines
        .values()
        .flatten()
        .find(|l| l.starts_with("waitprof_fixture::sleeper "))
        .unwrap_or_else(|| panic!("no sleeper location in:\n{}", raw.text));
    assert!(
        sleeper.contains("tests/fixtures/fixture.rs:") && !sleeper.ends_with(":0"),
        "sleeper's line: {sleeper}"
    );
    let mappings = raw.text.split("Mappings").nth(1).unwrap_or("");
    assert!(
        mappings
            .lines()
            .any(|m| m.contains("waitprof-fixture") && m.contains("[FN]")),
        "mappings:\n{mappings}"
    );
    let top = go_pprof(&["-top"], &pprof);
    assert!(top.contains("File: waitprof-fixture"), "{top}");
    assert!(top.contains("Build ID: "), "{top}");
    let sleeps: Vec<&RawSample> = raw
        .samples
        .iter()
        .filter(|s| {
            s.functions
                .iter()
                .any(|f| f.starts_with("waitprof_fixture::sleeper"))
        })
        .collect();
    for s in &sleeps {
        for want in [
            "kind:[other]",
            "syscall:[clock_nanosleep]",
            "thread:[sleeper-",
        ] {
            assert!(s.labels.contains(want), "{want} not in {}", s.labels);
        }
    }
    // and no synthetic frame: the syscall and the run queue are labels and values
    assert!(
        !raw.lines
            .values()
            .flatten()
            .any(|l| l.starts_with("[clock_nanosleep]") || l.starts_with("[run queue]")),
        "a synthetic frame in:\n{}",
        raw.text
    );
}

/// The lock fixture: in the main profile, the workers' waits in `take_job` carry the
/// lock's name and their wakers as labels; the waker profile has the time at the
/// waker's stack, `release_job` among it, with the waiting function as a label.
#[test]
fn pprof_labels_the_lock_and_its_waker() {
    let _s = root_session();
    let run = profile_fixture(&[], &["lock", "20", "20"]);
    let _ = run.folded();
    let main = raw(&run.svg.with_extension("pb.gz"));
    let contended: Vec<&RawSample> = main
        .samples
        .iter()
        .filter(|s| {
            s.functions
                .iter()
                .any(|f| f.starts_with("waitprof_fixture::take_job"))
        })
        .filter(|s| s.labels.contains("kind:[futex]"))
        .collect();
    assert!(
        !contended.is_empty(),
        "no futex wait in take_job:\n{}",
        main.text
    );
    let on_lock: i64 = contended
        .iter()
        .filter(|s| s.labels.contains("QUEUE_LOCK") && s.labels.contains("waker:[thread "))
        .map(|s| s.values[1])
        .sum();
    let all: i64 = contended.iter().map(|s| s.values[1]).sum();
    assert!(
        on_lock as f64 >= 0.95 * all as f64,
        "{on_lock} of {all} ns in take_job labelled with QUEUE_LOCK and a waker"
    );
    let wakers = raw(&run.svg.with_extension("offwake.pb.gz"));
    let (us, lines) = folded_us(&run.svg.with_extension("offwake.folded"));
    assert!(
        wakers.total(0).abs_diff(us as i64 * 1000) <= 500 * lines as u64,
        "off-wake pprof {} ns, folded {us} us",
        wakers.total(0)
    );
    let released = wakers
        .samples
        .iter()
        .filter(|s| {
            s.functions
                .iter()
                .any(|f| f.starts_with("waitprof_fixture::release_job"))
        })
        .filter(|s| s.labels.contains("waiter:[waitprof_fixture::take_job]"))
        .map(|s| s.values[0])
        .sum::<i64>();
    assert!(
        released > 0,
        "no wait in take_job woken from release_job:\n{}",
        wakers.text
    );
}

/// The lock fixture with `--json`: the JSON's facts are the summary's and the folded
/// file's (the kinds' total, each kind's calls, the findings in their order), and the
/// lock's finding is typed, with the lock as its subject.
#[test]
fn json_holds_the_summarys_facts() {
    let _s = root_session();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("facts/session.json");
    let path_arg = path.to_string_lossy().into_owned();
    let run = profile_fixture(&["--json", &path_arg], &["lock", "20", "20"]);
    let _ = run.folded();
    let text = std::fs::read_to_string(&path).expect("the JSON file is written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["schema"], "waitprof.summary/1");
    assert!(
        run.stderr().contains("wrote the summary's facts to"),
        "{}",
        run.stderr()
    );
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));
    let kinds = v["kinds"].as_array().expect("kinds");
    let off_cpu: u64 = kinds
        .iter()
        .map(|k| n(&k["blocked_ns"]) + n(&k["run_queue_ns"]))
        .sum();
    let (us, lines) = folded_us(&run.folded_path);
    assert!(
        off_cpu.abs_diff(us * 1000) <= 500 * lines as u64,
        "JSON {off_cpu} ns, folded {us} us"
    );
    // each kind's count is the summary's (`futex  1.20 s (...), 60 calls: ...`)
    for k in kinds.iter().filter(|k| n(&k["count"]) > 0) {
        let name = k["kind"].as_str().expect("a kind");
        let line = run.kind_line(name);
        assert!(
            line.contains(&format!("), {} ", n(&k["count"]))),
            "{name}: {} in JSON, summary: {line}",
            n(&k["count"])
        );
    }
    // the findings, in the summary's order and words
    let stderr = run.stderr();
    let listed: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("findings"))
        .skip(1)
        .map(|l| l.trim_start().split_once(". ").map_or(l, |(_, t)| t))
        .collect();
    let findings = v["findings"].as_array().expect("findings");
    assert!(!findings.is_empty(), "no findings in:\n{text}");
    for (f, line) in findings.iter().zip(&listed) {
        assert_eq!(f["text"].as_str(), Some(*line));
    }
    let lock = findings
        .iter()
        .find(|f| f["what"] == "lock_contention")
        .unwrap_or_else(|| panic!("no lock contention finding in:\n{text}"));
    assert!(
        lock["subject"]
            .as_str()
            .is_some_and(|s| s.contains("QUEUE_LOCK")),
        "{lock}"
    );
    let object = v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"].as_str().is_some_and(|s| s.contains("QUEUE_LOCK")))
        .unwrap_or_else(|| panic!("no QUEUE_LOCK object in:\n{text}"));
    assert_eq!(object["class"], "lock_contention");
    assert_eq!(n(&object["threads"]), 3, "{object}");
    assert_eq!(
        lock["ns"], object["blocked_ns"],
        "the finding's time is the lock's"
    );
}

/// `--json` to a place that cannot be written fails before the session, with its path.
#[test]
fn json_to_an_unwritable_path_fails_first() {
    let _s = root_session();
    let out = Command::new(WAITPROF)
        .args([
            "-d",
            "1s",
            "--json",
            "/proc/waitprof/s.json",
            "--",
            FIXTURE,
            "sleep",
            "1",
            "1",
        ])
        .output()
        .expect("waitprof");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot create the output directory /proc/waitprof"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("recording"),
        "the session started: {stderr}"
    );
}
