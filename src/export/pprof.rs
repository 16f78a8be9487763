//! pprof: the profile as gzipped `profile.proto` (the upstream schema, compiled into
//! Rust by prost at build time), one file beside each view's SVG, for `go tool pprof`
//! and what ingests it (Pyroscope, Parca, Grafana).
//!
//! The stacks hold real code only: user and kernel functions, with their mappings
//! (path, build id) and source lines where the debug information has them, and marker
//! frames for what is not known (`[missed user stack]`). What the folded files put in
//! synthetic frames is a label here: kind, syscall, outcome, class, object, waker, what
//! put the thread on the run queue, and the thread (with `--per-thread`, which keeps
//! the waits apart by thread).
//!
//! - The main view (`NAME.pb.gz`) has four sample types: `off_cpu` (blocked +
//!   run-queue, the default, as the main flame graph), `blocked`, `runq` (the run-queue
//!   view's time, its cause a label) and `waits`.
//! - The waker view (`NAME.offwake.pb.gz`): blocked time at the waker's stack (user,
//!   then kernel, ending where it woke the thread), the waiter's own code a label.
//! - The goroutine view (`NAME.goroutines.pb.gz`): sampled time and samples at each
//!   goroutine's stack, its state a label.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use prost::Message;
// Fx: keyed by frame lists and names, hashed for every frame of every sample
use rustc_hash::FxHashMap as HashMap;

use crate::analyze::WaitClass;
use crate::fold::View;
use crate::model::GState;
use crate::profile::{FrameKind, Profile, RunqCause, StackId, Wait};
use crate::symbolize::Code;

/// The types prost generates from `profile.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// What the written profile should hold.
#[derive(Clone, Debug, Default)]
pub struct PprofOptions {
    /// Leave idle blocked time out of the main view (`--hide-idle`), as its flame graph does.
    pub hide_idle: bool,
    /// When the session started (Unix time, ns), if known.
    pub start_unix_ns: Option<u64>,
}

/// The view's pprof file, gzipped; None for a view that has no pprof of its own (the
/// run-queue view is the main file's `runq` sample type) or nothing in it.
pub fn encode(profile: &Profile, view: View, opts: &PprofOptions) -> Result<Option<Vec<u8>>> {
    let Some(p) = build(profile, view, opts) else {
        return Ok(None);
    };
    // the fastest level: a 40,000-stack profile's 20 MB compress to 0.6 MB either way
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
    gz.write_all(&p.encode_to_vec())
        .and_then(|()| gz.finish())
        .map(Some)
        .context("compressing the pprof profile")
}

/// The most a pprof profile read back may inflate to: a gzip bomb is refused, not
/// followed.
pub const MAX_DECODED: u64 = 256 << 20;

/// A pprof profile read back (`waitprof diff`, the tests): gzipped, as pprof writes
/// them, or not, inflated to at most `MAX_DECODED` bytes.
pub fn decode(data: &[u8]) -> Result<proto::Profile> {
    use std::io::Read;
    let inflated;
    let raw = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .take(MAX_DECODED + 1)
            .read_to_end(&mut out)
            .context("not a gzipped pprof profile")?;
        if out.len() as u64 > MAX_DECODED {
            anyhow::bail!(
                "decompresses to more than {} MiB: not a profile waitprof wrote",
                MAX_DECODED >> 20
            );
        }
        inflated = out;
        inflated.as_slice()
    } else {
        data
    };
    proto::Profile::decode(raw).map_err(|e| anyhow::anyhow!("not a pprof profile ({e})"))
}

/// The view as a pprof profile (not compressed); None as `encode`.
pub fn build(profile: &Profile, view: View, opts: &PprofOptions) -> Option<proto::Profile> {
    let mut b = Builder::new(profile);
    let types: &[(&str, &str)] = match view {
        View::Main => &[
            ("off_cpu", "nanoseconds"),
            ("blocked", "nanoseconds"),
            ("runq", "nanoseconds"),
            ("waits", "count"),
        ],
        View::OffWake => &[("blocked", "nanoseconds"), ("wakeups", "count")],
        View::Goroutines => &[("goroutine_time", "nanoseconds"), ("samples", "count")],
        View::RunQueue => return None,
    };
    b.out.sample_type = types
        .iter()
        .map(|(t, u)| proto::ValueType {
            r#type: b.strings.id(t),
            unit: b.strings.id(u),
        })
        .collect();
    b.out.period_type = b.out.sample_type.first().copied();
    // pprof shows the last type unless told
    b.out.default_sample_type = b.out.sample_type.first().map_or(0, |t| t.r#type);
    b.out.period = 1;
    match view {
        View::Main => {
            for w in &profile.waits {
                let idle = opts.hide_idle && w.class == WaitClass::Idle;
                let blocked = if idle { 0 } else { w.blocked_ns };
                if blocked == 0 && w.runq_ns == 0 {
                    continue;
                }
                let labels = b.wait_labels(w, true);
                let values = vec![
                    ns(blocked + w.runq_ns),
                    ns(blocked),
                    ns(w.runq_ns),
                    ns(w.count),
                ];
                b.sample(&[w.ustack, w.kstack], values, labels);
            }
        }
        View::OffWake => {
            for w in profile.waits.iter().filter(|w| w.blocked_ns > 0) {
                let mut labels = b.wait_labels(w, false);
                let waiter = crate::analyze::waiter_name(
                    &profile
                        .stack(w.ustack)
                        .filter(|f| f.kind == FrameKind::User)
                        .map(|f| f.name.clone())
                        .collect::<Vec<_>>(),
                );
                labels.push(b.label("waiter", &waiter.replace('`', "")));
                let waker: Vec<StackId> =
                    w.waker_ustack.into_iter().chain(w.waker_kstack).collect();
                b.sample(&waker, vec![ns(w.blocked_ns), ns(w.count)], labels);
            }
        }
        View::Goroutines => {
            for g in &profile.goroutines {
                if g.ns == 0 || (opts.hide_idle && profile.goroutine_idle(g)) {
                    continue;
                }
                let state = match &g.state {
                    GState::Waiting(reason) => reason.clone(),
                    GState::Runnable => "runnable".to_string(),
                    GState::Running => "running".to_string(),
                    GState::Syscall => "syscall".to_string(),
                };
                let labels = vec![
                    b.label("state", &state),
                    b.num_label("goroutines", g.goroutines),
                ];
                b.sample(&[g.stack], vec![ns(g.ns), ns(g.samples)], labels);
            }
        }
        View::RunQueue => {}
    }
    if b.out.sample.is_empty() {
        return None;
    }
    let what = match view {
        View::Main if opts.hide_idle => "off-CPU time without idle waiting",
        View::Main => "off-CPU time",
        View::OffWake => "blocked time by waker",
        _ => "goroutines (sampled)",
    };
    let comment = format!(
        "waitprof: {} (pid {}), {:.1} s, {what}",
        profile.process,
        profile.pid,
        profile.session_ns as f64 / 1e9
    );
    b.out.comment = vec![b.strings.id(&comment)];
    if view == View::Goroutines {
        let sampled = "goroutine time is sampled: each sample counts the time to the next sweep";
        b.out.comment.push(b.strings.id(sampled));
    }
    b.out.duration_nanos = ns(profile.session_ns);
    b.out.time_nanos = opts.start_unix_ns.map_or(0, ns);
    let Builder {
        mut out, strings, ..
    } = b;
    out.string_table = strings.list;
    main_binary_first(&mut out);
    Some(out)
}

/// pprof takes the first mapping for the main binary: the mappings go in order of
/// address, which puts the executable (mapped lowest, PIE or not) before the libraries
/// and the kernel.
fn main_binary_first(p: &mut proto::Profile) {
    p.mapping.sort_by_key(|m| (m.memory_start, m.id));
    let new_id: HashMap<u64, u64> = p
        .mapping
        .iter_mut()
        .enumerate()
        .map(|(i, m)| {
            let old = m.id;
            m.id = i as u64 + 1;
            (old, m.id)
        })
        .collect();
    for l in &mut p.location {
        l.mapping_id = new_id.get(&l.mapping_id).copied().unwrap_or(0);
    }
}

/// pprof's values are signed; a time never comes near 2^63 ns.
fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// pprof's string table: index 0 is the empty string.
struct Strings {
    ids: HashMap<String, i64>,
    list: Vec<String>,
}

impl Strings {
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.list.len() as i64;
        self.list.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }
}

struct Builder<'p> {
    profile: &'p Profile,
    out: proto::Profile,
    strings: Strings,
    /// By the code's allocation: one mapping per mapped range.
    mappings: HashMap<*const Code, u64>,
    /// What the frames at each code have (files and lines, inlined frames), from one pass
    /// over the profile's frames.
    code_has: HashMap<*const Code, (bool, bool)>,
    /// By the frames a location holds (an address's function and what is inlined there).
    locations: HashMap<Vec<u32>, u64>,
    /// By name and file.
    functions: HashMap<(Arc<str>, Option<Arc<str>>), u64>,
    /// Each stack's locations (of its parts, root first), leaf first, once made.
    stacks: HashMap<Vec<StackId>, Vec<u64>>,
    /// The marker locations, by name.
    markers: HashMap<String, u64>,
}

impl<'p> Builder<'p> {
    fn new(profile: &'p Profile) -> Builder<'p> {
        let mut code_has: HashMap<*const Code, (bool, bool)> = HashMap::default();
        for s in profile.frames.iter().filter_map(|f| f.site.as_ref()) {
            if let Some(code) = &s.code {
                let has = code_has.entry(Arc::as_ptr(code)).or_default();
                has.0 |= s.file.is_some();
                has.1 |= s.inlined;
            }
        }
        Builder {
            code_has,
            profile,
            out: proto::Profile::default(),
            strings: Strings {
                ids: std::iter::once((String::new(), 0)).collect(),
                list: vec![String::new()],
            },
            mappings: HashMap::default(),
            locations: HashMap::default(),
            functions: HashMap::default(),
            stacks: HashMap::default(),
            markers: HashMap::default(),
        }
    }

    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.strings.id(key),
            str: self.strings.id(value),
            ..Default::default()
        }
    }

    fn num_label(&mut self, key: &str, value: u64) -> proto::Label {
        proto::Label {
            key: self.strings.id(key),
            num: ns(value),
            ..Default::default()
        }
    }

    /// A wait's labels; `runq`: with what put it on the run queue.
    fn wait_labels(&mut self, w: &Wait, runq: bool) -> Vec<proto::Label> {
        let mut l = vec![
            self.label("kind", w.kind.name()),
            self.label("outcome", w.outcome.key()),
            self.label("class", w.class.key()),
        ];
        if w.tid != 0 {
            l.push(self.label("thread", &w.thread));
            l.push(self.num_label("tid", u64::from(w.tid)));
        }
        if let Some(s) = &w.syscall {
            l.push(self.label("syscall", s));
        }
        if let Some(o) = &w.object {
            l.push(self.label("object", o));
        }
        if w.woken {
            l.push(self.label("waker", &w.waker));
        }
        if runq && w.runq_ns > 0 {
            let cause = match w.runq_cause {
                RunqCause::Wakeup => "wakeup",
                RunqCause::Preemption => "preemption",
            };
            l.push(self.label("runq_after", cause));
        }
        l
    }

    /// A sample at the stack made of `parts` (root first, each a profile stack).
    fn sample(&mut self, parts: &[StackId], value: Vec<i64>, label: Vec<proto::Label>) {
        let mut location_id = self.locations_of(parts);
        if location_id.is_empty() && !parts.is_empty() {
            location_id.push(self.marker_location("[no stack]"));
        }
        if parts.is_empty() {
            location_id.push(self.marker_location("[no waker stack]"));
        }
        self.out.sample.push(proto::Sample {
            location_id,
            value,
            label,
        });
    }

    /// A stack's locations, leaf first: each address one location, with the functions
    /// inlined there as its lines (innermost first, as pprof orders them).
    fn locations_of(&mut self, parts: &[StackId]) -> Vec<u64> {
        if let Some(l) = self.stacks.get(parts) {
            return l.clone();
        }
        let profile = self.profile;
        let frames: Vec<u32> = parts
            .iter()
            .filter_map(|&p| profile.stacks.get(p as usize))
            .flat_map(|s| s.iter().copied())
            .collect();
        // group root-first frames: an address's function, then what is inlined into it
        let mut groups: Vec<Vec<u32>> = Vec::new();
        for &f in &frames {
            let inlined = profile
                .frames
                .get(f as usize)
                .and_then(|fr| fr.site.as_ref())
                .is_some_and(|s| s.inlined);
            let same_addr = |g: &Vec<u32>| {
                let addr = |id: u32| {
                    profile
                        .frames
                        .get(id as usize)
                        .and_then(|fr| fr.site.as_ref())
                        .map(|s| s.addr)
                };
                g.first().and_then(|&first| addr(first)) == addr(f)
            };
            match groups.last_mut() {
                Some(g) if inlined && same_addr(g) => g.push(f),
                _ => groups.push(vec![f]),
            }
        }
        let ids: Vec<u64> = groups.into_iter().rev().map(|g| self.location(g)).collect();
        self.stacks.insert(parts.to_vec(), ids.clone());
        ids
    }

    fn location(&mut self, group: Vec<u32>) -> u64 {
        if let Some(&id) = self.locations.get(&group) {
            return id;
        }
        let profile = self.profile;
        let first = group.first().and_then(|&f| profile.frames.get(f as usize));
        let site = first.and_then(|f| f.site.as_ref());
        let mapping_id = match site.and_then(|s| s.code.as_ref()) {
            Some(code) => self.mapping(code),
            None => 0,
        };
        let line = group
            .iter()
            .rev()
            .filter_map(|&f| profile.frames.get(f as usize))
            .map(|f| {
                let file = f.site.as_ref().and_then(|s| s.file.clone());
                proto::Line {
                    function_id: self.function(&f.name, file),
                    line: f.site.as_ref().map_or(0, |s| i64::from(s.line)),
                    column: 0,
                }
            })
            .collect();
        let id = self.out.location.len() as u64 + 1;
        self.out.location.push(proto::Location {
            id,
            mapping_id,
            address: site.map_or(0, |s| s.addr),
            line,
            is_folded: false,
        });
        self.locations.insert(group, id);
        id
    }

    /// A location that is only a name (nothing stands for it in the profile's frames).
    fn marker_location(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.markers.get(name) {
            return id;
        }
        let function_id = self.function(&Arc::from(name), None);
        let id = self.out.location.len() as u64 + 1;
        self.out.location.push(proto::Location {
            id,
            line: vec![proto::Line {
                function_id,
                ..Default::default()
            }],
            ..Default::default()
        });
        self.markers.insert(name.to_string(), id);
        id
    }

    fn function(&mut self, name: &Arc<str>, file: Option<Arc<str>>) -> u64 {
        let key = (name.clone(), file);
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.out.function.len() as u64 + 1;
        let name_id = self.strings.id(name);
        let filename = key.1.as_deref().map_or(0, |f| self.strings.id(f));
        // the names are demangled already; no system (mangled) name is kept, which also
        // tells pprof not to strip a Rust name's `<...>` as C++ template parameters
        self.out.function.push(proto::Function {
            id,
            name: name_id,
            system_name: 0,
            filename,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    fn mapping(&mut self, code: &Arc<Code>) -> u64 {
        if let Some(&id) = self.mappings.get(&Arc::as_ptr(code)) {
            return id;
        }
        let id = self.out.mapping.len() as u64 + 1;
        let filename = self.strings.id(&code.path);
        let build_id = code.build_id.as_deref().map_or(0, |b| self.strings.id(b));
        // what the frames at this code have: every frame here was named (a name made
        // for an unknown address has no site), some with files and lines
        let (files, inlined) = self
            .code_has
            .get(&Arc::as_ptr(code))
            .copied()
            .unwrap_or_default();
        self.out.mapping.push(proto::Mapping {
            id,
            memory_start: code.start,
            memory_limit: code.end,
            file_offset: code.offset,
            filename,
            build_id,
            has_functions: true,
            has_filenames: files,
            has_line_numbers: files,
            has_inline_frames: inlined,
        });
        self.mappings.insert(Arc::as_ptr(code), id);
        id
    }
}
