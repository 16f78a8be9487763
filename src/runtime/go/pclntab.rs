//! Function names of Go binaries from `.gopclntab`, the table the Go runtime itself uses
//! for tracebacks: it stays in binaries stripped of their symbol table (`-ldflags=-s
//! -w`), which blazesym cannot name. Part of symbolization, for the addresses blazesym
//! leaves unknown. Go 1.18 and later (the header layout of 1.18–1.24).

use object::{Object, ObjectSection, ReadRef};

/// A Go binary's functions: (entry address, name), sorted by address.
#[derive(Debug)]
pub struct GoFuncs {
    funcs: Vec<(u64, String)>,
    /// Each function's `_func` record, as an offset into the function table.
    records: Vec<usize>,
    /// The end of the last function.
    end: u64,
    /// The table itself, for the pc-value tables (`pcsp`).
    tab: Vec<u8>,
    pctab: usize,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The longest function name read: a name the table claims runs on for megabytes is
/// not a name.
const MAX_NAME: usize = 4096;

fn c_str(b: &[u8], at: usize) -> Option<String> {
    let s = b.get(at..)?;
    let s = &s[..s.len().min(MAX_NAME + 1)];
    let n = s.iter().position(|&c| c == 0)?;
    Some(String::from_utf8_lossy(&s[..n]).into_owned())
}

impl GoFuncs {
    /// Reads `.gopclntab`; None for a file that has none or of an unknown version.
    pub fn load<'d, R: ReadRef<'d>>(data: R) -> Option<GoFuncs> {
        let file = object::File::parse(data).ok()?;
        let (_, tab) = crate::target::files::section(&file, ".gopclntab").ok()??;
        let tab = &*tab;
        // pcHeader: magic, pad, pad, minLC, ptrSize, nfunc, nfiles, textStart,
        // funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset
        let magic = u32_at(tab, 0)?;
        if !matches!(magic, 0xffff_fff0 | 0xffff_fff1) || tab.get(7) != Some(&8) {
            return None;
        }
        let nfunc = usize::try_from(u64_at(tab, 8)?).ok()?;
        let mut text = u64_at(tab, 24)?;
        if text == 0 {
            // a position-independent binary: the runtime relocates it to .text
            text = file.section_by_name(".text")?.address();
        }
        let names = usize::try_from(u64_at(tab, 32)?).ok()?;
        let functab = usize::try_from(u64_at(tab, 64)?).ok()?;
        // the counts and offsets come from the file: the function table (8 bytes per
        // function, then the end) must lie inside the section before anything is sized by it
        let table_end = nfunc.checked_mul(8)?.checked_add(functab)?;
        u32_at(tab, table_end)?;
        let pctab = usize::try_from(u64_at(tab, 56)?).ok()?;
        let mut funcs = Vec::with_capacity(nfunc);
        let mut records = Vec::with_capacity(nfunc);
        for i in 0..nfunc {
            let at = functab + i * 8;
            let entry = u32_at(tab, at)?;
            let func = u32_at(tab, at + 4)? as usize;
            let nameoff = u32_at(tab, functab.checked_add(func)?.checked_add(4)?)? as usize;
            let name = c_str(tab, names.checked_add(nameoff)?)?;
            funcs.push((text.checked_add(u64::from(entry))?, name));
            records.push(functab.checked_add(func)?);
        }
        // the table ends with the end of the last function
        let end = text.checked_add(u64::from(u32_at(tab, table_end)?))?;
        // a layout this reader does not know (a later Go) shows as unsorted entries or
        // empty names: better no names than wrong ones
        let sane = funcs.windows(2).all(|w| w[0].0 <= w[1].0)
            && funcs.last().is_some_and(|&(entry, _)| entry < end)
            && funcs.iter().all(|(_, name)| !name.is_empty());
        sane.then(|| GoFuncs {
            funcs,
            records,
            end,
            tab: tab.to_vec(),
            pctab,
        })
    }

    /// How far the stack pointer at `vaddr` is below where it was at its function's
    /// entry (the `pcsp` table the runtime's own traceback uses): 0 before the frame
    /// is set up, else the frame's size; the return address is at sp + that.
    pub fn sp_delta(&self, vaddr: u64) -> Option<u64> {
        if vaddr >= self.end {
            return None;
        }
        let i = self
            .funcs
            .partition_point(|&(entry, _)| entry <= vaddr)
            .checked_sub(1)?;
        let entry = self.funcs[i].0;
        // _func: entryOff, nameOff, args, deferreturn, pcsp (uint32 each)
        let pcsp = u32_at(&self.tab, self.records[i].checked_add(16)?)? as usize;
        let mut p = gimli::EndianSlice::new(
            self.tab.get(self.pctab.checked_add(pcsp)?..)?,
            gimli::LittleEndian,
        );
        let (mut pc, mut value) = (entry, -1i64);
        // (value delta, pc delta) pairs, zig-zag and LEB128 coded, until a zero delta
        for first in std::iter::once(true)
            .chain(std::iter::repeat(false))
            .take(100_000)
        {
            let uv = gimli::leb128::read::unsigned(&mut p).ok()?;
            if uv == 0 && !first {
                return None;
            }
            let dv = if uv & 1 != 0 {
                !((uv >> 1) as i64)
            } else {
                (uv >> 1) as i64
            };
            value = value.checked_add(dv)?;
            pc = pc.checked_add(gimli::leb128::read::unsigned(&mut p).ok()?)?;
            if vaddr < pc {
                return u64::try_from(value).ok();
            }
        }
        None
    }

    /// The address range of the function named `name`.
    pub fn range_of(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.funcs.iter().position(|(_, n)| n == name)?;
        let end = self.funcs.get(i + 1).map_or(self.end, |f| f.0);
        Some((self.funcs[i].0, end))
    }

    /// The function holding the file address `vaddr`.
    pub fn name(&self, vaddr: u64) -> Option<&str> {
        if vaddr >= self.end {
            return None;
        }
        let i = self.funcs.partition_point(|&(entry, _)| entry <= vaddr);
        i.checked_sub(1).map(|i| self.funcs[i].1.as_str())
    }
}
