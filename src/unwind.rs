//! Unwind tables for the kernel-side unwinder (`bpf/unwind.h`): every executable file
//! the target maps has its `.eh_frame` compiled into rows the BPF program binary-searches
//! (from this address on: how to find the caller's stack pointer, and where the caller's
//! rbp was saved), and the process's executable mappings say which rows cover each
//! address. Part of the session: loaded before the gate opens and refreshed when the
//! target maps new code (exec, dlopen), which the BPF side reports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use libbpf_rs::{MapCore, MapFlags};
use object::{Object, ObjectSection, ObjectSegment, ReadRef};

use crate::bpf::types::{wp_cfa, wp_rbp, wp_unwind_map, wp_unwind_proc, wp_unwind_row};
use crate::model::Mapping;
use crate::signals::{Interrupted, Stop};
use crate::target::files::TargetFile;

/// Mappings a process's table can list (WP_UNWIND_MAPS).
const MAX_MAPS: usize = 128;

/// The executable file-backed mappings of pid: the code that needs unwind tables.
fn exec_mappings(pid: u32) -> Result<Vec<Mapping>> {
    let maps = Mapping::read_all(pid)
        .with_context(|| format!("reading the memory maps of pid {pid} failed"))?;
    Ok(maps
        .into_iter()
        .filter(|m| m.executable && m.is_file())
        .collect())
}

/// Whether pid runs its own program: a command waitprof launched is a copy of waitprof
/// until its exec, and waitprof's own tables would be of no use to it.
fn exec_done(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    id(&format!("/proc/{pid}/exe")) != id("/proc/self/exe")
}

/// A rule of one row, before it is placed in the kernel's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    cfa: u8,
    cfa_off: i16,
    rbp: u8,
    rbp_off: i16,
}

impl Rule {
    const NONE: Rule = Rule {
        cfa: wp_cfa::WP_CFA_NONE.0 as u8,
        cfa_off: 0,
        rbp: wp_rbp::WP_RBP_SAME.0 as u8,
        rbp_off: 0,
    };
    const UNSUPPORTED: Rule = Rule {
        cfa: wp_cfa::WP_CFA_UNSUPPORTED.0 as u8,
        ..Rule::NONE
    };
}

/// Why a file has no rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoTable {
    NoEhFrame,
    Unreadable(String),
    Above4G,
}

impl std::fmt::Display for NoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoTable::NoEhFrame => write!(f, "no .eh_frame or .debug_frame"),
            NoTable::Unreadable(e) => write!(f, "{e}"),
            NoTable::Above4G => write!(f, "code above 4 GiB"),
        }
    }
}

fn rule_of<R: gimli::Reader>(row: &gimli::UnwindTableRow<R::Offset>) -> Rule {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return Rule {
                cfa: wp_cfa::WP_CFA_END.0 as u8,
                ..Rule::NONE
            }
        }
        None | Some(RegisterRule::Offset(-8)) | Some(RegisterRule::SameValue) => {}
        _ => return Rule::UNSUPPORTED,
    }
    let (cfa, cfa_off) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(off) = i16::try_from(*offset) else {
                return Rule::UNSUPPORTED;
            };
            match *register {
                X86_64::RSP => (wp_cfa::WP_CFA_RSP.0 as u8, off),
                X86_64::RBP => (wp_cfa::WP_CFA_RBP.0 as u8, off),
                _ => return Rule::UNSUPPORTED,
            }
        }
        CfaRule::Expression(_) => return Rule::UNSUPPORTED,
    };
    let (rbp, rbp_off) = match row.register(X86_64::RBP) {
        // kept in 8-byte units in the kernel's row
        Some(RegisterRule::Offset(n)) => match i8::try_from(n / 8) {
            Ok(_) if n % 8 == 0 => (wp_rbp::WP_RBP_AT.0 as u8, n as i16),
            _ => return Rule::UNSUPPORTED,
        },
        _ => (wp_rbp::WP_RBP_SAME.0 as u8, 0),
    };
    Rule {
        cfa,
        cfa_off,
        rbp,
        rbp_off,
    }
}

/// Compiles an ELF file's .eh_frame into rows sorted by address: where each rule starts,
/// with a NONE row where an FDE ends and no other begins. Adjacent equal rules merge.
fn compile<'d, R: ReadRef<'d>>(data: R) -> Result<Vec<(u32, Rule)>, NoTable> {
    let file = object::File::parse(data).map_err(|e| NoTable::Unreadable(e.to_string()))?;
    // Go compresses its DWARF sections (SHF_COMPRESSED); sizes are checked before reading
    let section_data = |name: &str| -> Result<_, NoTable> {
        crate::target::files::section(&file, name).map_err(NoTable::Unreadable)
    };
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let rows = if let Some((addr, bytes)) = section_data(".eh_frame")? {
        let bases = bases.set_eh_frame(addr);
        rows_of(&EhFrame::new(&bytes, LittleEndian), &bases)
    } else if let Some((_, bytes)) = section_data(".debug_frame")? {
        // Go binaries (unless built with -w) describe their frames only there
        let mut debug_frame = DebugFrame::new(&bytes, LittleEndian);
        debug_frame.set_address_size(8);
        rows_of(&debug_frame, &bases)
    } else {
        return Err(NoTable::NoEhFrame);
    };
    let mut out: Vec<(u32, Rule)> = Vec::with_capacity(rows.len());
    for (pc, _, rule) in rows {
        let pc = u32::try_from(pc).map_err(|_| NoTable::Above4G)?;
        match out.last_mut() {
            Some(last) if last.0 == pc => last.1 = rule,
            Some(last) if last.1 == rule => {}
            _ => out.push((pc, rule)),
        }
    }
    Ok(out)
}

/// How many rows a file's unwind table compiles to (for tests of the compiler against
/// corrupted files: it must fail cleanly, never panic).
#[doc(hidden)]
pub fn table_rows<'d, R: ReadRef<'d>>(data: R) -> Result<usize, NoTable> {
    compile(data).map(|rows| rows.len())
}

/// Every FDE's rows, and a NONE row where each ends, sorted by address; at one address,
/// an FDE's start sorts after another's end.
fn rows_of<'a, S>(section: &S, bases: &BaseAddresses) -> Vec<(u64, bool, Rule)>
where
    S: UnwindSection<gimli::EndianSlice<'a, LittleEndian>>,
{
    let mut ctx = UnwindContext::new();
    let mut rows: Vec<(u64, bool, Rule)> = Vec::new();
    let mut entries = section.entries(bases);
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            rows.push((
                row.start_address(),
                true,
                rule_of::<gimli::EndianSlice<LittleEndian>>(row),
            ));
        }
        rows.push((fde.end_address(), false, Rule::NONE));
    }
    rows.sort_by_key(|&(pc, real, _)| (pc, real));
    rows
}

/// The offset to subtract from an address in `m` to get the file's virtual address: from
/// the loadable segment holding the mapping's file offset. Segments start mid-page and
/// are mapped from the page below, so two can hold the same page: the later one, whose
/// mapping starts there, is the one.
fn bias_of<'d, R: ReadRef<'d>>(data: R, m: &Mapping) -> Option<u64> {
    bias(data, m.start, m.offset)
}

/// The bias of a mapping of `data` at `start` from file offset `offset` (see bias_of).
pub fn bias<'d, R: ReadRef<'d>>(data: R, start: u64, offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let file = object::File::parse(data).ok()?;
    file.segments()
        .filter_map(|seg| {
            let (off, size) = seg.file_range();
            let page_off = off & !(PAGE - 1);
            (offset >= page_off && offset < off.saturating_add(size.max(1))).then(|| {
                let vaddr = (seg.address() & !(PAGE - 1)).wrapping_add(offset - page_off);
                (page_off, start.wrapping_sub(vaddr))
            })
        })
        .max_by_key(|&(page_off, _)| page_off)
        .map(|(_, bias)| bias)
}

/// Where a file's rows are in the kernel's array, or why it has none.
#[derive(Clone, Debug)]
struct Placed {
    rows: Result<(u32, u32), NoTable>,
    bias_data: Vec<(u64, u64)>, // (mapping offset, virtual address there), to skip rereads
}

/// What the tables cover, for the summary.
#[derive(Clone, Debug, Default)]
pub struct UnwindReport {
    /// Files with tables, and the rows they take.
    pub files: usize,
    pub rows: u32,
    pub capacity: u32,
    /// Files mapped executable that have no table, with the reason.
    pub without: Vec<(String, String)>,
    /// Time spent compiling tables.
    pub build_time: Duration,
    /// Refreshes after the start (new code mapped).
    pub refreshes: usize,
}

/// The target's unwind tables, as loaded into the kernel.
pub struct Tables {
    pid: u32,
    launched: bool,
    stop: Stop,
    files: HashMap<String, Placed>,
    next_row: u32,
    capacity: u32,
    loaded: Vec<Mapping>,
    /// How often each mapping that could not be placed was tried (see `refresh`).
    tries: HashMap<Mapping, u32>,
    /// Written with each new mapping list (wp_unwind_proc.generation).
    generation: u32,
    pub report: UnwindReport,
}

/// How often a mapping whose file cannot be opened is tried again: a library mapped
/// again at once is placed on the next try; a file that never opens costs no more.
const MAX_TRIES: u32 = 8;

impl Tables {
    /// `launched`: a command waitprof started, a copy of waitprof until its exec.
    /// `stop`: a signal ends a long build between two files.
    pub fn new(pid: u32, capacity: u32, launched: bool, stop: Stop) -> Tables {
        Tables {
            pid,
            launched,
            stop,
            files: HashMap::new(),
            next_row: 0,
            capacity,
            loaded: Vec::new(),
            tries: HashMap::new(),
            generation: 0,
            report: UnwindReport {
                capacity,
                ..UnwindReport::default()
            },
        }
    }

    /// Rereads the target's mappings and, if its code changed, compiles the new files
    /// and replaces its mapping list in the kernel. Returns whether anything changed.
    pub fn refresh(&mut self, rows_map: &impl MapCore, procs_map: &impl MapCore) -> Result<bool> {
        if self.launched && !exec_done(self.pid) {
            return Ok(false);
        }
        let mappings = exec_mappings(self.pid)?;
        if mappings == self.loaded {
            return Ok(false);
        }
        let started = Instant::now();
        let mut proc_ = wp_unwind_proc::default();
        let mut n = 0usize;
        // mappings whose file could not be placed now (unmapped before it was opened, a
        // library dlclose'd and dlopen'ed again): left out of `loaded`, so the next
        // request or timer tries them again even if the maps look the same then, up to
        // MAX_TRIES times
        let mut unplaced = Vec::new();
        for m in &mappings {
            if self.stop.requested() {
                return Err(
                    Interrupted("while building the unwind tables: nothing was recorded").into(),
                );
            }
            if n == MAX_MAPS {
                self.report.without.push((
                    m.path.clone(),
                    format!("over {MAX_MAPS} executable mappings"),
                ));
                break;
            }
            let (rows, bias) = self.place(m, rows_map);
            let Some(bias) = bias else {
                unplaced.push(m.clone());
                continue;
            };
            let (lo, hi) = rows.unwrap_or((0, 0));
            proc_.m[n] = wp_unwind_map {
                start: m.start,
                end: m.end,
                bias,
                row_lo: lo,
                row_hi: hi,
            };
            n += 1;
        }
        proc_.m[..n].sort_by_key(|m| m.start);
        proc_.n = n as u32;
        self.generation = self.generation.wrapping_add(1);
        proc_.generation = self.generation;
        // SAFETY: wp_unwind_proc is plain data with explicit padding, zero-initialised.
        let value = unsafe { plain::as_bytes(&proc_) };
        procs_map
            .update(&self.pid.to_ne_bytes(), value, MapFlags::ANY)
            .context("loading the target's unwind mappings failed")?;
        if !self.loaded.is_empty() {
            self.report.refreshes += 1;
        }
        for m in &unplaced {
            *self.tries.entry(m.clone()).or_default() += 1;
        }
        let tries = &self.tries;
        self.loaded = mappings
            .into_iter()
            .filter(|m| !unplaced.contains(m) || tries.get(m).is_some_and(|&t| t >= MAX_TRIES))
            .collect();
        self.report.build_time += started.elapsed();
        Ok(true)
    }

    /// The rows of m's file (compiled and loaded the first time it is seen) and m's bias.
    fn place(
        &mut self,
        m: &Mapping,
        rows_map: &impl MapCore,
    ) -> (Result<(u32, u32), NoTable>, Option<u64>) {
        if let Some(p) = self.files.get(&m.file) {
            if let Some(&(_, vaddr)) = p.bias_data.iter().find(|(off, _)| *off == m.offset) {
                return (p.rows.clone(), Some(m.start.wrapping_sub(vaddr)));
            }
        }
        // the very file mapped, even deleted or in another mount namespace, read as
        // untrusted input
        let file = match TargetFile::open_mapped(self.pid, m) {
            Ok(f) => f,
            Err(e) => {
                let rows = Err(NoTable::Unreadable(e));
                self.note_without(m, &rows);
                return (rows, None);
            }
        };
        let data = file.reader();
        let bias = bias_of(&data, m);
        let rows = match self.files.get(&m.file) {
            Some(p) => p.rows.clone(),
            None => {
                let rows = compile(&data).and_then(|rows| self.load(&rows, rows_map));
                self.note_without(m, &rows);
                if rows.is_ok() {
                    self.report.files += 1;
                }
                rows
            }
        };
        let placed = self.files.entry(m.file.clone()).or_insert(Placed {
            rows: rows.clone(),
            bias_data: Vec::new(),
        });
        // the bias depends on where the file is mapped (a new process after exec maps
        // the same libc elsewhere); the virtual address at a file offset does not
        if let Some(b) = bias {
            placed.bias_data.push((m.offset, m.start.wrapping_sub(b)));
        }
        (rows, bias)
    }

    fn note_without(&mut self, m: &Mapping, rows: &Result<(u32, u32), NoTable>) {
        if let Err(why) = rows {
            if !self.report.without.iter().any(|(p, _)| *p == m.path) {
                self.report.without.push((m.path.clone(), why.to_string()));
            }
        }
    }

    /// Appends rows to the kernel's array; returns their range.
    fn load(
        &mut self,
        rows: &[(u32, Rule)],
        rows_map: &impl MapCore,
    ) -> Result<(u32, u32), NoTable> {
        let lo = self.next_row;
        let hi = lo
            .checked_add(rows.len() as u32)
            .filter(|&hi| hi <= self.capacity)
            .ok_or_else(|| {
                NoTable::Unreadable(format!(
                    "the unwind-row table is full ({} rows; raise --unwind-rows)",
                    self.capacity
                ))
            })?;
        let mut keys = Vec::with_capacity(rows.len() * 4);
        let mut values = Vec::with_capacity(rows.len() * std::mem::size_of::<wp_unwind_row>());
        for (i, &(pc, r)) in rows.iter().enumerate() {
            keys.extend_from_slice(&(lo + i as u32).to_ne_bytes());
            let row = wp_unwind_row {
                pc,
                cfa_off: r.cfa_off,
                rbp_off8: (r.rbp_off / 8) as i8,
                rule: r.cfa | (r.rbp << 4),
            };
            // SAFETY: wp_unwind_row is plain data without padding.
            values.extend_from_slice(unsafe { plain::as_bytes(&row) });
        }
        for (k, v) in keys
            .chunks(4 * 65536)
            .zip(values.chunks(std::mem::size_of::<wp_unwind_row>() * 65536))
        {
            rows_map
                .update_batch(k, v, (k.len() / 4) as u32, MapFlags::ANY, MapFlags::ANY)
                .map_err(|e| NoTable::Unreadable(format!("loading its rows failed: {e}")))?;
        }
        self.next_row = hi;
        self.report.rows = hi;
        Ok((lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_compiles_to_sorted_rows_covering_its_functions() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let rows = compile(&exe[..]).unwrap();
        assert!(rows.len() > 1000, "{} rows", rows.len());
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
        // at a function's first instruction the CFA is rsp + 8: only the return address
        let f = this_test_binary_compiles_to_sorted_rows_covering_its_functions as fn() as usize;
        let exe_maps = exec_mappings(std::process::id()).unwrap();
        let m = exe_maps
            .iter()
            .find(|m| (m.start..m.end).contains(&(f as u64)))
            .unwrap();
        let bias = bias_of(&exe[..], m).unwrap();
        let pc = (f as u64 - bias) as u32;
        let at = rows.partition_point(|&(p, _)| p <= pc) - 1;
        assert_eq!(rows[at].0, pc, "a row starts at the function");
        assert_eq!(
            rows[at].1,
            Rule {
                cfa: wp_cfa::WP_CFA_RSP.0 as u8,
                cfa_off: 8,
                rbp: wp_rbp::WP_RBP_SAME.0 as u8,
                rbp_off: 0
            }
        );
    }
}
