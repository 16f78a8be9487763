//! Folding: the symbolized profile into folded-stack lines, the format flame graph tools
//! read. Pure and deterministic: the same profile always gives the same text.
//!
//! A line is: process; thread (with --per-thread); user frames, root first; the syscall
//! as a synthetic frame (`[futex]`); kernel frames; then the value in microseconds. The
//! run-queue part of a wait (woken, but no CPU yet) sits on top as `[run queue]`.
//! Kernel frames carry the `_[k]` annotation and synthetic frames `_[i]` / `_[j]`, as
//! perf-derived folded files do, so flame graph tools colour them apart.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::model::{Collected, Row, StackRef};
use crate::symbolize::{Frames, Symbols};
use crate::syscalls;

#[derive(Clone, Debug, Default)]
pub struct FoldOptions {
    pub per_thread: bool,
}

pub const RUN_QUEUE_FRAME: &str = "[run queue]_[j]";

/// The folded file: one `stack value` line per distinct stack, values in microseconds,
/// sorted frame by frame. Kept as the text itself: that is what is written and what
/// inferno reads, and a large profile's text is the biggest thing in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    text: String,
}

impl Folded {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The text of the folded file.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Each line as (stack, microseconds).
    pub fn lines(&self) -> impl Iterator<Item = (&str, u64)> {
        self.text.lines().filter_map(|l| {
            let (stack, us) = l.rsplit_once(' ')?;
            Some((stack, us.parse().ok()?))
        })
    }

    pub fn total_us(&self) -> u64 {
        self.lines().map(|(_, v)| v).sum()
    }
}

/// A frame name safe for the folded format: no separators, no line breaks.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Frame names as they go into lines: cleaned (and suffixed) once per distinct name,
/// then shared by every line.
#[derive(Default)]
struct Names {
    /// Keyed by the address of the shared name: user frames, then kernel frames.
    user: HashMap<usize, Arc<str>>,
    kernel: HashMap<usize, Arc<str>>,
    made: HashMap<String, Arc<str>>,
}

/// `name` cleaned and suffixed, once per distinct shared name (keyed by its address).
fn shared(map: &mut HashMap<usize, Arc<str>>, name: &Arc<str>, suffix: &str) -> Arc<str> {
    let key = Arc::as_ptr(name) as *const u8 as usize;
    map.entry(key)
        .or_insert_with(|| Arc::from(format!("{}{suffix}", clean(name))))
        .clone()
}

impl Names {
    fn user(&mut self, name: &Arc<str>) -> Arc<str> {
        shared(&mut self.user, name, "")
    }

    fn kernel(&mut self, name: &Arc<str>) -> Arc<str> {
        shared(&mut self.kernel, name, "_[k]")
    }

    /// A synthetic or derived frame (`[futex]_[i]`, a thread name).
    fn made(&mut self, name: String) -> Arc<str> {
        self.made
            .entry(name)
            .or_insert_with_key(|n| Arc::from(n.as_str()))
            .clone()
    }
}

fn user_frames(stack: StackRef, symbols: &Symbols, names: &mut Names, out: &mut Frames) {
    let marker = match stack {
        StackRef::Id(id) => match symbols.user.get(&id) {
            Some(frames) => {
                out.extend(frames.iter().map(|f| names.user(f)));
                return;
            }
            None => "[missed user stack]".to_string(),
        },
        StackRef::BeforeAttach => "[blocked before attach]".into(),
        StackRef::NewThread => "[new thread]".into(),
        StackRef::NotCaptured => return,
        StackRef::TableFull => "[stack table full]".into(),
        StackRef::Missing(errno) => {
            format!("[missed user stack: {}]", syscalls::errno_name(errno))
        }
        StackRef::Proc(_) => "[missed user stack]".into(),
    };
    out.push(names.made(marker));
}

fn kernel_frames(
    stack: StackRef,
    symbols: &Symbols,
    collected: &Collected,
    names: &mut Names,
    out: &mut Frames,
) {
    let marker = match stack {
        StackRef::Id(id) => match symbols.kernel.get(&id) {
            Some(frames) => {
                out.extend(frames.iter().map(|f| names.kernel(f)));
                return;
            }
            None => "[missed kernel stack]".to_string(),
        },
        StackRef::Proc(i) => {
            for f in collected.proc_kstacks.get(i as usize).into_iter().flatten() {
                out.push(names.made(format!("{}_[k]", clean(f))));
            }
            return;
        }
        StackRef::BeforeAttach => "[blocked before attach]".into(),
        StackRef::NotCaptured | StackRef::NewThread => return,
        StackRef::TableFull => "[stack table full]".into(),
        StackRef::Missing(errno) => {
            format!("[missed kernel stack: {}]", syscalls::errno_name(errno))
        }
    };
    out.push(names.made(format!("{marker}_[k]")));
}

/// The synthetic frame naming the syscall a wait happened in.
pub fn syscall_frame(row: &Row) -> String {
    match row.syscall {
        Some(nr) => format!("[{}]", syscalls::name(nr)),
        None => "[no syscall]".to_string(),
    }
}

fn thread_name(collected: &Collected, tid: u32) -> String {
    let comm = collected
        .threads
        .iter()
        .find(|t| t.tid == tid)
        .map(|t| t.comm.as_str())
        .filter(|c| !c.is_empty())
        .unwrap_or("?");
    format!("{}-{tid}", clean(comm))
}

/// A line's frames as a map key. Every frame comes from `Names`, which hands out one
/// `Arc` per distinct name: equal names are the same pointer, so hashing and comparing
/// pointers is exact, and costs 8 bytes a frame instead of the name's length.
struct Line(Frames);

impl PartialEq for Line {
    fn eq(&self, other: &Line) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for Line {}

impl std::hash::Hash for Line {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for f in &self.0 {
            state.write_usize(Arc::as_ptr(f) as *const u8 as usize);
        }
    }
}

/// Frame by frame; frames shared between the two stacks compare by address first, so
/// the long common roots of a large profile cost nothing.
fn cmp_frames(a: &Frames, b: &Frames) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if Arc::ptr_eq(x, y) {
            continue;
        }
        match x.cmp(y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    a.len().cmp(&b.len())
}

/// Folds every row of the profile.
pub fn fold(collected: &Collected, symbols: &Symbols, opts: &FoldOptions) -> Folded {
    let mut names = Names::default();
    let process = names.made(clean(&collected.comm));
    let run_queue = names.made(RUN_QUEUE_FRAME.to_string());
    let mut ns: HashMap<Line, u64> = HashMap::new();
    for row in &collected.rows {
        let mut frames = vec![process.clone()];
        if opts.per_thread {
            frames.push(names.made(thread_name(collected, row.tid)));
        }
        user_frames(row.ustack, symbols, &mut names, &mut frames);
        frames.push(names.made(format!("{}_[i]", syscall_frame(row))));
        kernel_frames(row.kstack, symbols, collected, &mut names, &mut frames);
        if row.runq_ns > 0 {
            let mut runq = frames.clone();
            runq.push(run_queue.clone());
            *ns.entry(Line(runq)).or_default() += row.runq_ns;
        }
        if row.blocked_ns > 0 {
            *ns.entry(Line(frames)).or_default() += row.blocked_ns;
        }
    }
    let mut lines: Vec<(Frames, u64)> = ns.into_iter().map(|(l, ns)| (l.0, ns)).collect();
    lines.sort_unstable_by(|a, b| cmp_frames(&a.0, &b.0));
    let mut text = String::new();
    for (frames, ns) in lines {
        let us = (ns + 500) / 1000;
        if us == 0 {
            continue;
        }
        for (i, f) in frames.iter().enumerate() {
            if i > 0 {
                text.push(';');
            }
            text.push_str(f);
        }
        let _ = writeln!(text, " {us}");
    }
    Folded { text }
}
