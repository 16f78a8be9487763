//! Symbolization: instruction pointers from the stack table into function names, with
//! blazesym. User stacks resolve through the files the target mapped, opened as its own
//! while it runs (`target::maps`), so code it unmapped, a target that exited, deleted
//! files and other mount namespaces still symbolize, and a file that cannot be read costs
//! only its own frames; kernel stacks resolve against kallsyms. Frames that cannot be
//! named are kept as `[unknown: REASON]` and counted by reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Result;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Reason, Symbolized};
use blazesym::MaybeDefault;

use crate::model::{Collected, Kind, Mapping};
use crate::target::files::TargetFile;
use crate::target::maps::MappedFiles;
use crate::text::printable;

/// Depth at which the kernel cut a stack (WP_MAX_STACK_DEPTH).
const MAX_DEPTH: usize = 127;

pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
    pid: u32,
    /// The target's mappings and files, kept while it runs.
    target: MappedFiles,
    /// The target's user id, when first seen: a perf map must be its own.
    uid: Option<u32>,
    /// The files (dev:inode) whose symbol tables `warm` has read, and whether it read
    /// the kernel's.
    warmed: HashSet<String>,
    kernel_warmed: bool,
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
    /// The target's files that could not be read, and why (their frames are unknown).
    pub unreadable_files: Vec<(String, String)>,
    /// Where each named frame came from (its address, source line and code), for the
    /// exports that keep them (pprof).
    pub sites: Sites,
}

/// The code a frame's address lies in: one mapping of a file the target mapped, or the
/// kernel. The path is printable (it comes from the target).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Code {
    pub path: String,
    pub start: u64,
    pub end: u64,
    /// The file offset `start` maps.
    pub offset: u64,
    /// The file's GNU build id, in hex.
    pub build_id: Option<String>,
}

/// The kernel's code, as one mapping over the kernel's half of the address space.
pub const KERNEL_CODE: &str = "[kernel.kallsyms]";
/// The start of x86-64 kernel text without KASLR: an address to make the first kernel
/// lookup with (`Symbolizer::warm`).
const KERNEL_TEXT_START: u64 = 0xffff_ffff_8100_0000;

/// Where a named frame came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The address looked up (a return address less one), in the process's space.
    pub addr: u64,
    /// The source file and line, where debug information has them (line 0: none).
    pub file: Option<Arc<str>>,
    pub line: u32,
    /// Inlined into the frame before it (root first), at the same address.
    pub inlined: bool,
    pub code: Option<Arc<Code>>,
}

/// The site of every frame name the symbolizer made, keyed by the name's allocation: a
/// name is made once per address (and inlining depth) and shared by every stack through
/// it, so the same text at two addresses is two names with two sites. Each entry holds
/// its name, so the allocation cannot be reused while the table lives.
#[derive(Clone, Debug, Default)]
pub struct Sites(HashMap<usize, (Arc<str>, Site)>);

impl Sites {
    fn key(name: &Arc<str>) -> usize {
        Arc::as_ptr(name) as *const u8 as usize
    }

    pub fn insert(&mut self, name: &Arc<str>, site: Site) {
        self.0.insert(Self::key(name), (name.clone(), site));
    }

    /// The site of this frame, if the symbolizer named it at an address.
    pub fn get(&self, name: &Arc<str>) -> Option<&Site> {
        self.0
            .get(&Self::key(name))
            .filter(|(n, _)| Arc::ptr_eq(n, name))
            .map(|(_, s)| s)
    }
}

/// A function's name at an address and, where the debug information has it, its source
/// line; outermost first when functions are inlined there.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sym {
    name: Arc<str>,
    file: Option<Arc<str>>,
    line: u32,
}

impl Sym {
    fn named(name: Arc<str>) -> Sym {
        Sym {
            name,
            file: None,
            line: 0,
        }
    }
}

/// The names at an address or why there are none, and the code it is in.
type Named = Result<Vec<Sym>, &'static str>;
type Names = HashMap<u64, (Named, Option<Arc<Code>>)>;

impl Symbolizer {
    pub fn new(pid: u32) -> Symbolizer {
        // names are demangled here only when they are mangled (`_Z`, `_R`): blazesym
        // would run a C function named `f` through the C++ demangler ("float")
        let inner = blazesym::symbolize::Symbolizer::builder()
            .enable_demangling(false)
            .enable_inlined_fns(true)
            .enable_code_info(true)
            .build();
        Symbolizer {
            inner,
            pid,
            target: MappedFiles::new(pid),
            uid: None,
            warmed: HashSet::new(),
            kernel_warmed: false,
        }
    }

    /// Reads, while the session records, what naming its stacks reads first whatever
    /// they hold: the kernel's symbols (/proc/kallsyms: 40 of the 80 ms that naming a
    /// 2,000-stack profile took) and the symbol table of each file the target maps
    /// executable. blazesym keeps both, so the end of the session looks addresses up
    /// instead (a file is found again by the same descriptor). Files already read are
    /// skipped; what fails here is retried, and reported, at the end.
    pub fn warm(&mut self) {
        if !self.kernel_warmed {
            self.kernel_warmed = true;
            // any kernel address: the first lookup reads the whole table
            let _ = self
                .inner
                .symbolize(&Self::kernel_source(), Input::AbsAddr(&[KERNEL_TEXT_START]));
        }
        for m in self.target.latest() {
            if !m.executable || !m.is_file() || self.warmed.contains(&m.file) {
                continue;
            }
            self.warmed.insert(m.file.clone());
            if let Ok(path) = self.target.file(m).and_then(|f| f.mappable_path()) {
                let elf = blazesym::symbolize::cache::Elf::new(path);
                let _ = self
                    .inner
                    .cache(&blazesym::symbolize::cache::Cache::Elf(elf));
            }
        }
    }

    /// Rereads the target's maps and opens the files it newly mapped, so its stacks
    /// resolve after it unmaps them or exits. Once it is gone, what was read is kept.
    pub fn cache_target(&mut self) {
        if self.uid.is_none() {
            use std::os::unix::fs::MetadataExt;
            self.uid = std::fs::metadata(format!("/proc/{}", self.pid))
                .ok()
                .map(|m| m.uid());
        }
        self.target.refresh();
    }

    fn kernel_source() -> Source<'static> {
        Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            ..Kernel::default()
        })
    }

    /// Names every stack the profile refers to: the target's and its wakers' (which
    /// may belong to other processes, named while those still run). A file that cannot
    /// be read or parsed costs its own frames only.
    pub fn resolve(&self, collected: &Collected) -> Result<Symbols> {
        let mut user_ids: HashMap<u32, HashSet<u64>> = HashMap::new();
        let mut kernel_ids = HashSet::new();
        // stacks seen only as a waker's: a Go waker's is cut at fewer switches
        let mut waker_only: HashSet<u64> = HashSet::new();
        for row in &collected.rows {
            user_ids
                .entry(collected.pid)
                .or_default()
                .extend(row.ustack.id());
            kernel_ids.extend(row.kstack.id());
            if let Some(id) = row.waker.ustack.id() {
                user_ids.entry(row.waker.tgid).or_default().insert(id);
                waker_only.insert(id);
            }
            kernel_ids.extend(row.waker.kstack.id());
        }
        // the threads still waiting at the end, as the snapshot saw them
        for b in collected.snapshots.at_end.values() {
            user_ids
                .entry(collected.pid)
                .or_default()
                .extend(b.ustack_id);
            kernel_ids.extend(b.kstack_id);
        }
        // a Go program's goroutines
        if let Some(g) = &collected.goroutines {
            let ids = user_ids.entry(collected.pid).or_default();
            ids.extend(g.rows.iter().filter_map(|r| r.stack));
            ids.extend(g.in_syscalls.iter().filter_map(|t| t.stack));
        }
        for row in &collected.rows {
            if let Some(id) = row.ustack.id() {
                waker_only.remove(&id);
            }
        }
        let mut symbols = Symbols::default();
        for (pid, ids) in &user_ids {
            let others;
            let (files, perf) = if *pid == collected.pid {
                (&self.target, self.perf_map(*pid))
            } else {
                // another process's waker: best effort, it may have exited
                let mut f = MappedFiles::new(*pid);
                f.refresh();
                others = f;
                (&others, None)
            };
            let names = |addrs: &[u64]| self.name_user(files, perf.as_ref(), addrs);
            let (user, unknown) = resolve_set(
                names,
                ids,
                collected,
                Some(&waker_only),
                &mut symbols.truncated_stacks,
                &mut symbols.unknown_why,
                &mut symbols.sites,
            );
            symbols.user.extend(user);
            symbols.unknown_user_frames += unknown;
        }
        symbols.objects = self.name_futexes(collected);
        symbols.unreadable_files = self.target.unreadable.clone();
        let kernel = Arc::new(Code {
            path: KERNEL_CODE.to_string(),
            start: 0xffff_8000_0000_0000,
            end: u64::MAX,
            offset: 0,
            build_id: None,
        });
        let kernel_names = |addrs: &[u64]| -> Names {
            let code = || Some(kernel.clone());
            match self
                .inner
                .symbolize(&Self::kernel_source(), Input::AbsAddr(addrs))
            {
                Ok(results) => addrs
                    .iter()
                    .copied()
                    .zip(results.into_iter().map(|r| (frame_names(r), code())))
                    .collect(),
                Err(_) => addrs
                    .iter()
                    .map(|&a| (a, (Err("kallsyms unreadable"), code())))
                    .collect(),
            }
        };
        let (kernel, unknown) = resolve_set(
            kernel_names,
            &kernel_ids,
            collected,
            None,
            &mut symbols.truncated_stacks,
            &mut BTreeMap::new(),
            &mut symbols.sites,
        );
        symbols.kernel = kernel
            .into_iter()
            .map(|(id, f)| (id, trim_capture_frames(f)))
            .collect();
        symbols.unknown_kernel_frames = unknown;
        Ok(symbols)
    }

    /// Names user addresses: each through the file mapped there (opened as the target's
    /// own, never by path), anonymous code through the target's perf map.
    fn name_user(&self, files: &MappedFiles, perf: Option<&PerfMap>, addrs: &[u64]) -> Names {
        let mut names = Names::new();
        // each mapping's code, made once; a file's build id, read once
        let mut codes: HashMap<u64, Arc<Code>> = HashMap::new();
        let mut code_of = |m: &Mapping, build_id: Option<&String>| -> Arc<Code> {
            codes
                .entry(m.start)
                .or_insert_with(|| {
                    Arc::new(Code {
                        path: printable(&m.path).into_owned(),
                        start: m.start,
                        end: m.end,
                        offset: m.offset,
                        build_id: build_id.cloned(),
                    })
                })
                .clone()
        };
        // file -> (its mapping, file offsets and the addresses they came from)
        let mut by_file: HashMap<&str, (&Mapping, Vec<u64>, Vec<u64>)> = HashMap::new();
        for &addr in addrs {
            let Some(m) = files.mapping_of(addr) else {
                names.insert(addr, (Err("not mapped"), None));
                continue;
            };
            if !m.is_file() {
                let named = perf.and_then(|p| p.name(addr));
                let named = match named {
                    Some(n) => Ok(vec![Sym::named(Arc::from(printable(n)))]),
                    None if m.path == "[vdso]" => Err("vdso"),
                    None => Err("anonymous memory"),
                };
                names.insert(addr, (named, Some(code_of(m, None))));
                continue;
            }
            let e = by_file
                .entry(&m.file)
                .or_insert((m, Vec::new(), Vec::new()));
            e.1.push(addr.wrapping_sub(m.start).wrapping_add(m.offset));
            e.2.push(addr);
        }
        for (m, offsets, file_addrs) in by_file.into_values() {
            let file = match files.file(m) {
                Ok(f) => f,
                Err(why) => {
                    names.extend(file_addrs.iter().map(|&a| (a, (Err(why), None))));
                    continue;
                }
            };
            let build_id = {
                use object::Object;
                object::File::parse(&file.reader())
                    .ok()
                    .and_then(|elf| elf.build_id().ok().flatten().map(hex))
            };
            let mut named: Vec<Named> = match file.mappable_path() {
                Ok(path) => match self
                    .inner
                    .symbolize(&Source::Elf(Elf::new(path)), Input::FileOffset(&offsets))
                {
                    Ok(r) => r.into_iter().map(frame_names).collect(),
                    Err(_) => vec![Err("file unparsable"); offsets.len()],
                },
                Err(_) => vec![Err("file unreadable"); offsets.len()],
            };
            self.name_from_file(file, m, files, &file_addrs, &mut named);
            for (addr, named) in file_addrs.into_iter().zip(named) {
                let code = files
                    .mapping_of(addr)
                    .map(|own| code_of(own, build_id.as_ref()));
                names.insert(addr, (named, code));
            }
        }
        names
    }

    /// The target's perf map (`/tmp/perf-PID.map`, written by JIT runtimes), as it sees
    /// it: inside its root, under its own pid, not through a symlink, and only if the
    /// file is its own (a JIT writes it as its own user).
    fn perf_map(&self, pid: u32) -> Option<PerfMap> {
        let ns_pid = ns_pid(pid).unwrap_or(pid);
        let file = TargetFile::open_in_root_no_follow(pid, &format!("/tmp/perf-{ns_pid}.map"))
            .or_else(|_| {
                TargetFile::open_no_follow(std::path::Path::new(&format!("/tmp/perf-{pid}.map")))
            })
            .ok()?;
        if self.uid.is_none() || file.owner() != self.uid {
            return None;
        }
        let data = file.read_to_end(PERF_MAP_MAX).ok()?;
        Some(PerfMap::parse(&data))
    }
}

/// The largest perf map read.
const PERF_MAP_MAX: u64 = 64 << 20;

/// A JIT's perf map: `START SIZE NAME` lines in hex, sorted by start.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    pub fn parse(data: &[u8]) -> PerfMap {
        let text = String::from_utf8_lossy(data);
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                let start = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
                let name = f.next()?.trim();
                (!name.is_empty() && size > 0)
                    .then(|| (start, size, name.chars().take(1024).collect()))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        PerfMap { entries }
    }

    pub fn name(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, size, name) = self.entries.get(i.checked_sub(1)?)?;
        (addr - start < *size).then_some(name.as_str())
    }
}

/// The pid of `pid` in its own pid namespace (the last of /proc/PID/status's NSpid).
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Names the stacks `ids`: `names` names a batch of distinct addresses.
fn resolve_set(
    names: impl FnOnce(&[u64]) -> Names,
    ids: &HashSet<u64>,
    collected: &Collected,
    // user stacks: Some(the ids that are only wakers' stacks)
    user: Option<&HashSet<u64>>,
    truncated: &mut usize,
    unknown_why: &mut BTreeMap<&'static str, usize>,
    sites: &mut Sites,
) -> (HashMap<u64, Frames>, usize) {
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
    let names = if addrs.is_empty() {
        Names::new()
    } else {
        names(&addrs)
    };
    let unknown = names.values().filter(|(n, _)| n.is_err()).count();
    for why in names.values().filter_map(|(n, _)| n.as_ref().err()) {
        *unknown_why.entry(why).or_default() += 1;
    }
    // each address's names, made once and shared by every stack through it
    let names: HashMap<u64, Result<Frames, &'static str>> = names
        .into_iter()
        .map(|(addr, (named, code))| {
            let frames = named.map(|syms| {
                syms.into_iter()
                    .enumerate()
                    .map(|(depth, sym)| {
                        let site = Site {
                            addr,
                            file: sym.file,
                            line: sym.line,
                            inlined: depth > 0,
                            code: code.clone(),
                        };
                        sites.insert(&sym.name, site);
                        sym.name
                    })
                    .collect()
            });
            (addr, frames)
        })
        .collect();
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
        if let Some(waker_only) = user {
            frames = if waker_only.contains(&id) {
                crate::runtime::go::frames::cut_waker_at_g0(frames)
            } else {
                crate::runtime::go::frames::cut_at_g0(frames)
            };
        }
        out.insert(id, frames);
    }
    (out, unknown)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where separate debug information for a file with this build id lives.
fn build_id_debug_file(build_id: &[u8]) -> Option<TargetFile> {
    let hex = hex(build_id);
    if hex.len() <= 2 {
        return None;
    }
    ["/usr/lib/debug", "/lib/debug"].iter().find_map(|dir| {
        let p = format!("{dir}/.build-id/{}/{}.debug", &hex[..2], &hex[2..]);
        TargetFile::open_no_follow(std::path::Path::new(&p)).ok()
    })
}

/// A file's `.gnu_debuglink`, looked for as gdb does (beside the file, in `.debug/`
/// there, under /usr/lib/debug), inside the target's root, its CRC checked.
fn debuglink_file<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    pid: u32,
    path: &str,
) -> Option<TargetFile> {
    use object::Object;
    let (name, crc) = elf.gnu_debuglink().ok().flatten()?;
    let name = std::str::from_utf8(name).ok()?;
    if name.is_empty() || name.contains('/') || name.len() > 255 {
        return None;
    }
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    [
        format!("{dir}/{name}"),
        format!("{dir}/.debug/{name}"),
        format!("/usr/lib/debug{dir}/{name}"),
    ]
    .iter()
    .filter_map(|p| TargetFile::open_in_root(pid, p).ok())
    .find(|f| {
        f.read_to_end(crate::target::files::MAX_SECTION)
            .is_ok_and(|d| crc32fast::hash(&d) == crc)
    })
}

impl Symbolizer {
    /// Names what blazesym could not from the file itself: separate debug information
    /// (by `.gnu_debuglink` inside the target's root, or by build id alone), then a Go
    /// binary's `.gopclntab` (stripped Go, which blazesym cannot read).
    fn name_from_file(
        &self,
        file: &TargetFile,
        m: &Mapping,
        files: &MappedFiles,
        addrs: &[u64],
        named: &mut [Named],
    ) {
        if named.iter().all(Result::is_ok) {
            return;
        }
        let reader = file.reader();
        let Ok(elf) = object::File::parse(&reader) else {
            return;
        };
        let base = files.first_of(m).unwrap_or(m);
        let Some(bias) = crate::unwind::bias(&reader, m.start, m.offset)
            .or_else(|| crate::unwind::bias(&reader, base.start, base.offset))
        else {
            return;
        };
        let stripped = named.contains(&Err("stripped"));
        let debug = stripped
            .then(|| {
                use object::Object;
                debuglink_file(&elf, files.pid(), &m.path)
                    .or_else(|| elf.build_id().ok().flatten().and_then(build_id_debug_file))
            })
            .flatten();
        let debug_path = debug.as_ref().and_then(|d| d.mappable_path().ok());
        let go = named
            .iter()
            .any(Result::is_err)
            .then(|| crate::runtime::go::pclntab::GoFuncs::load(&reader))
            .flatten();
        for (addr, name) in addrs.iter().zip(named.iter_mut()) {
            let vaddr = addr.wrapping_sub(bias);
            if let (Some(path), Err("stripped")) = (&debug_path, &name) {
                let found = self
                    .inner
                    .symbolize_single(&Source::Elf(Elf::new(path)), Input::VirtOffset(vaddr))
                    .ok()
                    .map(frame_names);
                if let Some(Ok(frames)) = found {
                    *name = Ok(frames);
                    continue;
                }
            }
            if let (Some(f), true) = (go.as_ref().and_then(|go| go.name(vaddr)), name.is_err()) {
                *name = Ok(vec![Sym::named(Arc::from(printable(f)))]);
            }
        }
    }
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
        addrs.into_iter().map(|a| (a, self.name_data(a))).collect()
    }

    fn name_data(&self, addr: u64) -> String {
        let maps = self.target.latest();
        let Some(i) = maps.iter().position(|m| m.start <= addr && addr < m.end) else {
            return "unmapped".to_string();
        };
        let m = &maps[i];
        // .bss past the file's end is anonymous memory right after the file's mappings
        let file_map = if m.is_file() {
            Some(m)
        } else if m.path.is_empty() && i > 0 && maps[i - 1].end == m.start {
            Some(&maps[i - 1]).filter(|p| p.is_file())
        } else {
            None
        };
        let Some(fm) = file_map else {
            return match m.path.as_str() {
                "[heap]" => "heap".to_string(),
                "[stack]" => "main thread's stack".to_string(),
                "" => "anonymous memory: heap arena, thread stack or mmap".to_string(),
                other => other.to_string(),
            };
        };
        let file_name = fm.path.rsplit('/').next().unwrap_or(&fm.path);
        // the file's load bias: where its first mapping (file offset 0) starts
        let (Some(base), Ok(file)) = (self.target.first_of(fm), self.target.file(fm)) else {
            return format!("data of {file_name}");
        };
        // a position-independent file's symbols count from 0; a fixed-address one's are
        // absolute
        let fixed = {
            use object::Object;
            object::File::parse(&file.reader())
                .is_ok_and(|f| f.kind() == object::ObjectKind::Executable)
        };
        let virt = if fixed {
            addr
        } else {
            addr.wrapping_sub(base.start)
        };
        let Ok(path) = file.mappable_path() else {
            return format!("data of {file_name}");
        };
        let mut elf = Elf::new(path);
        elf.debug_syms = false; // variables are in the symbol table, not in DWARF lookups
        let name = self
            .inner
            .symbolize_single(&Source::Elf(elf), Input::VirtOffset(virt))
            .ok()
            .and_then(|s| match s {
                Symbolized::Sym(sym) => Some(demangle(&sym.name)),
                Symbolized::Unknown(_) => None,
            });
        match name {
            Some(n) => format!("{n} in {file_name}"),
            None => format!("data of {file_name}"),
        }
    }
}

/// A mangled name (Rust's `_ZN...E` or `_R...`, C++'s `_Z...`) demangled; any other
/// name as it is.
/// The result is printable: names come from the target's files.
fn demangle(name: &str) -> Arc<str> {
    let shown = |s: &str| Arc::from(printable(s));
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return shown(&format!("{d:#}"));
    }
    if name.starts_with("_Z") {
        if let Some(d) = cpp_demangle::Symbol::new(name)
            .ok()
            .and_then(|s| s.demangle().ok())
        {
            return shown(&d);
        }
    }
    shown(name)
}

/// The function and the functions inlined into it at this address, outermost first.
/// A symbol's names (itself, then what is inlined into it), or why it has none.
fn frame_names(sym: Symbolized<'_>) -> Named {
    // a file's name as its debug information gives it (with its directory when given)
    let source = |code: Option<&blazesym::symbolize::CodeInfo<'_>>| match code {
        Some(c) => (
            Some(Arc::from(printable(&c.to_path().to_string_lossy()))),
            c.line.unwrap_or(0),
        ),
        None => (None, 0),
    };
    match sym {
        Symbolized::Sym(sym) => {
            let (file, line) = source(sym.code_info.as_deref());
            let outer = Sym {
                name: demangle(&sym.name),
                file,
                line,
            };
            Ok(std::iter::once(outer)
                .chain(sym.inlined.iter().map(|f| {
                    let (file, line) = source(f.code_info.as_ref());
                    Sym {
                        name: demangle(&f.name),
                        file,
                        line,
                    }
                }))
                .collect())
        }
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
        _ if ip == stop(S::WP_UNW_OUTSIDE) => {
            "frame pointers from code outside the unwind tables (just mapped, or JIT)"
        }
        _ if ip == stop(S::WP_UNW_OTHER_PROCESS) => {
            "another process, whose unwind tables waitprof does not hold: not walked further"
        }
        _ if ip <= stop(S::WP_UNW_STOP_MAX) => "unwinder stopped",
        _ => return None,
    })
}
