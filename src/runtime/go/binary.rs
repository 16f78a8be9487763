//! Recognising a Go program and learning its runtime's layout, from the binary alone:
//! the Go version from `.go.buildinfo` (kept in stripped binaries), the `g` and `m`
//! struct offsets from DWARF when the binary has it (else the table in `offsets`), the
//! goroutine list `runtime.allgs` from the symbol table (else from the code of
//! `runtime.allgadd`, found through `.gopclntab`), and the wait reasons' names from
//! `runtime.waitReasonStrings` (else the table). Everything read is the target's: each
//! count and offset is checked before it is used.

use std::borrow::Cow;

use object::{Object, ObjectSection, ObjectSymbol, ReadRef};

use super::offsets::{self, Offsets};
use super::pclntab::GoFuncs;
use crate::target::files::section;

/// What the binary says about its Go runtime.
#[derive(Clone, Debug)]
pub struct GoBinary {
    /// `go1.21.13`, as the toolchain wrote it (printable).
    pub version: String,
    /// How to read its goroutines, or why they cannot be read.
    pub layout: Result<Layout, String>,
    /// Its function table, for the frame sizes of goroutines' first frames.
    pub funcs: Option<std::sync::Arc<GoFuncs>>,
}

/// Where a Go program keeps its goroutines and how they are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub offsets: Offsets,
    /// "DWARF" or "waitprof's table for Go 1.NN".
    pub offsets_from: String,
    /// The file address of `runtime.allgs` (a `[]*g`).
    pub allgs: u64,
    /// "the symbol table" or "the code of runtime.allgadd".
    pub allgs_from: &'static str,
    /// Wait reason names, by the runtime's `waitReason` number.
    pub wait_reasons: Vec<String>,
    pub wait_reasons_from: String,
    /// The file address of `runtime.sched`, from the symbol table (a stripped binary
    /// has none: its scheduler statistics are then not read).
    pub sched: Option<u64>,
    /// The first address of the binary's text, for the load bias of a position-independent
    /// executable (0 for a fixed-address one).
    pub pie: bool,
}

/// The longest version string believed.
const MAX_VERSION: usize = 64;

/// The Go version in `.go.buildinfo`: Some(Ok) for a Go binary, Some(Err) for a Go
/// binary whose version cannot be read, None for anything else.
pub fn version<'d, R: ReadRef<'d>>(file: &object::File<'d, R>) -> Option<Result<String, String>> {
    let data = match section(file, ".go.buildinfo") {
        Ok(Some((_, d))) => d,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    // "\xff Go buildinf:", the pointer size, flags; from Go 1.18 the strings follow inline
    if data.get(..14) != Some(b"\xff Go buildinf:".as_slice()) {
        return None;
    }
    if data.get(15).is_none_or(|f| f & 2 == 0) {
        return Some(Err(
            "built by Go before 1.18 (its build info points into the data)".to_string(),
        ));
    }
    let mut r = gimli::EndianSlice::new(data.get(32..).unwrap_or_default(), gimli::LittleEndian);
    let len = gimli::leb128::read::unsigned(&mut r).ok()? as usize;
    let bytes = r.slice().get(..len).filter(|_| len <= MAX_VERSION)?;
    Some(Ok(crate::text::printable_bytes(bytes)))
}

/// `go1.21.13` -> 21.
pub fn minor_version(version: &str) -> Option<u32> {
    version
        .strip_prefix("go1.")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl GoBinary {
    /// Reads a Go binary; None if it is not one.
    pub fn read<'d, R: ReadRef<'d>>(data: R) -> Option<GoBinary> {
        let file = object::File::parse(data).ok()?;
        let version = match version(&file)? {
            Ok(v) => v,
            Err(why) => {
                return Some(GoBinary {
                    version: "unknown".to_string(),
                    layout: Err(why),
                    funcs: None,
                })
            }
        };
        let funcs = GoFuncs::load(data).map(std::sync::Arc::new);
        let layout = layout(&file, &version, funcs.as_deref());
        Some(GoBinary {
            version,
            layout,
            funcs,
        })
    }
}

fn layout<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    version: &str,
    funcs: Option<&GoFuncs>,
) -> Result<Layout, String> {
    if file.architecture() != object::Architecture::X86_64 {
        return Err(format!(
            "goroutines are read on x86-64 only (this is {:?})",
            file.architecture()
        ));
    }
    let minor = minor_version(version);
    let (offsets, offsets_from) = match offsets::from_dwarf(file)? {
        Some(o) => (o, "DWARF".to_string()),
        None => match minor.and_then(offsets::table) {
            Some(o) => (
                o,
                format!("waitprof's table for Go 1.{}", minor.unwrap_or(0)),
            ),
            None => {
                return Err(format!(
                    "{version}: without DWARF (built with -w) waitprof knows the runtime's \
                     layout of Go {} only",
                    offsets::TABLE_VERSIONS
                ))
            }
        },
    };
    let symbol = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
    };
    let (allgs, allgs_from) = match symbol("runtime.allgs") {
        Some((a, _)) => (a, "the symbol table"),
        None => (
            allgs_from_code(file, funcs).ok_or_else(|| {
                "no symbol table, and runtime.allgadd's code does not show where runtime.allgs is"
                    .to_string()
            })?,
            "the code of runtime.allgadd",
        ),
    };
    let from_binary = symbol("runtime.waitReasonStrings")
        .and_then(|(addr, size)| wait_reasons_in(file, addr, size));
    let (wait_reasons, wait_reasons_from) =
        match (from_binary, minor.and_then(offsets::wait_reasons)) {
            (Some(r), _) => (r, "runtime.waitReasonStrings".to_string()),
            (None, Some(r)) => (
                r.iter().map(|s| s.to_string()).collect(),
                format!("waitprof's table for Go 1.{}", minor.unwrap_or(0)),
            ),
            (None, None) => (Vec::new(), "nowhere: shown by number".to_string()),
        };
    Ok(Layout {
        offsets,
        offsets_from,
        allgs,
        allgs_from,
        wait_reasons,
        wait_reasons_from,
        sched: symbol("runtime.sched").map(|(a, _)| a),
        pie: file.kind() == object::ObjectKind::Dynamic,
    })
}

/// `len` bytes of the file at address `addr` (not in bss).
fn bytes_at<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    addr: u64,
    len: u64,
) -> Option<Cow<'d, [u8]>> {
    file.sections()
        .filter(|s| s.kind() != object::SectionKind::UninitializedData)
        .find(|s| addr >= s.address() && addr < s.address().saturating_add(s.size()))
        .and_then(|s| s.data_range(addr, len).ok().flatten())
        .map(Cow::Borrowed)
}

/// The most wait reasons believed (Go 1.23 has 38).
const MAX_WAIT_REASONS: u64 = 256;
/// The longest wait reason name believed.
const MAX_REASON_LEN: u64 = 64;

/// `runtime.waitReasonStrings` (`[N]string`) as the binary holds it; None if any entry
/// is out of place (a position-independent binary keeps its pointers in relocations).
fn wait_reasons_in<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    addr: u64,
    size: u64,
) -> Option<Vec<String>> {
    if size == 0 || !size.is_multiple_of(16) || size / 16 > MAX_WAIT_REASONS {
        return None;
    }
    let table = bytes_at(file, addr, size)?;
    table
        .chunks_exact(16)
        .map(|e| {
            let ptr = u64::from_le_bytes(e[..8].try_into().ok()?);
            let len = u64::from_le_bytes(e[8..].try_into().ok()?);
            if len == 0 {
                return Some(String::new());
            }
            if len > MAX_REASON_LEN {
                return None;
            }
            Some(crate::text::printable_bytes(&bytes_at(file, ptr, len)?))
        })
        .collect()
}

/// The longest function searched for `runtime.allgs`.
const MAX_ALLGADD: u64 = 4096;

/// Where `runtime.allgadd` appends to `runtime.allgs`: the one data address whose three
/// words (the slice's pointer, length and capacity) the function addresses RIP-relative.
/// Checked against the symbol table for every Go version the tests build.
pub fn allgs_from_code<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    funcs: Option<&GoFuncs>,
) -> Option<u64> {
    use iced_x86::{Decoder, DecoderOptions};
    let (start, end) = funcs?.range_of("runtime.allgadd")?;
    let code = bytes_at(file, start, end.checked_sub(start)?.min(MAX_ALLGADD))?;
    let mut decoder = Decoder::with_ip(64, &code, start, DecoderOptions::NONE);
    let mut seen = std::collections::BTreeSet::new();
    for insn in &mut decoder {
        if insn.is_ip_rel_memory_operand() {
            seen.insert(insn.ip_rel_memory_address());
        }
    }
    let found: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|a| seen.contains(&(a + 8)) && seen.contains(&(a + 16)))
        .collect();
    // exactly one: anything else is a compiler this reader does not know
    match found[..] {
        [a] => Some(a),
        _ => None,
    }
}
