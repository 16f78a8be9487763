//! What running goroutines run. A running goroutine's registers are live on a CPU, so a
//! sweep sees only its start function; the on-CPU samples of the program's threads
//! (`oncpu_sample` in bpf/waitprof.bpf.c, 99 a second on each CPU) say where those
//! threads were. A sample whose stack roots in `runtime.goexit` caught a thread running a
//! goroutine (the scheduler and the GC workers' system stacks root elsewhere): the
//! sweeps' running time is split over those stacks in proportion to their samples. Both
//! are sampled, and the summary says so.

use std::collections::HashMap;

use crate::model::{GState, GoroutineRow, GoroutineView, OnCpu};

/// Stack entries below this are markers (why a walk stopped), not addresses.
const FIRST_ADDRESS: u64 = 0x1_0000;

/// Gives the view's running time the stacks the on-CPU samples caught goroutines at.
/// `stacks` are leaf first; `sampling` says why there are no samples, if there are none.
pub fn attribute(
    view: &mut GoroutineView,
    oncpu: &[OnCpu],
    stacks: &HashMap<u64, Vec<u64>>,
    sampling: Result<(), String>,
) {
    let running_ns: u64 = view
        .rows
        .iter()
        .filter(|r| r.state == GState::Running)
        .map(|r| r.ns)
        .sum();
    if running_ns == 0 {
        return;
    }
    if let Err(why) = sampling {
        view.running_from = Some(Err(why));
        return;
    }
    let Some((lo, hi)) = view.goexit else {
        view.running_from = Some(Err("runtime.goexit is not in the function table".into()));
        return;
    };
    // stack -> (samples, threads)
    let mut by: HashMap<u64, (u64, Vec<u32>)> = HashMap::new();
    for s in oncpu {
        let Some(id) = s.ustack.id() else { continue };
        let Some(ips) = stacks.get(&id) else { continue };
        let root = ips.iter().rev().find(|&&ip| ip >= FIRST_ADDRESS);
        if !root.is_some_and(|&ip| ip >= lo && ip < hi) {
            continue;
        }
        let e = by.entry(id).or_default();
        e.0 += s.samples;
        if !e.1.contains(&s.tid) {
            e.1.push(s.tid);
        }
    }
    let total: u64 = by.values().map(|v| v.0).sum();
    if total == 0 {
        view.running_from = Some(Err(
            "no on-CPU sample caught a thread running a goroutine".into()
        ));
        return;
    }
    view.rows.retain(|r| r.state != GState::Running);
    let mut parts: Vec<(u64, u64, usize)> = by
        .into_iter()
        .map(|(id, (n, tids))| (id, n, tids.len()))
        .collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut given = 0u64;
    let last = parts.len() - 1;
    for (i, (id, n, threads)) in parts.into_iter().enumerate() {
        let ns = if i == last {
            running_ns - given
        } else {
            (u128::from(running_ns) * u128::from(n) / u128::from(total)) as u64
        };
        given += ns;
        view.rows.push(GoroutineRow {
            state: GState::Running,
            stack: Some(id),
            raced: false,
            ns,
            samples: n,
            // the threads it was caught on: goroutines move between them
            goroutines: threads as u64,
        });
    }
    view.rows
        .sort_by(|a, b| b.ns.cmp(&a.ns).then(a.state.cmp(&b.state)));
    view.running_from = Some(Ok(total));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StackRef;

    fn view() -> GoroutineView {
        GoroutineView {
            goexit: Some((0x40_0000, 0x40_0010)),
            rows: vec![
                GoroutineRow {
                    state: GState::Running,
                    stack: Some(1 << 63 | 1),
                    raced: false,
                    ns: 900,
                    samples: 9,
                    goroutines: 2,
                },
                GoroutineRow {
                    state: GState::Waiting("sleep".into()),
                    stack: Some(1 << 63 | 2),
                    raced: false,
                    ns: 500,
                    samples: 5,
                    goroutines: 1,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn running_time_goes_to_goroutine_stacks_by_their_samples() {
        let stacks = HashMap::from([
            (10, vec![0x50_0000, 0x40_0001]),    // a goroutine, rooted in goexit
            (11, vec![0x50_0100, 0x40_0001, 7]), // another, its walk ended by a marker
            (12, vec![0x60_0000, 0x70_0000]),    // the scheduler on g0
        ]);
        let oncpu = [
            OnCpu {
                tid: 1,
                ustack: StackRef::Id(10),
                samples: 2,
            },
            OnCpu {
                tid: 2,
                ustack: StackRef::Id(10),
                samples: 4,
            },
            OnCpu {
                tid: 1,
                ustack: StackRef::Id(11),
                samples: 3,
            },
            OnCpu {
                tid: 1,
                ustack: StackRef::Id(12),
                samples: 50,
            },
        ];
        let mut v = view();
        attribute(&mut v, &oncpu, &stacks, Ok(()));
        assert_eq!(v.running_from, Some(Ok(9)));
        let running: Vec<(Option<u64>, u64, u64)> = v
            .rows
            .iter()
            .filter(|r| r.state == GState::Running)
            .map(|r| (r.stack, r.ns, r.goroutines))
            .collect();
        assert_eq!(running, vec![(Some(10), 600, 2), (Some(11), 300, 1)]);
        // the waits are untouched
        assert!(v
            .rows
            .iter()
            .any(|r| r.ns == 500 && r.stack == Some(1 << 63 | 2)));
    }

    #[test]
    fn without_samples_the_start_functions_stay_and_say_why() {
        let mut v = view();
        attribute(
            &mut v,
            &[],
            &HashMap::new(),
            Err("perf_event_open: EACCES".into()),
        );
        assert_eq!(v.running_from, Some(Err("perf_event_open: EACCES".into())));
        assert!(v
            .rows
            .iter()
            .any(|r| r.state == GState::Running && r.ns == 900));
        let mut v = view();
        attribute(&mut v, &[], &HashMap::new(), Ok(()));
        assert!(matches!(v.running_from, Some(Err(_))));
        assert_eq!(v.rows.len(), 2);
    }
}
