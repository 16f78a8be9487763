//! Folding: the symbolized profile into folded-stack lines, the format flame graph tools
//! read. Pure and deterministic: the same profile always gives the same text.
//!
//! A line is: process; thread (with --per-thread); user frames, root first; the syscall
//! as a synthetic frame (`[futex]`); kernel frames; then the value in microseconds. The
//! run-queue part of a wait (woken, but no CPU yet) sits on top as `[run queue]`.
//! Kernel frames carry the `_[k]` annotation and synthetic frames `_[i]` / `_[j]`, as
//! perf-derived folded files do, so flame graph tools colour them apart.

use std::collections::BTreeMap;

use crate::model::{Collected, Row, StackRef};
use crate::symbolize::Symbols;
use crate::syscalls;

#[derive(Clone, Debug, Default)]
pub struct FoldOptions {
    pub per_thread: bool,
}

pub const RUN_QUEUE_FRAME: &str = "[run queue]_[j]";

/// Folded stacks with their values in microseconds, sorted by stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    pub lines: Vec<(String, u64)>,
}

impl Folded {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn total_us(&self) -> u64 {
        self.lines.iter().map(|(_, v)| v).sum()
    }

    pub fn to_text(&self) -> String {
        self.lines
            .iter()
            .map(|(s, v)| format!("{s} {v}\n"))
            .collect()
    }
}

/// A frame name safe for the folded format: no separators, no line breaks.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

fn user_frames(stack: StackRef, symbols: &Symbols) -> Vec<String> {
    match stack {
        StackRef::Id(id) => match symbols.user.get(&id) {
            Some(frames) => frames.iter().map(|f| clean(f)).collect(),
            None => vec!["[missed user stack]".into()],
        },
        StackRef::BeforeAttach => vec!["[blocked before attach]".into()],
        StackRef::NewThread => vec!["[new thread]".into()],
        StackRef::NotCaptured => Vec::new(),
        StackRef::TableFull => vec!["[stack table full]".into()],
        StackRef::Missing(errno) => vec![format!(
            "[missed user stack: {}]",
            syscalls::errno_name(errno)
        )],
        StackRef::Proc(_) => vec!["[missed user stack]".into()],
    }
}

fn kernel_frames(stack: StackRef, symbols: &Symbols, collected: &Collected) -> Vec<String> {
    let names: Vec<String> = match stack {
        StackRef::Id(id) => match symbols.kernel.get(&id) {
            Some(frames) => frames.iter().map(|f| clean(f)).collect(),
            None => vec!["[missed kernel stack]".into()],
        },
        StackRef::Proc(i) => collected
            .proc_kstacks
            .get(i as usize)
            .cloned()
            .unwrap_or_default(),
        StackRef::BeforeAttach => vec!["[blocked before attach]".into()],
        StackRef::NotCaptured | StackRef::NewThread => Vec::new(),
        StackRef::TableFull => vec!["[stack table full]".into()],
        StackRef::Missing(errno) => vec![format!(
            "[missed kernel stack: {}]",
            syscalls::errno_name(errno)
        )],
    };
    names.into_iter().map(|n| format!("{n}_[k]")).collect()
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

/// Folds every row of the profile.
pub fn fold(collected: &Collected, symbols: &Symbols, opts: &FoldOptions) -> Folded {
    let mut ns: BTreeMap<String, u64> = BTreeMap::new();
    for row in &collected.rows {
        let mut frames = vec![clean(&collected.comm)];
        if opts.per_thread {
            frames.push(thread_name(collected, row.tid));
        }
        frames.extend(user_frames(row.ustack, symbols));
        frames.push(format!("{}_[i]", syscall_frame(row)));
        frames.extend(kernel_frames(row.kstack, symbols, collected));
        let stack = frames.join(";");
        if row.runq_ns > 0 {
            *ns.entry(format!("{stack};{RUN_QUEUE_FRAME}")).or_default() += row.runq_ns;
        }
        if row.blocked_ns > 0 {
            *ns.entry(stack).or_default() += row.blocked_ns;
        }
    }
    let lines = ns
        .into_iter()
        .map(|(stack, ns)| (stack, (ns + 500) / 1000))
        .filter(|(_, us)| *us > 0)
        .collect();
    Folded { lines }
}
