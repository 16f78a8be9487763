//! Where the Go runtime keeps what waitprof reads in each goroutine (`runtime.g`) and
//! thread (`runtime.m`), per Go version: read from the binary's DWARF when it has any,
//! else from this table, which the tests check against DWARF for every Go version they
//! can build. The fields come from `src/runtime/runtime2.go` of each release (`type g
//! struct`, `type gobuf struct`, `type m struct`), and the wait reasons from its
//! `waitReasonStrings`, in the order of the `waitReason` constants.

use gimli::{EndianSlice, LittleEndian};
use object::{Object, ReadRef};

use crate::target::files::section;

/// Byte offsets within `runtime.g` (and `runtime.m` for `m_procid`, `m_curg`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub stack_lo: u64,
    pub stack_hi: u64,
    pub m: u64,
    pub sched_sp: u64,
    pub sched_pc: u64,
    pub sched_bp: u64,
    pub atomicstatus: u64,
    pub goid: u64,
    pub waitreason: u64,
    pub startpc: u64,
    pub m_procid: u64,
    pub m_curg: u64,
    /// Within `runtime.schedt`: `timeToRun` and (Go 1.20 on) `totalMutexWaitTime`.
    pub sched_time_to_run: Option<u64>,
    pub sched_mutex_wait: Option<u64>,
}

impl Offsets {
    /// How much of each `g` is read: up to the end of the last field used.
    pub fn g_read_len(&self) -> u64 {
        [
            self.stack_hi,
            self.m,
            self.sched_sp,
            self.sched_pc,
            self.sched_bp,
            self.atomicstatus,
            self.goid,
            self.waitreason,
            self.startpc,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8
    }

    /// A layout that could be a `g`'s: every field inside the first 1 KiB.
    fn sane(&self) -> bool {
        self.g_read_len() <= 1024
            && self.m_procid < 2048
            && self.m_curg < 2048
            && self.sched_time_to_run.is_none_or(|o| o < 1 << 16)
            && self.sched_mutex_wait.is_none_or(|o| o < 1 << 16)
    }
}

/// The Go versions whose layouts the table holds.
pub const TABLE_VERSIONS: &str = "1.19 and 1.21-1.23";

/// The layout of Go 1.`minor`, if waitprof knows it.
pub fn table(minor: u32) -> Option<Offsets> {
    // (atomicstatus, goid, waitreason, startpc): Go 1.23 added `syscallbp` after
    // `syscallpc`, which moves them all; 1.21 reordered the tracking fields before
    // `startpc`
    let (atomicstatus, goid, waitreason, startpc) = match minor {
        19 => (144, 152, 176, 312),
        21 | 22 => (144, 152, 176, 296),
        23 => (152, 160, 184, 304),
        _ => return None,
    };
    Some(Offsets {
        stack_lo: 0,
        stack_hi: 8,
        m: 48,
        sched_sp: 56,
        sched_pc: 64,
        sched_bp: 104,
        atomicstatus,
        goid,
        waitreason,
        startpc,
        m_procid: 72,
        m_curg: 192,
        sched_time_to_run: Some(if minor == 19 { 312 } else { 320 }),
        sched_mutex_wait: (minor >= 20).then_some(1624),
    })
}

/// Wait reasons of Go 1.19, by number.
const WAIT_REASONS_119: [&str; 27] = [
    "",
    "GC assist marking",
    "IO wait",
    "chan receive (nil chan)",
    "chan send (nil chan)",
    "dumping heap",
    "garbage collection",
    "garbage collection scan",
    "panicwait",
    "select",
    "select (no cases)",
    "GC assist wait",
    "GC sweep wait",
    "GC scavenge wait",
    "chan receive",
    "chan send",
    "finalizer wait",
    "force gc (idle)",
    "semacquire",
    "sleep",
    "sync.Cond.Wait",
    "timer goroutine (idle)",
    "trace reader (blocked)",
    "wait for GC cycle",
    "GC worker (idle)",
    "preempted",
    "debug call",
];

/// Wait reasons of Go 1.23, by number; 1.21 and 1.22 have a prefix of them.
const WAIT_REASONS_123: [&str; 38] = [
    "",
    "GC assist marking",
    "IO wait",
    "chan receive (nil chan)",
    "chan send (nil chan)",
    "dumping heap",
    "garbage collection",
    "garbage collection scan",
    "panicwait",
    "select",
    "select (no cases)",
    "GC assist wait",
    "GC sweep wait",
    "GC scavenge wait",
    "chan receive",
    "chan send",
    "finalizer wait",
    "force gc (idle)",
    "semacquire",
    "sleep",
    "sync.Cond.Wait",
    "sync.Mutex.Lock",
    "sync.RWMutex.RLock",
    "sync.RWMutex.Lock",
    "trace reader (blocked)",
    "wait for GC cycle",
    "GC worker (idle)",
    "GC worker (active)",
    "preempted",
    "debug call",
    "GC mark termination",
    "stopping the world",
    "flushing proc caches",
    "trace goroutine status",
    "trace proc status",
    "page trace flush",
    "coroutine",
    "GC weak to strong wait",
];

/// The wait reasons of Go 1.`minor`, if waitprof knows them.
pub fn wait_reasons(minor: u32) -> Option<&'static [&'static str]> {
    match minor {
        19 => Some(&WAIT_REASONS_119),
        21 => Some(&WAIT_REASONS_123[..32]),
        22 => Some(&WAIT_REASONS_123[..37]),
        23 => Some(&WAIT_REASONS_123),
        _ => None,
    }
}

type Section<'a> = EndianSlice<'a, LittleEndian>;

/// The struct members waitprof needs, by struct.
const WANTED: [&str; 5] = [
    "runtime.g",
    "runtime.m",
    "runtime.gobuf",
    "runtime.stack",
    "runtime.schedt",
];

/// The layout from the binary's DWARF: None when it has none (built with `-w`), an
/// error when it has DWARF that does not describe the runtime's structs.
pub fn from_dwarf<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
) -> Result<Option<Offsets>, String> {
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'d, [u8]>, String> {
        Ok(section(file, id.name())?
            .map(|(_, d)| d)
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    if file.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| Section::new(s, LittleEndian));
    let members = struct_members(&dwarf).map_err(|e| format!("DWARF: {e}"))?;
    let get = |s: &str, m: &str| -> Result<u64, String> {
        members
            .iter()
            .find(|(st, name, _)| st == s && name == m)
            .map(|&(_, _, off)| off)
            .ok_or_else(|| format!("DWARF has no {s}.{m}"))
    };
    let sched = get("runtime.g", "sched")?;
    let stack = get("runtime.g", "stack")?;
    let o = Offsets {
        stack_lo: stack + get("runtime.stack", "lo")?,
        stack_hi: stack + get("runtime.stack", "hi")?,
        m: get("runtime.g", "m")?,
        sched_sp: sched + get("runtime.gobuf", "sp")?,
        sched_pc: sched + get("runtime.gobuf", "pc")?,
        sched_bp: sched + get("runtime.gobuf", "bp")?,
        atomicstatus: get("runtime.g", "atomicstatus")?,
        goid: get("runtime.g", "goid")?,
        waitreason: get("runtime.g", "waitreason")?,
        startpc: get("runtime.g", "startpc")?,
        m_procid: get("runtime.m", "procid")?,
        m_curg: get("runtime.m", "curg")?,
        // the scheduler's statistics are extra: without them the goroutines are still read
        sched_time_to_run: get("runtime.schedt", "timeToRun").ok(),
        sched_mutex_wait: get("runtime.schedt", "totalMutexWaitTime").ok(),
    };
    if !o.sane() {
        return Err(format!(
            "DWARF gives an implausible runtime.g layout: {o:?}"
        ));
    }
    Ok(Some(o))
}

/// (struct, member, offset) for the members of the WANTED structs.
fn struct_members(dwarf: &gimli::Dwarf<Section<'_>>) -> gimli::Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    let mut found = 0;
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        // the struct being read, and its depth
        let mut current: Option<(String, isize)> = None;
        while let Some(entry) = entries.next_dfs()? {
            let depth = entry.depth();
            if current.as_ref().is_some_and(|(_, d)| depth <= *d) {
                current = None;
            }
            let name = || -> Option<String> {
                let attr = entry.attr_value(gimli::DW_AT_name)?;
                let s = dwarf.attr_string(&unit, attr).ok()?;
                Some(String::from_utf8_lossy(&s).into_owned())
            };
            match (entry.tag(), &current) {
                (gimli::DW_TAG_structure_type, None) => {
                    if let Some(n) = name().filter(|n| WANTED.contains(&n.as_str())) {
                        if !out.iter().any(|(s, _, _)| *s == n) {
                            found += 1;
                            current = Some((n, depth));
                        }
                    }
                }
                (gimli::DW_TAG_member, Some((st, d))) if depth == d + 1 => {
                    let off = match entry.attr_value(gimli::DW_AT_data_member_location) {
                        Some(gimli::AttributeValue::Udata(o)) => Some(o),
                        Some(gimli::AttributeValue::Data1(o)) => Some(u64::from(o)),
                        Some(gimli::AttributeValue::Data2(o)) => Some(u64::from(o)),
                        Some(gimli::AttributeValue::Data4(o)) => Some(u64::from(o)),
                        Some(gimli::AttributeValue::Data8(o)) => Some(o),
                        Some(gimli::AttributeValue::Sdata(o)) => u64::try_from(o).ok(),
                        _ => None,
                    };
                    if let (Some(n), Some(off)) = (name(), off) {
                        out.push((st.clone(), n, off));
                    }
                }
                _ => {}
            }
        }
        if found == WANTED.len() && current.is_none() {
            break;
        }
    }
    Ok(out)
}
