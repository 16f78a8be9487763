//! Folding: the symbolized profile into folded-stack lines, the format flame graph tools
//! read. Pure and deterministic: the same profile always gives the same text.
//!
//! A line is: process; thread (with --per-thread); user frames, root first; the syscall
//! as a synthetic frame (`[futex]`); kernel frames; then the value in microseconds. The
//! run-queue part of a wait (woken, but no CPU yet) sits on top as `[run queue]`.
//! Kernel frames carry the `_[k]` annotation and synthetic frames `_[i]` / `_[j]`, as
//! perf-derived folded files do, so flame graph tools colour them apart.
//!
//! Three views of one profile: `Main` (above), `OffWake` (the blocked time only, each
//! line continued past a `--` frame by the waker's stack upside down, leaf first, up to
//! the waker's name, as offwaketime prints them; waker frames carry `_[w]`), and
//! `RunQueue` (the run-queue wait only, topped by whether a wakeup or a preemption
//! put the thread there).

use std::cmp::Ordering;
// Fx: the keys are frame addresses and lines of them, hashed millions of times in a large profile
use rustc_hash::FxHashMap as HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;

use crate::analyze;
use crate::model::{Collected, Outcome, Row, StackRef, WakerCtx};
use crate::symbolize::{Frames, Symbols};
use crate::syscalls;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Main,
    OffWake,
    RunQueue,
    /// A Go program's goroutines: each stack topped by its state (the wait reason).
    Goroutines,
}

#[derive(Clone, Debug, Default)]
pub struct FoldOptions {
    pub per_thread: bool,
    /// Leave idle blocked time out (see `analyze::WaitClass`); run-queue wait stays.
    pub hide_idle: bool,
    pub view: View,
}

pub const RUN_QUEUE_FRAME: &str = "[run queue]_[j]";
/// On top of a wait still in progress when the session ended.
pub const STILL_WAITING_FRAME: &str = "[still waiting at the end]";
/// Between the blocked stack and the waker's, as offwaketime has it; flame graph tools
/// draw it dark grey.
pub const WAKER_SEPARATOR: &str = "--";

/// The folded file: one `stack value` line per distinct stack, values in microseconds,
/// sorted frame by frame. Kept as interned frames, not text: a large profile's text is
/// hundreds of megabytes, written straight to its file (`write_to`) and never held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// (frames, microseconds), in the order of their joined text; none of 0 us.
    lines: Vec<(Frames, u64)>,
    /// The waker frames that are kernel functions (off-wake view), to colour them apart.
    waker_kernel_frames: Vec<String>,
}

impl Folded {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Writes the folded file's text.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for (frames, us) in &self.lines {
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    out.write_all(b";")?;
                }
                out.write_all(f.as_bytes())?;
            }
            writeln!(out, " {us}")?;
        }
        Ok(())
    }

    /// The folded file's text, whole (for tests and small profiles).
    pub fn text(&self) -> String {
        self.lines()
            .map(|(stack, us)| format!("{stack} {us}\n"))
            .collect()
    }

    /// Each line as (stack, microseconds).
    pub fn lines(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.lines.iter().map(|(frames, us)| (joined(frames), *us))
    }

    /// Every distinct frame name of the profile.
    pub fn frame_names(&self) -> impl Iterator<Item = &str> {
        let mut seen = std::collections::HashSet::new();
        self.lines
            .iter()
            .flat_map(|(frames, _)| frames.iter())
            .filter(move |f| seen.insert(Arc::as_ptr(f) as *const u8 as usize))
            .map(|f| &**f)
    }

    pub fn total_us(&self) -> u64 {
        self.lines.iter().map(|(_, v)| v).sum()
    }

    pub fn waker_kernel_frames(&self) -> &[String] {
        &self.waker_kernel_frames
    }

    /// What a flame graph draws of the profile, as folded text: a frame narrower than
    /// `min_width_pct` of the whole (inferno's `min_width`, under which inferno prunes it
    /// anyway) becomes one line with its whole subtree's time, so every frame drawn keeps
    /// its width and the lines keep the input's order. Lines are merged as inferno merges sorted input: a
    /// frame joins the previous line's frame at its depth only when every frame below is
    /// shared, so the drawing is the same. A 40,000-stack profile gives inferno a few
    /// thousand lines to draw instead of 80,000.
    pub fn drawable(&self, min_width_pct: f64) -> String {
        struct Node<'a> {
            frame: Option<&'a Arc<str>>,
            total: u64,
            children: Vec<usize>,
        }
        let mut nodes = vec![Node {
            frame: None,
            total: 0,
            children: Vec::new(),
        }];
        for (frames, us) in &self.lines {
            let mut n = 0;
            nodes[0].total += us;
            for f in frames {
                let same = nodes[n]
                    .children
                    .last()
                    .copied()
                    .filter(|&c| nodes[c].frame.is_some_and(|g| Arc::ptr_eq(g, f) || g == f));
                n = match same {
                    Some(c) => c,
                    None => {
                        nodes.push(Node {
                            frame: Some(f),
                            total: 0,
                            children: Vec::new(),
                        });
                        let c = nodes.len() - 1;
                        nodes[n].children.push(c);
                        c
                    }
                };
                nodes[n].total += us;
            }
        }
        // inferno's test: a frame is drawn unless its time < min_width / (100 / total)
        let min_time = min_width_pct / (100.0 / nodes[0].total as f64);
        let drawn = |n: usize| nodes[n].total as f64 >= min_time;
        let mut text = String::new();
        let mut path: Vec<&str> = Vec::new();
        // depth-first, each node's own time before its children, as the sorted input had it
        let mut todo: Vec<(usize, usize)> =
            nodes[0].children.iter().rev().map(|&c| (c, 0)).collect();
        while let Some((n, depth)) = todo.pop() {
            path.truncate(depth);
            path.push(nodes[n].frame.map_or("", |f| &**f));
            if !drawn(n) {
                // one line for the whole subtree, in its first line's place (down to the
                // first node with a line of its own): inferno prunes it, and its time still
                // counts in its parent's width
                let (mut m, mut first) = (n, path.clone());
                while let Some(&c) = nodes[m].children.first() {
                    let below: u64 = nodes[m].children.iter().map(|&c| nodes[c].total).sum();
                    if nodes[m].total > below {
                        break;
                    }
                    m = c;
                    first.push(nodes[m].frame.map_or("", |f| &**f));
                }
                let _ = writeln!(text, "{} {}", first.join(";"), nodes[n].total);
                continue;
            }
            let below: u64 = nodes[n].children.iter().map(|&c| nodes[c].total).sum();
            // its own line, where the input had one (so the order stays the input's)
            if nodes[n].total > below {
                let _ = writeln!(text, "{} {}", path.join(";"), nodes[n].total - below);
            }
            todo.extend(nodes[n].children.iter().rev().map(|&c| (c, depth + 1)));
        }
        text
    }
}

fn joined(frames: &Frames) -> String {
    let mut s = String::new();
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            s.push(';');
        }
        s.push_str(f);
    }
    s
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
    waker: HashMap<usize, Arc<str>>,
    made: HashMap<String, Arc<str>>,
}

/// `name` cleaned and suffixed, looked up once per distinct shared name (keyed by its
/// address) and interned by its text: the symbolizer may hand out one name for each
/// address of a function, and equal frames must be one pointer.
fn shared(
    map: &mut HashMap<usize, Arc<str>>,
    made: &mut HashMap<String, Arc<str>>,
    name: &Arc<str>,
    suffix: &str,
) -> Arc<str> {
    let key = Arc::as_ptr(name) as *const u8 as usize;
    map.entry(key)
        .or_insert_with(|| intern(made, format!("{}{suffix}", clean(name))))
        .clone()
}

fn intern(made: &mut HashMap<String, Arc<str>>, name: String) -> Arc<str> {
    made.entry(name)
        .or_insert_with_key(|n| Arc::from(n.as_str()))
        .clone()
}

impl Names {
    fn user(&mut self, name: &Arc<str>) -> Arc<str> {
        shared(&mut self.user, &mut self.made, name, "")
    }

    fn kernel(&mut self, name: &Arc<str>) -> Arc<str> {
        shared(&mut self.kernel, &mut self.made, name, "_[k]")
    }

    /// A waker's frame, user or kernel: apart from the same function in the blocked part.
    fn waker(&mut self, name: &Arc<str>) -> Arc<str> {
        shared(&mut self.waker, &mut self.made, name, "_[w]")
    }

    /// A synthetic or derived frame (`[futex]_[i]`, a thread name).
    fn made(&mut self, name: String) -> Arc<str> {
        intern(&mut self.made, name)
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
        StackRef::Proc(_) | StackRef::InInterrupt | StackRef::KernelThread | StackRef::NoWaker => {
            "[missed user stack]".into()
        }
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
        StackRef::NotCaptured
        | StackRef::NewThread
        | StackRef::InInterrupt
        | StackRef::KernelThread
        | StackRef::NoWaker => return,
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

/// The order of the joined lines (`a;b;c 12`), which is what inferno checks, computed
/// frame by frame: frames shared between the two stacks compare by address first, so
/// the long common roots of a large profile cost nothing. Where one frame's name is a
/// prefix of the other's, the byte after it decides: `;` before the next frame, or the
/// space before the value.
fn cmp_frames(a: &Frames, b: &Frames) -> Ordering {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if Arc::ptr_eq(x, y) || x == y {
            continue;
        }
        let (xb, yb) = (x.as_bytes(), y.as_bytes());
        let n = xb.len().min(yb.len());
        match xb[..n].cmp(&yb[..n]) {
            Ordering::Equal => {}
            o => return o,
        }
        let after = |f: &[u8], frames: &Frames| match f.get(n) {
            Some(&c) => c,
            None if i + 1 < frames.len() => b';',
            None => b' ',
        };
        return after(xb, a).cmp(&after(yb, b));
    }
    // one stack is the other's root part: its space comes where the other has a `;`
    a.len().cmp(&b.len())
}

/// The waker's part of an off-wake line: its kernel stack, then its user stack, both
/// leaf first (upside down, so that the two stacks meet where the wakeup happened), then
/// its name. Returns the kernel frames' names, to colour them.
fn waker_frames(
    row: &Row,
    collected: &Collected,
    symbols: &Symbols,
    names: &mut Names,
    out: &mut Frames,
) -> Vec<Arc<str>> {
    let w = &row.waker;
    let kernel: Vec<Arc<str>> = w
        .kstack
        .id()
        .and_then(|id| symbols.kernel.get(&id))
        .map(|f| f.iter().rev().map(|n| names.waker(n)).collect())
        .unwrap_or_default();
    out.extend(kernel.iter().cloned());
    if analyze::waker_task_relevant(w, symbols) {
        match w.ustack.id().and_then(|id| symbols.user.get(&id)) {
            Some(f) => out.extend(f.iter().rev().map(|n| names.waker(n))),
            None => out.push(names.made("[missed user stack]_[w]".to_string())),
        }
    }
    let label = analyze::waker_label(w, collected.pid, symbols);
    out.push(names.made(format!("[woken by {}]_[w]", clean(&label))));
    kernel
}

/// Folds every row of the profile into one view.
pub fn fold(collected: &Collected, symbols: &Symbols, opts: &FoldOptions) -> Folded {
    if opts.view == View::Goroutines {
        return fold_goroutines(collected, symbols, opts);
    }
    let mut names = Names::default();
    let process = names.made(clean(&collected.comm));
    let run_queue = names.made(RUN_QUEUE_FRAME.to_string());
    let separator = names.made(WAKER_SEPARATOR.to_string());
    let after_wakeup = names.made("[run queue after a wakeup]_[j]".to_string());
    let after_preemption = names.made("[run queue after preemption]_[j]".to_string());
    let still_waiting = names.made(STILL_WAITING_FRAME.to_string());
    let mut waker_kernel: HashMap<usize, Arc<str>> = HashMap::default();
    let mut ns: HashMap<Line, u64> = HashMap::default();
    for row in &collected.rows {
        let (weight, runq_weight) = match opts.view {
            View::Main => {
                let idle =
                    opts.hide_idle && analyze::class_of(row, symbols) == analyze::WaitClass::Idle;
                (if idle { 0 } else { row.blocked_ns }, row.runq_ns)
            }
            View::OffWake => (row.blocked_ns, 0),
            View::RunQueue => (0, row.runq_ns),
            View::Goroutines => (0, 0),
        };
        if weight == 0 && runq_weight == 0 {
            continue;
        }
        let mut frames = vec![process.clone()];
        if opts.per_thread {
            frames.push(names.made(thread_name(collected, row.tid)));
        }
        user_frames(row.ustack, symbols, &mut names, &mut frames);
        frames.push(names.made(format!("{}_[i]", syscall_frame(row))));
        kernel_frames(row.kstack, symbols, collected, &mut names, &mut frames);
        if runq_weight > 0 {
            let mut runq = frames.clone();
            runq.push(match opts.view {
                View::RunQueue if row.waker.ctx == WakerCtx::None => after_preemption.clone(),
                View::RunQueue => after_wakeup.clone(),
                _ => run_queue.clone(),
            });
            *ns.entry(Line(runq)).or_default() += runq_weight;
        }
        if weight > 0 {
            // a wait the session ended in, on top of where it waits
            if opts.view == View::Main && row.outcome == Outcome::Unfinished {
                frames.push(still_waiting.clone());
            }
            if opts.view == View::OffWake {
                frames.push(separator.clone());
                for k in waker_frames(row, collected, symbols, &mut names, &mut frames) {
                    waker_kernel.insert(Arc::as_ptr(&k) as *const u8 as usize, k);
                }
            }
            *ns.entry(Line(frames)).or_default() += weight;
        }
    }
    let mut waker_kernel_frames: Vec<String> =
        waker_kernel.values().map(|f| f.to_string()).collect();
    waker_kernel_frames.sort_unstable();
    Folded {
        lines: sorted_lines(ns),
        waker_kernel_frames,
    }
}

/// The goroutine view: process; the goroutine's stack, root first; its state on top
/// (`[chan receive]`, `[runnable: waiting for a P]`). The values are sampled time.
fn fold_goroutines(collected: &Collected, symbols: &Symbols, opts: &FoldOptions) -> Folded {
    let Some(view) = &collected.goroutines else {
        return Folded::default();
    };
    let mut names = Names::default();
    let process = names.made(clean(&collected.comm));
    let raced = names.made("[unknown: the goroutine ran while it was read]".to_string());
    let mut ns: HashMap<Line, u64> = HashMap::default();
    for row in &view.rows {
        let mut frames = vec![process.clone()];
        match row.stack {
            Some(id) => user_frames(StackRef::Id(id), symbols, &mut names, &mut frames),
            None if row.raced => frames.push(raced.clone()),
            None => {}
        }
        if opts.hide_idle && crate::runtime::go::classify::is_idle(&row.state, &frames[1..]) {
            continue;
        }
        frames.push(names.made(format!("{}_[j]", clean(&row.state.frame()))));
        *ns.entry(Line(frames)).or_default() += row.ns;
    }
    Folded {
        lines: sorted_lines(ns),
        waker_kernel_frames: Vec::new(),
    }
}

/// Lines sorted frame by frame, in microseconds (lines under half a microsecond left out).
fn sorted_lines(ns: HashMap<Line, u64>) -> Vec<(Frames, u64)> {
    let mut lines: Vec<(Frames, u64)> = ns
        .into_iter()
        .map(|(l, ns)| (l.0, (ns + 500) / 1000))
        .filter(|&(_, us)| us > 0)
        .collect();
    lines.sort_unstable_by(|a, b| cmp_frames(&a.0, &b.0));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames inferno prunes as too narrow are left out before it sees them, and
    /// the picture is the same byte for byte.
    #[test]
    fn drawable_text_draws_what_the_whole_profile_draws() {
        let name = |n: &str| -> Arc<str> { Arc::from(n) };
        let (root, a, b, leaf, wide) = (name("p"), name("a"), name("b"), name("leaf"), name("w"));
        let mut lines: Vec<(Frames, u64)> = (0..4096u32)
            .map(|path| {
                let mut f = vec![root.clone()];
                f.extend((0..12).map(|d| {
                    if path >> d & 1 == 1 {
                        b.clone()
                    } else {
                        a.clone()
                    }
                }));
                f.push(leaf.clone());
                (f, 1 + u64::from(path % 7))
            })
            .collect();
        lines.push((vec![root.clone(), wide.clone()], 200_000));
        // `p-x` sorts between `p`'s own line and `p;...`: its own line and its narrow
        // child must stay on either side of it
        let (px, narrow) = (name("p-x"), name("narrow"));
        lines.push((vec![root.clone()], 3));
        lines.push((vec![px.clone()], 50_000));
        lines.push((vec![px.clone(), narrow.clone()], 1));
        // ... and `q`, which has no line of its own, only a narrow child after `q-y`
        let (q, qy) = (name("q"), name("q-y"));
        lines.push((vec![qy.clone()], 50_000));
        lines.push((vec![q.clone(), narrow.clone()], 1));
        lines.sort_unstable_by(|x, y| cmp_frames(&x.0, &y.0));
        let folded = Folded {
            lines,
            waker_kernel_frames: Vec::new(),
        };
        let draw = |text: &str| {
            let mut opts = inferno::flamegraph::Options::default();
            opts.no_sort = true;
            opts.deterministic = true;
            let mut out = Vec::new();
            inferno::flamegraph::from_lines(&mut opts, text.lines(), &mut out).expect("drawn");
            out
        };
        let min_width = inferno::flamegraph::Options::default().min_width;
        let drawable = folded.drawable(min_width);
        let (whole, pruned) = (folded.text(), drawable.as_str());
        assert!(
            pruned.lines().count() * 3 < whole.lines().count(),
            "{} of {} lines",
            pruned.lines().count(),
            whole.lines().count()
        );
        let total = |t: &str| -> u64 {
            t.lines()
                .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(total(pruned), total(&whole), "no time is lost");
        assert!(draw(pruned) == draw(&whole), "the drawings differ");
    }

    #[test]
    fn lines_sort_as_their_joined_text() {
        let frames = |names: &[&str]| -> Frames { names.iter().map(|n| Arc::from(*n)).collect() };
        let mut stacks = [
            frames(&["p", "abc", "x"]),
            frames(&["p", "abc-d", "y"]),
            frames(&["p", "abc"]),
            frames(&["p", "ab", "z"]),
            frames(&["p", "abc", "x", "w"]),
        ];
        let text = |s: &Frames| {
            let joined: Vec<&str> = s.iter().map(|f| &**f).collect();
            format!("{} 1", joined.join(";"))
        };
        let mut want: Vec<String> = stacks.iter().map(text).collect();
        want.sort();
        stacks.sort_by(cmp_frames);
        assert_eq!(stacks.iter().map(text).collect::<Vec<_>>(), want);
    }
}
