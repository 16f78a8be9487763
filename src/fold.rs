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
use crate::model::{Collected, Outcome, Row, StackRef};
use crate::profile::{Profile, RunqCause, StackId};
use crate::symbolize::Symbols;
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

/// A line's frames, root first, as indexes into its profile's frame names.
pub type FrameIds = Box<[u32]>;

/// The folded file: one `stack value` line per distinct stack, values in microseconds,
/// sorted frame by frame. Kept as interned frame ids (4 bytes a frame, each distinct
/// name held once), not text: a large profile's text is hundreds of megabytes, written
/// straight to its file (`write_to`) and never held.
#[derive(Clone, Debug, Default)]
pub struct Folded {
    /// Every distinct frame name, indexed by id.
    names: Vec<Arc<str>>,
    /// (frames, microseconds), in the order of their joined text; none of 0 us.
    lines: Vec<(FrameIds, u64)>,
    /// The waker frames that are kernel functions (off-wake view), to colour them apart.
    waker_kernel_frames: Vec<String>,
}

/// Equal when the files are: the ids depend on the order the rows came in.
impl PartialEq for Folded {
    fn eq(&self, other: &Folded) -> bool {
        self.lines.len() == other.lines.len()
            && self.waker_kernel_frames == other.waker_kernel_frames
            && self.lines().eq(other.lines())
    }
}

impl Eq for Folded {}

impl Folded {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    /// Writes the folded file's text.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        // a line at a time: one call through `out` per line, not per frame
        let mut line: Vec<u8> = Vec::with_capacity(4096);
        for (frames, us) in &self.lines {
            line.clear();
            for (i, &f) in frames.iter().enumerate() {
                if i > 0 {
                    line.push(b';');
                }
                line.extend_from_slice(self.name(f).as_bytes());
            }
            let _ = writeln!(line, " {us}");
            out.write_all(&line)?;
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
        self.lines
            .iter()
            .map(|(frames, us)| (self.joined(frames), *us))
    }

    fn joined(&self, frames: &[u32]) -> String {
        self.joined_with_room(frames, 0)
    }

    /// The frames' names joined by `;`, in a string with `room` bytes to spare.
    fn joined_with_room(&self, frames: &[u32], room: usize) -> String {
        let names: usize = frames.iter().map(|&f| self.name(f).len() + 1).sum();
        let mut s = String::with_capacity(names + room);
        for (i, &f) in frames.iter().enumerate() {
            if i > 0 {
                s.push(';');
            }
            s.push_str(self.name(f));
        }
        s
    }

    /// Every distinct frame name of the profile.
    pub fn frame_names(&self) -> impl Iterator<Item = &str> {
        let mut used = vec![false; self.names.len()];
        for (frames, _) in &self.lines {
            for &f in frames.iter() {
                if let Some(u) = used.get_mut(f as usize) {
                    *u = true;
                }
            }
        }
        self.names
            .iter()
            .zip(used)
            .filter(|(_, u)| *u)
            .map(|(n, _)| &**n)
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
    /// its width and the lines keep the input's order. A 40,000-stack profile gives
    /// inferno a few thousand lines to draw instead of 80,000.
    ///
    /// inferno merges sorted input as a trie: a line's frame joins the previous line's
    /// frame at its depth only when every frame below is shared. So the trie's nodes come
    /// in the lines' order, and two passes over the lines find them without building it:
    /// the first adds up each node's time (8 bytes a node), the second writes every line
    /// whose frames are all wide enough, and, for a subtree that is not, its root's line
    /// (its first line cut after the root, or whole where the cut line would sort before
    /// the line above it) with the subtree's whole time.
    pub fn drawable(&self, min_width_pct: f64) -> Vec<String> {
        // the node at each depth of the current line, numbered in order of appearance
        fn walk(lines: &[(FrameIds, u64)], mut visit: impl FnMut(usize, usize, &[u32])) {
            let mut path: Vec<u32> = Vec::new();
            let mut next = 0u32;
            let mut prev: &[u32] = &[];
            for (i, (frames, _)) in lines.iter().enumerate() {
                let shared = prev
                    .iter()
                    .zip(frames.iter())
                    .take_while(|(a, b)| a == b)
                    .count();
                path.truncate(shared);
                for _ in shared..frames.len() {
                    path.push(next);
                    next += 1;
                }
                visit(i, shared, &path);
                prev = frames;
            }
        }
        // the nodes are numbered in order: the last line's deepest is the last; sized once
        let mut nodes = 0usize;
        walk(&self.lines, |_, _, path| {
            nodes = nodes.max(path.last().map_or(0, |&n| n as usize + 1));
        });
        let mut totals: Vec<u64> = vec![0; nodes];
        let mut all = 0u64;
        walk(&self.lines, |i, _, path| {
            let us = self.lines[i].1;
            all += us;
            for &n in path {
                if let Some(t) = totals.get_mut(n as usize) {
                    *t += us;
                }
            }
        });
        // inferno's test: a frame is drawn unless its time < min_width / (100 / total)
        let min_time = min_width_pct / (100.0 / all as f64);
        // a line at a time, each allocated at its size: a large profile's text is tens of
        // megabytes, which a growing string would hold twice while it moves
        let mut text: Vec<String> = Vec::new();
        walk(&self.lines, |i, shared, path| {
            let (frames, us) = &self.lines[i];
            let total = |n: u32| totals.get(n as usize).copied().unwrap_or(0);
            match path.iter().position(|&n| (total(n) as f64) < min_time) {
                None => text.push(self.line(frames, *us)),
                // the narrow subtree starts on this line: its root, with the subtree's
                // whole time, stands for it all. inferno prunes that root and so draws
                // nothing deeper, and those frames would cost it memory; but inferno
                // refuses lines out of order, and the shorter text may sort before the
                // last line (`q` before `q-y`, where `q;narrow` sorted after it)
                Some(d) if d >= shared => {
                    let subtree = total(path[d]);
                    let root = self.line(&frames[..=d], subtree);
                    let sorted = text.last().is_none_or(|before| *before <= root);
                    text.push(if sorted {
                        root
                    } else {
                        self.line(frames, subtree)
                    });
                }
                // inside a narrow subtree already written
                Some(_) => {}
            }
        });
        text
    }

    /// A folded line, without its line end, in a string of its size.
    fn line(&self, frames: &[u32], us: u64) -> String {
        // room for the space and a u64's 20 digits
        let mut s = self.joined_with_room(frames, 21);
        let _ = write!(s, " {us}");
        s
    }
}

/// A frame name safe for the folded format: no separators, no line breaks.
pub fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Frame names as they go into lines, each distinct text one id shared by every line.
#[derive(Default)]
struct Names {
    made: HashMap<Arc<str>, u32>,
    /// Each id's name.
    names: Vec<Arc<str>>,
}

/// The id of `name`, interned by its text.
fn intern(made: &mut HashMap<Arc<str>, u32>, names: &mut Vec<Arc<str>>, name: &str) -> u32 {
    if let Some(&id) = made.get(name) {
        return id;
    }
    let id = names.len() as u32;
    let name: Arc<str> = Arc::from(name);
    names.push(name.clone());
    made.insert(name, id);
    id
}

impl Names {
    /// A frame's name as it goes into lines (cleaned and suffixed already).
    fn made(&mut self, name: &str) -> u32 {
        intern(&mut self.made, &mut self.names, name)
    }
}

/// The frame that stands for a user stack the profile does not hold: why it is
/// missing (None: its kind was not captured, so nothing stands for it).
pub fn missing_user_stack(stack: StackRef) -> Option<String> {
    Some(match stack {
        StackRef::BeforeAttach => "[blocked before attach]".into(),
        StackRef::NewThread => "[new thread]".into(),
        StackRef::NotCaptured => return None,
        StackRef::TableFull => "[stack table full]".into(),
        StackRef::Missing(errno) => {
            format!("[missed user stack: {}]", syscalls::errno_name(errno))
        }
        StackRef::Id(_)
        | StackRef::Proc(_)
        | StackRef::InInterrupt
        | StackRef::KernelThread
        | StackRef::NoWaker => "[missed user stack]".into(),
    })
}

/// The frame that stands for a kernel stack the profile does not hold (without its
/// `_[k]`), as `missing_user_stack`; a stack read from /proc is not missing.
pub fn missing_kernel_stack(stack: StackRef) -> Option<String> {
    Some(match stack {
        StackRef::Id(_) => "[missed kernel stack]".to_string(),
        StackRef::BeforeAttach => "[blocked before attach]".into(),
        StackRef::NotCaptured
        | StackRef::NewThread
        | StackRef::InInterrupt
        | StackRef::KernelThread
        | StackRef::NoWaker
        | StackRef::Proc(_) => return None,
        StackRef::TableFull => "[stack table full]".into(),
        StackRef::Missing(errno) => {
            format!("[missed kernel stack: {}]", syscalls::errno_name(errno))
        }
    })
}

/// The synthetic frame naming the syscall a wait happened in.
pub fn syscall_frame(row: &Row) -> String {
    syscall_frame_named(row.syscall.map(syscalls::name).as_deref())
}

/// The synthetic frame of a syscall by its name (`None`: not in a syscall).
pub fn syscall_frame_named(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("[{name}]"),
        None => "[no syscall]".to_string(),
    }
}

/// The order of the joined lines (`a;b;c 12`), which is what inferno checks, computed
/// frame by frame: frames shared between the two stacks compare by id first, so the
/// long common roots of a large profile cost nothing. Where one frame's name is a prefix
/// of the other's, the byte after it decides: `;` before the next frame, or the space
/// before the value.
fn cmp_frames(a: &[u32], b: &[u32], names: &[Arc<str>]) -> Ordering {
    let name = |id: u32| names.get(id as usize).map_or(&b""[..], |n| n.as_bytes());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x == y {
            continue;
        }
        let (xb, yb) = (name(x), name(y));
        let n = xb.len().min(yb.len());
        match xb[..n].cmp(&yb[..n]) {
            Ordering::Equal => {}
            o => return o,
        }
        let after = |f: &[u8], frames: &[u32]| match f.get(n) {
            Some(&c) => c,
            None if i + 1 < frames.len() => b';',
            None => b' ',
        };
        return after(xb, a).cmp(&after(yb, b));
    }
    // one stack is the other's root part: its space comes where the other has a `;`
    a.len().cmp(&b.len())
}

/// Adds `ns` to the line `frames`, copying the frames only for a line not seen before.
fn add_line(lines: &mut HashMap<FrameIds, u64>, frames: &[u32], ns: u64) {
    match lines.get_mut(frames) {
        Some(v) => *v += ns,
        None => {
            lines.insert(frames.into(), ns);
        }
    }
}

/// Folds every row of the profile into one view.
pub fn fold(collected: &Collected, symbols: &Symbols, opts: &FoldOptions) -> Folded {
    fold_profile(&Profile::build(collected, symbols), opts)
}

/// The folded names of a profile's frames, by the role they play in a line (a wait's
/// user or kernel frame, or a waker's), each made once.
struct Roles {
    names: Names,
    by_role: [Vec<Option<u32>>; 3],
}

#[derive(Clone, Copy)]
enum Role {
    User = 0,
    Kernel = 1,
    Waker = 2,
}

impl Roles {
    fn new(profile: &Profile) -> Roles {
        let n = profile.frames.len();
        Roles {
            names: Names::default(),
            by_role: [vec![None; n], vec![None; n], vec![None; n]],
        }
    }

    fn name(&mut self, profile: &Profile, frame: u32, role: Role) -> u32 {
        let slot = &mut self.by_role[role as usize];
        if let Some(Some(id)) = slot.get(frame as usize) {
            return *id;
        }
        let name = profile.frames.get(frame as usize).map_or("", |f| &*f.name);
        let suffix = match role {
            Role::User => "",
            Role::Kernel => "_[k]",
            Role::Waker => "_[w]",
        };
        let id = self.names.made(&format!("{}{suffix}", clean(name)));
        if let Some(s) = self.by_role[role as usize].get_mut(frame as usize) {
            *s = Some(id);
        }
        id
    }

    /// A stack's frames in `role`, root first (or leaf first, `reversed`).
    fn extend(
        &mut self,
        profile: &Profile,
        stack: StackId,
        role: Role,
        reversed: bool,
        out: &mut Vec<u32>,
    ) {
        let frames: &[u32] = profile.stacks.get(stack as usize).map_or(&[], |s| &s[..]);
        if reversed {
            for &f in frames.iter().rev() {
                out.push(self.name(profile, f, role));
            }
        } else {
            for &f in frames {
                out.push(self.name(profile, f, role));
            }
        }
    }
}

/// Folds the typed profile into one view.
pub fn fold_profile(profile: &Profile, opts: &FoldOptions) -> Folded {
    if opts.view == View::Goroutines {
        return fold_goroutines(profile, opts);
    }
    let mut roles = Roles::new(profile);
    let names = &mut roles.names;
    let process = names.made(&clean(&profile.process));
    let run_queue = names.made(RUN_QUEUE_FRAME);
    let separator = names.made(WAKER_SEPARATOR);
    let after_wakeup = names.made("[run queue after a wakeup]_[j]");
    let after_preemption = names.made("[run queue after preemption]_[j]");
    let still_waiting = names.made(STILL_WAITING_FRAME);
    let mut waker_kernel: std::collections::BTreeSet<u32> = Default::default();
    let mut ns: HashMap<FrameIds, u64> = HashMap::default();
    // one line's frames, built here and copied only into a new line
    let mut frames: Vec<u32> = Vec::new();
    for w in &profile.waits {
        let (weight, runq_weight) = match opts.view {
            View::Main => {
                let idle = opts.hide_idle && w.class == analyze::WaitClass::Idle;
                (if idle { 0 } else { w.blocked_ns }, w.runq_ns)
            }
            View::OffWake => (w.blocked_ns, 0),
            View::RunQueue => (0, w.runq_ns),
            View::Goroutines => (0, 0),
        };
        if weight == 0 && runq_weight == 0 {
            continue;
        }
        frames.clear();
        frames.push(process);
        if opts.per_thread {
            frames.push(roles.names.made(&w.thread));
        }
        roles.extend(profile, w.ustack, Role::User, false, &mut frames);
        let syscall = match &w.syscall {
            Some(name) => format!("[{name}]_[i]"),
            None => "[no syscall]_[i]".to_string(),
        };
        frames.push(roles.names.made(&syscall));
        roles.extend(profile, w.kstack, Role::Kernel, false, &mut frames);
        let stack_len = frames.len();
        if runq_weight > 0 {
            frames.push(match opts.view {
                View::RunQueue if w.runq_cause == RunqCause::Preemption => after_preemption,
                View::RunQueue => after_wakeup,
                _ => run_queue,
            });
            add_line(&mut ns, &frames, runq_weight);
            frames.truncate(stack_len);
        }
        if weight > 0 {
            // a wait the session ended in, on top of where it waits
            if opts.view == View::Main && w.outcome == Outcome::Unfinished {
                frames.push(still_waiting);
            }
            if opts.view == View::OffWake {
                // the waker's kernel stack, then its user stack, both leaf first (so that
                // the two stacks meet where the wakeup happened), then who it was
                frames.push(separator);
                let start = frames.len();
                if let Some(k) = w.waker_kstack {
                    roles.extend(profile, k, Role::Waker, true, &mut frames);
                }
                waker_kernel.extend(frames[start..].iter().copied());
                if let Some(u) = w.waker_ustack {
                    roles.extend(profile, u, Role::Waker, true, &mut frames);
                }
                let label = format!("[woken by {}]_[w]", clean(&w.waker));
                frames.push(roles.names.made(&label));
            }
            add_line(&mut ns, &frames, weight);
        }
    }
    let names = roles.names;
    let mut waker_kernel_frames: Vec<String> = waker_kernel
        .into_iter()
        .map(|f| names.names[f as usize].to_string())
        .collect();
    waker_kernel_frames.sort_unstable();
    Folded {
        lines: sorted_lines(ns, &names.names),
        names: names.names,
        waker_kernel_frames,
    }
}

/// The goroutine view: process; the goroutine's stack, root first; its state on top
/// (`[chan receive]`, `[runnable: waiting for a P]`). The values are sampled time.
fn fold_goroutines(profile: &Profile, opts: &FoldOptions) -> Folded {
    let mut roles = Roles::new(profile);
    let process = roles.names.made(&clean(&profile.process));
    let mut ns: HashMap<FrameIds, u64> = HashMap::default();
    let mut frames: Vec<u32> = Vec::new();
    for g in &profile.goroutines {
        if opts.hide_idle && profile.goroutine_idle(g) {
            continue;
        }
        frames.clear();
        frames.push(process);
        roles.extend(profile, g.stack, Role::User, false, &mut frames);
        let state = format!("{}_[j]", clean(&g.state.frame()));
        frames.push(roles.names.made(&state));
        add_line(&mut ns, &frames, g.ns);
    }
    let names = roles.names;
    Folded {
        lines: sorted_lines(ns, &names.names),
        names: names.names,
        waker_kernel_frames: Vec::new(),
    }
}

/// Lines sorted frame by frame, in microseconds (lines under half a microsecond left out).
fn sorted_lines(ns: HashMap<FrameIds, u64>, names: &[Arc<str>]) -> Vec<(FrameIds, u64)> {
    let mut lines: Vec<(FrameIds, u64)> = ns
        .into_iter()
        .map(|(l, ns)| (l, (ns + 500) / 1000))
        .filter(|&(_, us)| us > 0)
        .collect();
    lines.sort_unstable_by(|a, b| cmp_frames(&a.0, &b.0, names));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames inferno prunes as too narrow are left out before it sees them, and
    /// the picture is the same byte for byte.
    #[test]
    fn drawable_text_draws_what_the_whole_profile_draws() {
        let mut names = Names::default();
        let mut name = |n: &str| names.made(n);
        let (root, a, b, leaf, wide) = (name("p"), name("a"), name("b"), name("leaf"), name("w"));
        let mut lines: Vec<(Vec<u32>, u64)> = (0..4096u32)
            .map(|path| {
                let mut f = vec![root];
                f.extend((0..12).map(|d| if path >> d & 1 == 1 { b } else { a }));
                f.push(leaf);
                (f, 1 + u64::from(path % 7))
            })
            .collect();
        lines.push((vec![root, wide], 200_000));
        // `p-x` sorts between `p`'s own line and `p;...`: its own line and its narrow
        // child must stay on either side of it
        let (px, narrow) = (name("p-x"), name("narrow"));
        lines.push((vec![root], 3));
        lines.push((vec![px], 50_000));
        lines.push((vec![px, narrow], 1));
        // ... and `q`, which has no line of its own, only a narrow child after `q-y`
        let (q, qy) = (name("q"), name("q-y"));
        lines.push((vec![qy], 50_000));
        lines.push((vec![q, narrow], 1));
        let mut lines: Vec<(FrameIds, u64)> =
            lines.into_iter().map(|(f, us)| (f.into(), us)).collect();
        lines.sort_unstable_by(|x, y| cmp_frames(&x.0, &y.0, &names.names));
        let folded = Folded {
            lines,
            names: names.names,
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
        let drawable = folded.drawable(min_width).join("\n");
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
        // every leaf is in a narrow subtree, which ends at its own root
        assert!(!pruned.contains(";leaf"), "{pruned}");
        assert!(draw(pruned) == draw(&whole), "the drawings differ");
    }

    #[test]
    fn lines_sort_as_their_joined_text() {
        let mut interned = Names::default();
        let mut frames =
            |list: &[&str]| -> Vec<u32> { list.iter().map(|n| interned.made(n)).collect() };
        let mut stacks = [
            frames(&["p", "abc", "x"]),
            frames(&["p", "abc-d", "y"]),
            frames(&["p", "abc"]),
            frames(&["p", "ab", "z"]),
            frames(&["p", "abc", "x", "w"]),
        ];
        let names = interned.names;
        let text = |s: &Vec<u32>| {
            let joined: Vec<&str> = s.iter().map(|&f| &*names[f as usize]).collect();
            format!("{} 1", joined.join(";"))
        };
        let mut want: Vec<String> = stacks.iter().map(text).collect();
        want.sort();
        stacks.sort_by(|a, b| cmp_frames(a, b, &names));
        assert_eq!(stacks.iter().map(text).collect::<Vec<_>>(), want);
    }
}
