//! Function names of Go binaries from `.gopclntab`, the table the Go runtime itself uses
//! for tracebacks: it stays in binaries stripped of their symbol table (`-ldflags=-s
//! -w`), which blazesym cannot name. Part of symbolization, for the addresses blazesym
//! leaves unknown. Go 1.18 and later (the header layout of 1.18–1.24).

use object::{Object, ObjectSection};

/// A Go binary's functions: (entry address, name), sorted by address.
pub struct GoFuncs {
    funcs: Vec<(u64, String)>,
    /// The end of the last function.
    end: u64,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn c_str(b: &[u8], at: usize) -> Option<String> {
    let s = b.get(at..)?;
    let n = s.iter().position(|&c| c == 0)?;
    Some(String::from_utf8_lossy(&s[..n]).into_owned())
}

impl GoFuncs {
    /// Reads `.gopclntab`; None for a file that has none or of an unknown version.
    pub fn load(data: &[u8]) -> Option<GoFuncs> {
        let file = object::File::parse(data).ok()?;
        let tab = file.section_by_name(".gopclntab")?.data().ok()?;
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
        let mut funcs = Vec::with_capacity(nfunc);
        for i in 0..nfunc {
            let entry = u32_at(tab, functab + i * 8)?;
            let func = u32_at(tab, functab + i * 8 + 4)? as usize;
            let nameoff = u32_at(tab, functab + func + 4)? as usize;
            funcs.push((text + u64::from(entry), c_str(tab, names + nameoff)?));
        }
        // the table ends with the end of the last function
        let end = text + u64::from(u32_at(tab, functab + nfunc * 8)?);
        // a layout this reader does not know (a later Go) shows as unsorted entries or
        // empty names: better no names than wrong ones
        let sane = funcs.windows(2).all(|w| w[0].0 <= w[1].0)
            && funcs.last().is_some_and(|&(entry, _)| entry < end)
            && funcs.iter().all(|(_, name)| !name.is_empty());
        sane.then_some(GoFuncs { funcs, end })
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
