//! Symbolization: instruction pointers from the stack table into function names, with
//! blazesym. User stacks resolve against the target's memory maps, cached at the start
//! and while it runs so a target that exits mid-session still symbolizes; kernel stacks
//! against kallsyms. Frames that cannot be named are kept as `[unknown: REASON]` and
//! counted by reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use blazesym::symbolize::cache;
use blazesym::symbolize::source::{Elf, Kernel, Process, Source};
use blazesym::symbolize::{Input, Reason, Symbolized};
use blazesym::{MaybeDefault, Pid};

use crate::gosym::GoFuncs;
use crate::model::{Collected, Kind, Mapping};

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
    /// User frames that could not be named, by why: distinct addresses blazesym could
    /// not name, and stacks the unwinder stopped short (`[unknown: REASON]` frames).
    pub unknown_why: BTreeMap<&'static str, usize>,
    /// Futex address -> where it lives: the variable's name, or the kind of memory.
    pub objects: HashMap<u64, String>,
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

    /// Names every stack the profile refers to: the target's and its wakers' (which
    /// may belong to other processes, named while those still run).
    pub fn resolve(&self, collected: &Collected) -> Result<Symbols> {
        let mut user_ids: HashMap<u32, HashSet<u64>> = HashMap::new();
        let mut kernel_ids = HashSet::new();
        for row in &collected.rows {
            user_ids
                .entry(collected.pid)
                .or_default()
                .extend(row.ustack.id());
            kernel_ids.extend(row.kstack.id());
            if let Some(id) = row.waker.ustack.id() {
                user_ids.entry(row.waker.tgid).or_default().insert(id);
            }
            kernel_ids.extend(row.waker.kstack.id());
        }
        let mut symbols = Symbols::default();
        for (pid, ids) in &user_ids {
            let (user, unknown) = if *pid == collected.pid {
                self.resolve_set(
                    &self.process_source(),
                    ids,
                    collected,
                    Some(&collected.maps),
                    &mut symbols.truncated_stacks,
                    &mut symbols.unknown_why,
                )?
            } else {
                // another process's waker: best effort, it may have exited
                let source = Source::Process(Process::new(Pid::from(*pid)));
                let (mut truncated, mut why) = (0, BTreeMap::new());
                self.resolve_set(&source, ids, collected, Some(&[]), &mut truncated, &mut why)
                    .unwrap_or_default()
            };
            symbols.user.extend(user);
            symbols.unknown_user_frames += unknown;
        }
        symbols.objects = self.name_futexes(collected);
        let (kernel, unknown) = self.resolve_set(
            &Self::kernel_source(),
            &kernel_ids,
            collected,
            None,
            &mut symbols.truncated_stacks,
            &mut BTreeMap::new(),
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
        // user stacks: the process's maps, to name stripped Go code by its .gopclntab
        user_maps: Option<&[Mapping]>,
        truncated: &mut usize,
        unknown_why: &mut BTreeMap<&'static str, usize>,
    ) -> Result<(HashMap<u64, Frames>, usize)> {
        // The first address of a stack is where the thread stopped; the others are return
        // addresses, which point after the call: look up addr - 1 to land inside it.
        let lookup_addr = |i: usize, ip: u64| if i == 0 { ip } else { ip.saturating_sub(1) };
        let mut addrs: Vec<u64> = ids
            .iter()
            .filter_map(|id| collected.stacks.get(id))
            .flat_map(|ips| ips.iter().enumerate().map(|(i, &ip)| lookup_addr(i, ip)))
            .filter(|&ip| unwind_stop(ip).is_none())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        addrs.sort_unstable();
        let mut names: HashMap<u64, Result<Frames, &'static str>> = if addrs.is_empty() {
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
        if let Some(maps) = user_maps.filter(|m| !m.is_empty()) {
            self.name_from_files(&mut names, maps);
        }
        let unknown = names.values().filter(|n| n.is_err()).count();
        for why in names.values().filter_map(|n| n.as_ref().err()) {
            *unknown_why.entry(why).or_default() += 1;
        }
        let label = |why: &str| -> Arc<str> { Arc::from(format!("[unknown: {why}]")) };
        let truncated_frame = label("truncated");
        let mut out = HashMap::new();
        for &id in ids {
            let Some(ips) = collected.stacks.get(&id) else {
                continue;
            };
            let mut frames = Vec::with_capacity(ips.len() + 1);
            // a frame-pointer walk cut at the limit (the unwinder says so with a marker)
            if ips.len() >= MAX_DEPTH && ips.last().is_some_and(|&ip| unwind_stop(ip).is_none()) {
                *truncated += 1;
                frames.push(truncated_frame.clone());
            }
            for (i, &ip) in ips.iter().enumerate().rev() {
                if let Some(why) = unwind_stop(ip) {
                    *truncated += usize::from(why == "truncated");
                    *unknown_why.entry(why).or_default() += 1;
                    frames.push(label(why));
                    continue;
                }
                match names.get(&lookup_addr(i, ip)) {
                    Some(Ok(n)) => frames.extend(n.iter().cloned()),
                    Some(Err(why)) => frames.push(label(why)),
                    None => frames.push(label("not symbolized")),
                }
            }
            if user_maps.is_some() {
                frames = cut_at_g0(frames);
            }
            out.insert(id, frames);
        }
        Ok((out, unknown))
    }
}

/// Where separate debug information for a file with this build id lives.
fn build_id_debug_file(build_id: &[u8]) -> Option<String> {
    let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
    (hex.len() > 2)
        .then(|| {
            ["/usr/lib/debug", "/lib/debug"]
                .iter()
                .map(|dir| format!("{dir}/.build-id/{}/{}.debug", &hex[..2], &hex[2..]))
                .find(|p| std::path::Path::new(p).exists())
        })
        .flatten()
}

/// What a file offers for the addresses blazesym could not name, read once per file.
struct FileNames {
    data: Vec<u8>,
    /// Its separate debug file, found by build id.
    debug: Option<String>,
    /// Its Go function table (.gopclntab).
    go: Option<GoFuncs>,
}

impl FileNames {
    fn read(path: &str) -> Option<FileNames> {
        use object::Object;
        let data = std::fs::read(path).ok()?;
        let debug = object::File::parse(&*data)
            .ok()
            .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec))
            .and_then(|id| build_id_debug_file(&id));
        let go = GoFuncs::load(&data);
        Some(FileNames { data, debug, go })
    }
}

impl Symbolizer {
    /// Names what blazesym could not, from the files themselves: a stripped file whose
    /// debug information was installed apart, found by its build id alone (blazesym
    /// follows build ids only from a .gnu_debuglink, which not every stripped file has);
    /// then a Go binary's .gopclntab (stripped Go, which blazesym cannot read).
    fn name_from_files(
        &self,
        names: &mut HashMap<u64, Result<Frames, &'static str>>,
        maps: &[Mapping],
    ) {
        let mut files: HashMap<&str, Option<FileNames>> = HashMap::new();
        let mut biases: HashMap<u64, Option<u64>> = HashMap::new();
        for (&addr, name) in names.iter_mut().filter(|(_, n)| n.is_err()) {
            let Some(m) = maps
                .iter()
                .find(|m| (m.start..m.end).contains(&addr) && m.is_file())
            else {
                continue;
            };
            let Some(file) = files
                .entry(&m.path)
                .or_insert_with(|| FileNames::read(&m.path))
            else {
                continue;
            };
            let Some(vaddr) = biases
                .entry(m.start)
                .or_insert_with(|| crate::unwind::bias(&file.data, m.start, m.offset))
                .map(|bias| addr.wrapping_sub(bias))
            else {
                continue;
            };
            if let (Some(debug), Err("stripped")) = (&file.debug, &name) {
                let found = self
                    .inner
                    .symbolize_single(
                        &Source::Elf(Elf::new(debug.as_str())),
                        Input::VirtOffset(vaddr),
                    )
                    .ok()
                    .map(frame_names);
                if let Some(Ok(frames)) = found {
                    *name = Ok(frames);
                    continue;
                }
            }
            if let Some(f) = file.go.as_ref().and_then(|go| go.name(vaddr)) {
                *name = Ok(vec![Arc::from(f)]);
            }
        }
    }
}

/// Where a Go thread runs on its scheduler stack (g0) and the frame-pointer chain goes
/// on into the goroutine that last ran there: `runtime.mcall` (parking a goroutine) and
/// `runtime.systemstack` switch to g0, so what is rootward of the first of them is not
/// what the thread is doing. Such a stack is cut there, under a `[go scheduler (g0)]`
/// root, so scheduler idling is never attributed to a goroutine's code.
pub const G0_ROOT: &str = "[go scheduler (g0)]";

fn cut_at_g0(mut frames: Frames) -> Frames {
    // a stack walked before the unwind tables loaded keeps saying so, at its root
    let pending = frames
        .first()
        .is_some_and(|f| f.starts_with("[unknown: frame pointers only"))
        .then(|| frames.remove(0));
    // the outermost frames of Go's threads and goroutines: anything rootward of them is
    // the unwinder running past the end (Go's tables do not mark it)
    if let Some(i) = frames
        .iter()
        .rposition(|f| matches!(&**f, "runtime.mstart" | "runtime.goexit" | "runtime.rt0_go"))
    {
        frames.drain(..i);
    }
    let starts_on_g0 = frames
        .first()
        .is_some_and(|f| matches!(&**f, "runtime.mstart" | "runtime.rt0_go"));
    let switch = frames
        .iter()
        .position(|f| matches!(&**f, "runtime.mcall" | "runtime.systemstack"));
    if let (Some(i), false) = (switch, starts_on_g0) {
        frames.splice(..i, std::iter::once(Arc::from(G0_ROOT)));
    }
    pending.into_iter().chain(frames).collect()
}

/// Functions of the tracing machinery that runs the BPF program.
const TRACING_PREFIXES: [&str; 7] = [
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "trace_call_bpf",
    "perf_trace_",
    "bpf_prog_",
    "trace_event_raw_event_",
];

/// Kernel stacks are captured inside a tracepoint, so their leaf end is the tracing
/// machinery (bpf_trace_run*, the BPF program itself): it is cut. A wait ends at
/// `__schedule`, so a switch-out's stack is cut there too.
pub fn trim_capture_frames(mut frames: Frames) -> Frames {
    if let Some(i) = frames
        .iter()
        .position(|f| TRACING_PREFIXES.iter().any(|p| f.starts_with(p)))
    {
        frames.truncate(i);
    }
    if let Some(i) = frames.iter().rposition(|f| &**f == "__schedule") {
        frames.truncate(i + 1);
    }
    frames
}

impl Symbolizer {
    /// Where each futex the target waited on lives: the name of the variable (a static
    /// in the binary or a library, found through the file's symbol table), or else the
    /// kind of memory it is in.
    fn name_futexes(&self, collected: &Collected) -> HashMap<u64, String> {
        let addrs: HashSet<u64> = collected
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Futex && r.object != 0)
            .map(|r| r.object)
            .collect();
        addrs
            .into_iter()
            .map(|a| (a, self.name_data(a, &collected.maps)))
            .collect()
    }

    fn name_data(&self, addr: u64, maps: &[Mapping]) -> String {
        let Some(i) = maps.iter().position(|m| m.start <= addr && addr < m.end) else {
            return "unmapped".to_string();
        };
        let m = &maps[i];
        // .bss past the file's end is anonymous memory right after the file's mappings
        let file = if m.path.starts_with('/') {
            Some(&m.path)
        } else if m.path.is_empty() && i > 0 && maps[i - 1].end == m.start {
            Some(&maps[i - 1].path).filter(|p| p.starts_with('/'))
        } else {
            None
        };
        let Some(file) = file else {
            return match m.path.as_str() {
                "[heap]" => "heap".to_string(),
                "[stack]" => "main thread's stack".to_string(),
                "" => "anonymous memory: heap arena, thread stack or mmap".to_string(),
                other => other.to_string(),
            };
        };
        // the file's load bias: where its first mapping (file offset 0) starts
        let Some(base) = maps
            .iter()
            .find(|x| &x.path == file && x.offset == 0)
            .map(|x| x.start)
        else {
            return file.clone();
        };
        // a position-independent file's symbols count from 0; a fixed-address one's are
        // absolute (ELF e_type at byte 16: ET_EXEC = 2)
        let fixed = elf_type(file) == Some(2);
        let virt = if fixed { addr } else { addr - base };
        let mut elf = Elf::new(file);
        elf.debug_syms = false; // variables are in the symbol table, not in DWARF lookups
        let name = self
            .inner
            .symbolize_single(&Source::Elf(elf), Input::VirtOffset(virt))
            .ok()
            .and_then(|s| match s {
                Symbolized::Sym(sym) => Some(sym.name.to_string()),
                Symbolized::Unknown(_) => None,
            });
        let file_name = file.rsplit('/').next().unwrap_or(file);
        match name {
            Some(n) => format!("{n} in {file_name}"),
            None => format!("data of {file_name}"),
        }
    }
}

/// The ELF file type (e_type) of a file.
fn elf_type(path: &str) -> Option<u16> {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    Some(u16::from_le_bytes([header[16], header[17]]))
}

/// The function and the functions inlined into it at this address, outermost first.
/// A symbol's names (itself, then what is inlined into it), or why it has none.
fn frame_names(sym: Symbolized<'_>) -> Result<Frames, &'static str> {
    match sym {
        Symbolized::Sym(sym) => Ok(std::iter::once(Arc::from(&*sym.name))
            .chain(sym.inlined.iter().map(|f| Arc::from(&*f.name)))
            .collect()),
        Symbolized::Unknown(reason) => Err(match reason {
            Reason::Unmapped => "not mapped",
            Reason::InvalidFileOffset => "not in the file",
            Reason::MissingComponent => "anonymous memory",
            Reason::MissingSyms => "stripped",
            Reason::Unsupported => "unsupported file",
            Reason::UnknownAddr => "no symbol",
            _ => "symbolization error",
        }),
    }
}

/// Why an unwound user stack stops short of its outermost frame, from the marker the
/// kernel's unwinder leaves in place of the next address (enum wp_unwind_stop).
fn unwind_stop(ip: u64) -> Option<&'static str> {
    use crate::bpf::types::wp_unwind_stop as S;
    let stop = |s: S| u64::from(s.0);
    Some(match ip {
        _ if ip == stop(S::WP_UNW_TRUNCATED) => "truncated",
        _ if ip == stop(S::WP_UNW_NO_INFO) => "no unwind info",
        _ if ip == stop(S::WP_UNW_UNREADABLE) => "stack unreadable",
        _ if ip == stop(S::WP_UNW_UNSUPPORTED) => "unwind rule not followed",
        _ if ip == stop(S::WP_UNW_NOT_MAPPED) => "no frame pointer",
        _ if ip == stop(S::WP_UNW_PENDING) => "frame pointers only, unwind tables not loaded yet",
        _ if ip <= stop(S::WP_UNW_STOP_MAX) => "unwinder stopped",
        _ => return None,
    })
}
