//! Snapshots of the target's off-CPU threads, part of collection: at the start of the
//! session (threads already blocked, which no scheduler event will describe) and at its
//! end (threads still blocked), every sleeping thread's syscall, arguments, complete user
//! stack and kernel stack, read by the sleepable task iterator of bpf/snapshot.bpf.c with
//! the profiler's own unwind tables. Without the target stopped: nothing is ptraced.

use std::collections::HashMap;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use crate::bpf::snapshot::{wp_snapshot, SnapshotSkel, SnapshotSkelBuilder};
use crate::model::Blocked;
use crate::session::TableMaps;

/// The task iterator, loaded beside the profiler and sharing its unwind tables.
pub struct Snapshots<'obj> {
    _skel: SnapshotSkel<'obj>,
    link: Link,
}

impl<'obj> Snapshots<'obj> {
    /// Loads the iterator for `pid`, reading the profiler's unwind tables.
    pub fn open(
        storage: &'obj mut MaybeUninit<OpenObject>,
        tables: &TableMaps,
        pid: u32,
    ) -> Result<Snapshots<'obj>> {
        let mut open = SnapshotSkelBuilder::default()
            .open(storage)
            .context("opening the thread snapshot iterator failed")?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .context("the snapshot object has no .rodata")?
            .target_tgid = pid;
        open.maps
            .unwind_rows
            .reuse_fd(tables.rows.as_fd())
            .context("sharing the unwind rows with the snapshot iterator failed")?;
        open.maps
            .unwind_procs
            .reuse_fd(tables.procs.as_fd())
            .context("sharing the unwind mappings with the snapshot iterator failed")?;
        let skel = open
            .load()
            .context("this kernel refused the sleepable task iterator (iter.s/task)")?;
        let link = skel
            .progs
            .off_cpu_threads
            .attach()
            .context("attaching the task iterator failed")?;
        Ok(Snapshots { _skel: skel, link })
    }

    /// Every thread of the target that is off-CPU now, by tid.
    pub fn take(&self) -> Result<HashMap<u32, Blocked>> {
        let mut bytes = Vec::new();
        libbpf_rs::Iter::new(&self.link)
            .context("starting the task iterator failed")?
            .read_to_end(&mut bytes)
            .context("reading the task iterator failed")?;
        let size = std::mem::size_of::<wp_snapshot>();
        Ok(bytes
            .chunks_exact(size)
            .filter_map(|chunk| {
                let mut s = wp_snapshot::default();
                plain::copy_from_bytes(&mut s, chunk).ok()?;
                Some((s.tid, blocked_of(&s)))
            })
            .collect())
    }
}

fn blocked_of(s: &wp_snapshot) -> Blocked {
    let frames = |ips: &[u64], n: u32| ips[..(n as usize).min(ips.len())].to_vec();
    Blocked {
        tid: s.tid,
        comm: crate::collect::comm_of(&s.comm),
        state: s.state,
        syscall: u32::try_from(s.syscall).ok(),
        args: s.args,
        ustack: frames(&s.ustack.ips, s.ulen),
        kstack: frames(&s.kstack.ips, s.klen),
        off_cpu_ns: (s.last_ran != 0 && s.now >= s.last_ran).then(|| s.now - s.last_ran),
        ..Blocked::default()
    }
}

/// A key for a snapshot's stack among the profile's stacks: a hash of its frames, kept
/// out of the range of the kernel's markers.
pub fn stack_id(ips: &[u64]) -> u64 {
    let h = ips.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &ip| {
        (h ^ ip).wrapping_mul(0x100_0000_01b3)
    });
    h.max(u64::from(crate::bpf::wp_stack_marker::WP_STACK_ID_MIN.0))
}
