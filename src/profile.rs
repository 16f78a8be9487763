//! The typed profile: the session's waits, and a Go program's goroutine samples, as
//! samples over interned, symbolized stacks, each with typed labels (thread, kind,
//! syscall, outcome, class, wait object, waker). The folded files (and so the SVGs) and
//! the pprof profiles are derived from it: pprof keeps the labels apart from the stacks,
//! the folded text puts some of them into frames.
//!
//! Stacks are root first, as the folded files are: a wait's user frames and its kernel
//! frames apart (the syscall sits between them), a waker's the same way, ending where it
//! woke the thread. A frame keeps where
//! it came from (`Site`: address, code, source line) when the symbolizer named it at an
//! address; a `Marker` frame stands for what is not known (a missing stack, an address
//! that could not be named).

use std::sync::Arc;

// Fx: keyed by name allocations and frame lists, hashed once per frame of every row
use rustc_hash::FxHashMap as HashMap;

use crate::analyze::{self, WaitClass};
use crate::fold;
use crate::model::{Collected, GState, Kind, Outcome, StackRef, WakerCtx};
use crate::symbolize::{Site, Symbols};
use crate::syscalls;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    User,
    Kernel,
    /// Stands for what is not known: `[missed user stack]`, `[unknown: stripped]`.
    Marker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub name: Arc<str>,
    pub kind: FrameKind,
    pub site: Option<Site>,
}

/// An index into `Profile::stacks`.
pub type StackId = u32;

/// What put a thread on the run queue before it ran again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunqCause {
    Wakeup,
    Preemption,
}

/// One row of the profile: waits of one thread with the same stacks, kind, syscall,
/// outcome, object and waker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The thread, when the rows are kept per thread (`--per-thread`); 0 when threads
    /// share rows.
    pub tid: u32,
    /// `comm-tid`, as the folded files name the thread (`?-TID` for one never seen).
    pub thread: String,
    pub kind: Kind,
    /// The syscall's name, when the thread was in one.
    pub syscall: Option<String>,
    pub outcome: Outcome,
    pub class: WaitClass,
    /// What it waited on, in words (`futex 0x5000 (queue_lock in server)`).
    pub object: Option<String>,
    /// The object's key (a futex's address, an epoll fd + 1, a listener's inode; 0 = none):
    /// with the kind, what the objects table groups waits by.
    pub object_id: u64,
    /// Whether a wakeup ended it (not a preemption, nor the end of the session).
    pub woken: bool,
    /// Who woke it, in words (`nobody: still waiting at the end` when nothing did).
    pub waker: String,
    pub runq_cause: RunqCause,
    /// Where it waited: its user frames, and its kernel frames, root first.
    pub ustack: StackId,
    /// Whether its user stack was walked (its frames named, or some unknown); if not,
    /// `ustack` is the one marker that says why (`[blocked before attach]`).
    pub ustack_walked: bool,
    pub kstack: StackId,
    /// The waker's user stack, where its own code woke the thread (a marker when it
    /// was not recorded), and its kernel stack down to the wakeup, when recorded.
    pub waker_ustack: Option<StackId>,
    pub waker_kstack: Option<StackId>,
    /// Episodes (tracked syscalls) or off-CPU intervals (other).
    pub count: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
}

/// Sampled time of goroutines in one state at one stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineSample {
    pub state: GState,
    pub stack: StackId,
    /// Its goroutine ran while the sweep read it: no stack (`stack` says so).
    pub raced: bool,
    pub ns: u64,
    pub samples: u64,
    pub goroutines: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// The process's name (printable, as collection made it) and pid.
    pub process: String,
    pub pid: u32,
    pub session_ns: u64,
    pub frames: Vec<Frame>,
    /// Frame ids, root first.
    pub stacks: Vec<Box<[u32]>>,
    pub waits: Vec<Wait>,
    pub goroutines: Vec<GoroutineSample>,
    /// Each goroutine's states over the session (`--timeline`), in the order they ended.
    pub goroutine_spells: Vec<GoroutineSpell>,
}

/// A goroutine in one state at one stack over a stretch of the session (sampled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineSpell {
    pub goid: u64,
    pub from_ns: u64,
    pub to_ns: u64,
    pub state: GState,
    pub stack: StackId,
}

/// Interns frames (by the symbolizer's name allocation, or by text for markers) and
/// stacks (by their frames).
#[derive(Default)]
struct Interner {
    by_name: HashMap<(usize, FrameKind), u32>,
    markers: HashMap<(String, FrameKind), u32>,
    stacks: HashMap<Box<[u32]>, StackId>,
    frames: Vec<Frame>,
    stack_list: Vec<Box<[u32]>>,
}

impl Interner {
    fn named(&mut self, name: &Arc<str>, kind: FrameKind, symbols: &Symbols) -> u32 {
        let key = (Arc::as_ptr(name) as *const u8 as usize, kind);
        if let Some(&id) = self.by_name.get(&key) {
            return id;
        }
        let id = match symbols.sites.get(name) {
            Some(site) => self.push(Frame {
                name: name.clone(),
                kind,
                site: Some(site.clone()),
            }),
            // a name with no address: one the symbolizer made for what it could not
            // name (`[unknown: stripped]`, made anew for each stack), or a test's
            None if name.starts_with('[') => self.marker(name, FrameKind::Marker),
            None => self.marker(name, kind),
        };
        self.by_name.insert(key, id);
        id
    }

    fn marker(&mut self, name: &str, kind: FrameKind) -> u32 {
        if let Some(&id) = self.markers.get(&(name.to_string(), kind)) {
            return id;
        }
        let id = self.push(Frame {
            name: Arc::from(crate::text::printable(name)),
            kind,
            site: None,
        });
        self.markers.insert((name.to_string(), kind), id);
        id
    }

    fn push(&mut self, frame: Frame) -> u32 {
        self.frames.push(frame);
        (self.frames.len() - 1) as u32
    }

    fn stack(&mut self, frames: &[u32]) -> StackId {
        if let Some(&id) = self.stacks.get(frames) {
            return id;
        }
        let id = self.stack_list.len() as StackId;
        self.stack_list.push(frames.into());
        self.stacks.insert(frames.into(), id);
        id
    }

    fn user(&mut self, stack: StackRef, symbols: &Symbols, out: &mut Vec<u32>) {
        if let Some(frames) = stack.id().and_then(|id| symbols.user.get(&id)) {
            out.extend(
                frames
                    .iter()
                    .map(|f| self.named(f, FrameKind::User, symbols)),
            );
        } else if let Some(m) = fold::missing_user_stack(stack) {
            out.push(self.marker(&m, FrameKind::Marker));
        }
    }

    fn kernel(&mut self, stack: StackRef, symbols: &Symbols, c: &Collected, out: &mut Vec<u32>) {
        if let Some(frames) = stack.id().and_then(|id| symbols.kernel.get(&id)) {
            out.extend(
                frames
                    .iter()
                    .map(|f| self.named(f, FrameKind::Kernel, symbols)),
            );
        } else if let StackRef::Proc(i) = stack {
            // names read from /proc, with no address
            for f in c.proc_kstacks.get(i as usize).into_iter().flatten() {
                out.push(self.marker(f, FrameKind::Kernel));
            }
        } else if let Some(m) = fold::missing_kernel_stack(stack) {
            out.push(self.marker(&m, FrameKind::Marker));
        }
    }
}

impl Profile {
    /// The profile of a session: every row, and every goroutine sample with a stack.
    pub fn build(collected: &Collected, symbols: &Symbols) -> Profile {
        let mut interner = Interner::default();
        let mut frames: Vec<u32> = Vec::new();
        let threads: HashMap<u32, &str> = collected
            .threads
            .iter()
            .map(|t| (t.tid, t.comm.as_str()))
            .collect();
        let mut waits = Vec::with_capacity(collected.rows.len());
        let missed_user = interner.marker("[missed user stack]", FrameKind::Marker);
        for row in &collected.rows {
            frames.clear();
            interner.user(row.ustack, symbols, &mut frames);
            let ustack = interner.stack(&frames);
            frames.clear();
            interner.kernel(row.kstack, symbols, collected, &mut frames);
            let kstack = interner.stack(&frames);
            let w = &row.waker;
            // the waker's own code, where it woke the thread itself
            let waker_ustack = analyze::waker_task_relevant(w, symbols).then(|| {
                frames.clear();
                match w.ustack.id().and_then(|id| symbols.user.get(&id)) {
                    Some(_) => interner.user(w.ustack, symbols, &mut frames),
                    None => frames.push(missed_user),
                }
                interner.stack(&frames)
            });
            let waker_kstack = w
                .kstack
                .id()
                .filter(|id| symbols.kernel.contains_key(id))
                .map(|_| {
                    frames.clear();
                    interner.kernel(w.kstack, symbols, collected, &mut frames);
                    interner.stack(&frames)
                });
            let comm = threads
                .get(&row.tid)
                .copied()
                .filter(|c| !c.is_empty())
                .unwrap_or("?");
            waits.push(Wait {
                tid: row.tid,
                thread: format!("{}-{}", fold::clean(comm), row.tid),
                kind: row.kind,
                syscall: row.syscall.map(syscalls::name),
                outcome: row.outcome,
                class: analyze::class_of(row, symbols),
                object: (row.object != 0)
                    .then(|| analyze::object_label(row.kind, row.object, collected, symbols)),
                object_id: row.object,
                woken: w.ctx != WakerCtx::None,
                waker: analyze::waker_label(w, collected.pid, symbols),
                runq_cause: if w.ctx == WakerCtx::None {
                    RunqCause::Preemption
                } else {
                    RunqCause::Wakeup
                },
                ustack,
                ustack_walked: row
                    .ustack
                    .id()
                    .is_some_and(|id| symbols.user.contains_key(&id)),
                kstack,
                waker_ustack,
                waker_kstack,
                count: row.count,
                blocked_ns: row.blocked_ns,
                runq_ns: row.runq_ns,
            });
        }
        let mut goroutines = Vec::new();
        let mut goroutine_spells = Vec::new();
        if let Some(view) = &collected.goroutines {
            let mut stack_of = |stack: Option<u64>, raced: bool, frames: &mut Vec<u32>| {
                frames.clear();
                match stack {
                    Some(id) => interner.user(StackRef::Id(id), symbols, frames),
                    None if raced => frames.push(interner.marker(
                        "[unknown: the goroutine ran while it was read]",
                        FrameKind::Marker,
                    )),
                    None => {}
                }
                interner.stack(frames)
            };
            for row in &view.rows {
                goroutines.push(GoroutineSample {
                    state: row.state.clone(),
                    stack: stack_of(row.stack, row.raced, &mut frames),
                    raced: row.raced,
                    ns: row.ns,
                    samples: row.samples,
                    goroutines: row.goroutines,
                });
            }
            for spell in view.spells.iter().flat_map(|s| &s.spells) {
                goroutine_spells.push(GoroutineSpell {
                    goid: spell.goid,
                    from_ns: spell.from_ns,
                    to_ns: spell.to_ns,
                    state: spell.state.clone(),
                    stack: stack_of(spell.stack, spell.raced, &mut frames),
                });
            }
        }
        Profile {
            process: collected.comm.clone(),
            pid: collected.pid,
            session_ns: collected.end_ns.saturating_sub(collected.start_ns),
            frames: interner.frames,
            stacks: interner.stack_list,
            waits,
            goroutines,
            goroutine_spells,
        }
    }

    /// A stack's frames, root first.
    pub fn stack(&self, id: StackId) -> impl DoubleEndedIterator<Item = &Frame> {
        self.stacks
            .get(id as usize)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|&f| self.frames.get(f as usize))
    }

    /// A stack's frame names, root first.
    pub fn names(&self, id: StackId) -> Vec<Arc<str>> {
        self.stack(id).map(|f| f.name.clone()).collect()
    }

    /// A goroutine sample's frame names, root first: none when its goroutine ran while
    /// it was read.
    pub fn goroutine_frames(&self, g: &GoroutineSample) -> Vec<Arc<str>> {
        if g.raced {
            Vec::new()
        } else {
            self.names(g.stack)
        }
    }

    /// Whether a goroutine sample is idle waiting (`--hide-idle` leaves it out, the
    /// summary counts it apart).
    pub fn goroutine_idle(&self, g: &GoroutineSample) -> bool {
        crate::runtime::go::classify::is_idle(&g.state, &self.goroutine_frames(g))
    }
}
