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

impl RawSample {
    /// Whether its stack runs through a function whose name starts with `prefix`.
    fn runs(&self, prefix: &str) -> bool {
        self.functions.iter().any(|f| f.starts_with(prefix))
    }
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

/// `go tool pprof -http` on a free port: the page at `path`, whole (status line first).
fn pprof_http(file: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = Command::new("go")
        .args(["tool", "pprof", "-no_browser"])
        .arg(format!("-http=127.0.0.1:{port}"))
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("go tool pprof -http");
    let mut page = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            if conn.write_all(request.as_bytes()).is_ok() && conn.read_to_string(&mut page).is_ok()
            {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    page
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
            .filter(|s| s.runs(name))
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
    let traces = go_pprof(&["-traces"], &pprof);
    assert!(
        traces.contains("waitprof_fixture::sleeper")
            && traces.contains("syscall:  clock_nanosleep"),
        "{traces}"
    );
    // and its web UI serves the flame graph
    let page = pprof_http(&pprof, "/ui/flamegraph");
    assert!(
        page.starts_with("HTTP/1.1 200"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(
        page.contains("waitprof_fixture::sleeper"),
        "the flame graph page names the sleeper"
    );
    let sleeps: Vec<&RawSample> = raw
        .samples
        .iter()
        .filter(|s| s.runs("waitprof_fixture::sleeper"))
        .collect();
    assert!(
        sleeps.iter().any(|s| s.values[1] > 0),
        "no blocked sample under the sleeper"
    );
    for s in &sleeps {
        for want in ["kind:[other]", "thread:[sleeper-"] {
            assert!(s.labels.contains(want), "{want} not in {}", s.labels);
        }
        // its sleeps are blocked in the syscall; a preemption in its own code between
        // two sleeps (CI, 2026-12-04) is run-queue wait alone, with no syscall
        let in_sleep = s.labels.contains("syscall:[clock_nanosleep]");
        assert!(
            in_sleep || (s.values[1] == 0 && s.labels.contains("runq_after:[preemption]")),
            "neither the sleep nor a preemption: {}",
            s.labels
        );
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
        .filter(|s| s.runs("waitprof_fixture::take_job"))
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
        .filter(|s| s.runs("waitprof_fixture::release_job"))
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

/// A text-format string's bytes: protoc escapes newlines, quotes, backslashes and
/// (in octal) every byte outside printable ASCII.
fn unescape(quoted: &str) -> String {
    let b = quoted.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let octal = b[i + 1..]
            .iter()
            .take(3)
            .take_while(|c| (b'0'..=b'7').contains(c));
        let digits = octal.count();
        if digits > 0 {
            let n = b[i + 1..i + 1 + digits]
                .iter()
                .fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(n as u8);
            i += 1 + digits;
            continue;
        }
        out.push(match b[i + 1] {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            other => other,
        });
        i += 2;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A protobuf text-format message as `protoc --decode` prints it.
#[derive(Debug, Default)]
struct Msg {
    fields: Vec<(String, Field)>,
}

#[derive(Debug)]
enum Field {
    Scalar(String),
    Msg(Msg),
}

impl Msg {
    fn parse(lines: &mut std::str::Lines<'_>) -> Msg {
        let mut m = Msg::default();
        while let Some(line) = lines.next() {
            let t = line.trim();
            if t == "}" {
                break;
            }
            if let Some(name) = t.strip_suffix(" {") {
                m.fields
                    .push((name.to_string(), Field::Msg(Msg::parse(lines))));
            } else if let Some((k, v)) = t.split_once(": ") {
                let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(quoted) => unescape(quoted),
                    None => v.to_string(),
                };
                m.fields.push((k.to_string(), Field::Scalar(v)));
            }
        }
        m
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, f)| f)
    }

    fn msg<'a>(&'a self, key: &'a str) -> Option<&'a Msg> {
        self.all(key).find_map(|f| match f {
            Field::Msg(m) => Some(m),
            Field::Scalar(_) => None,
        })
    }

    fn scalar<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.all(key).find_map(|f| match f {
            Field::Scalar(s) => Some(s.as_str()),
            Field::Msg(_) => None,
        })
    }

    fn num(&self, key: &str) -> Option<u64> {
        self.scalar(key).and_then(|s| s.parse().ok())
    }

    fn nums(&self, key: &str) -> Vec<u64> {
        self.all(key)
            .filter_map(|f| match f {
                Field::Scalar(s) => s.parse().ok(),
                Field::Msg(_) => None,
            })
            .collect()
    }
}

/// A slice of a thread's timeline, as the trace says it.
#[derive(Debug)]
pub(super) struct TraceSlice {
    /// The thread's `NAME/TID`, or the track's name (a goroutine's).
    pub(super) thread: String,
    pub(super) name: String,
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) flow_end: Vec<u64>,
    pub(super) annotations: Vec<(String, String)>,
}

/// The trace decoded by protoc from Perfetto's published perfetto_trace.proto (the one
/// the perfetto-trace-proto crate ships): its thread (and goroutine) slices, and each
/// flow's source thread by id.
pub(super) fn decode_trace(path: &Path) -> (Vec<TraceSlice>, HashMap<u64, String>) {
    let proto_dir = perfetto_proto_dir();
    let out = Command::new("protoc")
        .arg("--decode=perfetto.protos.Trace")
        .arg("-I")
        .arg(&proto_dir)
        .arg(proto_dir.join("protos/perfetto/trace/perfetto_trace.proto"))
        .stdin(std::fs::File::open(path).expect("the trace"))
        .output()
        .expect("protoc (protobuf-compiler, installed by .ci/setup)");
    assert!(
        out.status.success(),
        "protoc --decode failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let trace = Msg::parse(&mut text.lines());
    let mut threads: HashMap<u64, String> = HashMap::new();
    // each track's slice begun and not yet ended
    let mut open: HashMap<u64, TraceSlice> = HashMap::new();
    let mut slices = Vec::new();
    let mut flows = HashMap::new();
    let mut names: HashMap<(u64, u64), String> = HashMap::new();
    for p in trace.all("packet").filter_map(|f| match f {
        Field::Msg(m) => Some(m),
        Field::Scalar(_) => None,
    }) {
        if let Some(d) = p.msg("track_descriptor") {
            if let (Some(uuid), Some(t)) = (d.num("uuid"), d.msg("thread")) {
                let name = t.scalar("thread_name").unwrap_or("").to_string();
                threads.insert(uuid, format!("{name}/{}", t.num("tid").unwrap_or(0)));
            } else if let (Some(uuid), Some(name)) = (d.num("uuid"), d.scalar("name")) {
                threads.insert(uuid, name.to_string());
            }
            continue;
        }
        // event names are interned per packet sequence
        let sequence = p.num("trusted_packet_sequence_id").unwrap_or(0);
        if let Some(interned) = p.msg("interned_data") {
            for n in interned.all("event_names").filter_map(|f| match f {
                Field::Msg(m) => Some(m),
                Field::Scalar(_) => None,
            }) {
                let (Some(iid), Some(name)) = (n.num("iid"), n.scalar("name")) else {
                    continue;
                };
                names.insert((sequence, iid), name.to_string());
            }
        }
        let Some(e) = p.msg("track_event") else {
            continue;
        };
        let name = match (e.scalar("name"), e.num("name_iid")) {
            (Some(n), _) => n.to_string(),
            (None, Some(iid)) => names
                .get(&(sequence, iid))
                .cloned()
                .unwrap_or_else(|| panic!("name {iid} not interned on sequence {sequence}")),
            (None, None) => String::new(),
        };
        let ts = p.num("timestamp").expect("an event's timestamp");
        let track = e.num("track_uuid").expect("an event's track");
        let thread = threads.get(&track).cloned().unwrap_or_default();
        match e.scalar("type") {
            Some("TYPE_SLICE_BEGIN") => {
                let annotations = e
                    .all("debug_annotations")
                    .filter_map(|f| match f {
                        Field::Msg(a) => Some((
                            a.scalar("name").unwrap_or("").to_string(),
                            a.scalar("string_value").unwrap_or("").to_string(),
                        )),
                        Field::Scalar(_) => None,
                    })
                    .collect();
                let begun = TraceSlice {
                    thread: thread.clone(),
                    name,
                    from: ts,
                    to: ts,
                    flow_end: e.nums("terminating_flow_ids"),
                    annotations,
                };
                let prev = open.insert(track, begun);
                assert!(prev.is_none(), "overlapping slices on {thread} at {ts}");
            }
            Some("TYPE_SLICE_END") => {
                let mut slice = open
                    .remove(&track)
                    .unwrap_or_else(|| panic!("an end without a begin on {thread}"));
                assert!(
                    ts >= slice.from,
                    "a slice ends before it begins on {thread}"
                );
                slice.to = ts;
                slices.push(slice);
            }
            Some("TYPE_INSTANT") => {
                for id in e.nums("flow_ids") {
                    flows.insert(id, thread.clone());
                }
            }
            other => panic!("an unexpected event type {other:?}"),
        }
    }
    assert!(open.is_empty(), "slices left open: {open:?}");
    (slices, flows)
}

/// Where the perfetto-trace-proto crate's sources (and its .proto files) are.
fn perfetto_proto_dir() -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let src = home.join("registry/src");
    std::fs::read_dir(&src)
        .expect("cargo's registry sources")
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with("perfetto-trace-proto-0.1.0")
            })
        })
        .map(|p| p.join("perfetto"))
        .expect("the perfetto-trace-proto crate in cargo's registry")
}

/// The sleep fixture with `--timeline`: the sleeper's 20 sleeps of 50 ms are 20 blocked
/// slices in clock_nanosleep, each within ±5% of what the fixture asked, and every slice
/// of its track is in time order with no overlap (protoc decodes the trace independently).
#[test]
fn timeline_slices_match_the_fixtures_timing() {
    let _s = root_session();
    let run = profile_fixture(&["--timeline"], &["sleep", "20", "50"]);
    let _ = run.folded();
    let (slices, _) = decode_trace(&run.svg.with_extension("pftrace"));
    let sleeps: Vec<&TraceSlice> = slices
        .iter()
        .filter(|s| s.thread.starts_with("sleeper/") && s.name == "blocked: clock_nanosleep")
        .collect();
    assert_eq!(sleeps.len(), 20, "{sleeps:#?}");
    // with every CPU busy, a wakeup and its switch-in can both go unseen by the hooks
    // (once in 40 runs of this test beside three busy loops on two CPUs): the summary
    // counts it, and the sleep runs until its syscall's exit, where it was seen running
    let err = run.stderr();
    let unseen: usize = err
        .split(" wakeups unseen")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of unseen wakeups in:\n{err}"));
    let woken_by = |s: &TraceSlice, who: &str| {
        s.annotations
            .iter()
            .any(|(k, v)| k == "woken by" && v == who)
    };
    let mut unseen_sleeps = 0;
    for s in &sleeps {
        let ms = (s.to - s.from) as f64 / 1e6;
        if woken_by(s, "unseen") {
            // its run-queue wait is in it: it cannot be told apart
            unseen_sleeps += 1;
            assert!(ms >= 47.5, "a sleep of {ms:.3} ms: {s:?}");
            continue;
        }
        assert!((47.5..=52.5).contains(&ms), "a sleep of {ms:.3} ms: {s:?}");
        // a timer woke it: no arrow, and it says so
        assert!(woken_by(s, "an interrupt"), "{s:?}");
    }
    assert!(
        unseen_sleeps <= unseen,
        "{unseen_sleeps} sleeps woken unseen, the summary counts {unseen}:\n{err}"
    );
    // their total is the fixture's own measure (which adds the run-queue wait after each)
    let blocked: u64 = sleeps.iter().map(|s| s.to - s.from).sum();
    assert_close(
        "timeline: sleep 20 50",
        blocked,
        run.measured_ns(),
        TOLERANCE,
    );
    // and the three outputs agree: the sleeps' blocked and runnable slices are the time
    // the flame graph (folded) and pprof give the sleeps, within 1%
    let runnable: u64 = sleeps
        .iter()
        .filter_map(|s| {
            slices
                .iter()
                .find(|n| n.thread == s.thread && n.from == s.to && n.name.starts_with("runnable"))
        })
        .map(|n| n.to - n.from)
        .sum();
    let folded = run.folded();
    let folded_ns = attributed_us(&folded, &["sleeper", "[clock_nanosleep]"]) * 1000;
    assert_close(
        "timeline against folded",
        blocked + runnable,
        folded_ns,
        0.01,
    );
    let pprof = raw(&run.svg.with_extension("pb.gz"));
    let pprof_ns: i64 = pprof
        .samples
        .iter()
        .filter(|s| s.runs("waitprof_fixture::sleeper"))
        .filter(|s| s.labels.contains("syscall:[clock_nanosleep]"))
        .map(|s| s.values[0])
        .sum();
    assert_close(
        "timeline against pprof",
        blocked + runnable,
        pprof_ns as u64,
        0.01,
    );
    assert!(
        run.stderr()
            .contains(" 0 lost (the kernel's ring buffer full)"),
        "{}",
        run.stderr()
    );
}

/// The lock fixture with `--timeline`: each worker's waits on QUEUE_LOCK are blocked
/// slices, and those a thread ended end in a runnable slice with an arrow from the
/// thread that released the lock: the dispatcher (in release_job) or another worker.
#[test]
fn timeline_wakeup_flows_come_from_the_lock_holder() {
    let _s = root_session();
    let run = profile_fixture(&["--timeline"], &["lock", "20", "20"]);
    let _ = run.folded();
    let (slices, flows) = decode_trace(&run.svg.with_extension("pftrace"));
    let on_lock: Vec<usize> = slices
        .iter()
        .enumerate()
        .filter(|(_, s)| s.thread.starts_with("worker-") && s.name.contains("QUEUE_LOCK"))
        .map(|(i, _)| i)
        .collect();
    assert!(on_lock.len() >= 20, "{} waits on the lock", on_lock.len());
    let mut from_dispatcher = 0;
    let mut from_thread = 0;
    for &i in &on_lock {
        let s = &slices[i];
        // the slice after it on the same track: runnable, woken by the releasing thread
        let next = slices
            .iter()
            .filter(|n| n.thread == s.thread && n.from == s.to)
            .find(|n| n.name.starts_with("runnable"));
        let Some(next) = next else { continue };
        let Some(source) = next.flow_end.first().and_then(|id| flows.get(id)) else {
            continue;
        };
        assert!(
            source.starts_with("dispatcher/") || source.starts_with("worker-"),
            "woken from {source}: {next:?}"
        );
        assert_ne!(source, &s.thread, "a thread woke itself");
        from_thread += 1;
        from_dispatcher += usize::from(source.starts_with("dispatcher/"));
    }
    assert!(
        from_thread * 10 >= on_lock.len() * 9,
        "only {from_thread} of {} lock waits end in an arrow from a thread",
        on_lock.len()
    );
    assert!(from_dispatcher > 0, "no wakeup from the dispatcher");
}
