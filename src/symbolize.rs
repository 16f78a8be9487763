//! Symbolization: instruction pointers from the stack table into function names, with
//! blazesym. User stacks resolve against the target's memory maps, cached at the start
//! and while it runs so a target that exits mid-session still symbolizes; kernel stacks
//! against kallsyms. Frames that cannot be named are kept as `[unknown]` and counted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use blazesym::symbolize::cache;
use blazesym::symbolize::source::{Kernel, Process, Source};
use blazesym::symbolize::{Input, Symbolized};
use blazesym::{MaybeDefault, Pid};

use crate::model::{Collected, StackRef};

/// Depth at which the kernel cut a stack (WP_MAX_STACK_DEPTH).
const MAX_DEPTH: usize = 127;

pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
    pid: u32,
}

/// Frame names, root first. A name is shared by every stack it appears in: a large
/// profile repeats the same few hundred names across tens of thousands of stacks.
pub type Frames = Vec<Arc<str>>;

/// Stack id -> frame names, root first.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    pub user: HashMap<u64, Frames>,
    pub kernel: HashMap<u64, Frames>,
    /// Distinct addresses that could not be named.
    pub unknown_user_frames: usize,
    pub unknown_kernel_frames: usize,
    /// Stacks deeper than the kernel records: their root end is missing.
    pub truncated_stacks: usize,
}

impl Symbolizer {
    pub fn new(pid: u32) -> Symbolizer {
        let inner = blazesym::symbolize::Symbolizer::builder()
            .enable_demangling(true)
            .enable_inlined_fns(true)
            .enable_code_info(true)
            .build();
        Symbolizer { inner, pid }
    }

    /// Remembers the target's memory maps, so its stacks resolve after it exits.
    pub fn cache_target(&self) -> Result<()> {
        self.inner
            .cache(&cache::Cache::Process(cache::Process::new(Pid::from(
                self.pid,
            ))))
            .with_context(|| format!("reading the memory maps of pid {} failed", self.pid))
    }

    fn process_source(&self) -> Source<'static> {
        let mut process = Process::new(Pid::from(self.pid));
        // map_files would need the live process; the cached maps name files by path
        process.map_files = false;
        Source::Process(process)
    }

    fn kernel_source() -> Source<'static> {
        Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            ..Kernel::default()
        })
    }

    /// Names every stack the profile refers to.
    pub fn resolve(&self, collected: &Collected) -> Result<Symbols> {
        let mut user_ids = HashSet::new();
        let mut kernel_ids = HashSet::new();
        for row in &collected.rows {
            if let StackRef::Id(id) = row.ustack {
                user_ids.insert(id);
            }
            if let StackRef::Id(id) = row.kstack {
                kernel_ids.insert(id);
            }
        }
        let mut symbols = Symbols::default();
        let (user, unknown) = self.resolve_set(
            &self.process_source(),
            &user_ids,
            collected,
            &mut symbols.truncated_stacks,
        )?;
        symbols.user = user;
        symbols.unknown_user_frames = unknown;
        let (kernel, unknown) = self.resolve_set(
            &Self::kernel_source(),
            &kernel_ids,
            collected,
            &mut symbols.truncated_stacks,
        )?;
        symbols.kernel = kernel
            .into_iter()
            .map(|(id, f)| (id, trim_capture_frames(f)))
            .collect();
        symbols.unknown_kernel_frames = unknown;
        Ok(symbols)
    }

    fn resolve_set(
        &self,
        source: &Source<'_>,
        ids: &HashSet<u64>,
        collected: &Collected,
        truncated: &mut usize,
    ) -> Result<(HashMap<u64, Frames>, usize)> {
        // The first address of a stack is where the thread stopped; the others are return
        // addresses, which point after the call: look up addr - 1 to land inside it.
        let lookup_addr = |i: usize, ip: u64| if i == 0 { ip } else { ip.saturating_sub(1) };
        let mut addrs: Vec<u64> = ids
            .iter()
            .filter_map(|id| collected.stacks.get(id))
            .flat_map(|ips| ips.iter().enumerate().map(|(i, &ip)| lookup_addr(i, ip)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        addrs.sort_unstable();
        let names: HashMap<u64, Frames> = if addrs.is_empty() {
            HashMap::new()
        } else {
            let results = self
                .inner
                .symbolize(source, Input::AbsAddr(&addrs))
                .context("symbolizing stacks failed")?;
            addrs
                .iter()
                .copied()
                .zip(results.into_iter().map(frame_names))
                .collect()
        };
        let unknown = names.values().filter(|n| n.is_empty()).count();
        let (unknown_frame, truncated_frame): (Arc<str>, Arc<str>) =
            (Arc::from("[unknown]"), Arc::from("[truncated]"));
        let mut out = HashMap::new();
        for &id in ids {
            let Some(ips) = collected.stacks.get(&id) else {
                continue;
            };
            let mut frames = Vec::with_capacity(ips.len() + 1);
            if ips.len() >= MAX_DEPTH {
                *truncated += 1;
                frames.push(truncated_frame.clone());
            }
            for (i, &ip) in ips.iter().enumerate().rev() {
                match names.get(&lookup_addr(i, ip)) {
                    Some(n) if !n.is_empty() => frames.extend(n.iter().cloned()),
                    _ => frames.push(unknown_frame.clone()),
                }
            }
            out.insert(id, frames);
        }
        Ok((out, unknown))
    }
}

/// Kernel stacks are captured inside the scheduler's tracepoint, so their leaf end is the
/// tracing machinery (bpf_trace_run*, the BPF program itself). The wait ends at
/// `__schedule`: everything leafward of it is cut.
pub fn trim_capture_frames(mut frames: Frames) -> Frames {
    if let Some(i) = frames.iter().rposition(|f| &**f == "__schedule") {
        frames.truncate(i + 1);
    }
    frames
}

/// The function and the functions inlined into it at this address, outermost first.
fn frame_names(sym: Symbolized<'_>) -> Frames {
    match sym {
        Symbolized::Sym(sym) => std::iter::once(Arc::from(&*sym.name))
            .chain(sym.inlined.iter().map(|f| Arc::from(&*f.name)))
            .collect(),
        Symbolized::Unknown(_) => Vec::new(),
    }
}
