//! Perfetto (`--timeline`): the session as a trace for ui.perfetto.dev, with Perfetto's
//! own protos (the `perfetto-trace-proto` crate). Every target thread is a track with its
//! slices over the session: `running`, `blocked: SYSCALL (OBJECT)` and `runnable (woken
//! by ...)` or `runnable (preempted)`, rebuilt from every switch and wakeup the kernel
//! sent. A wakeup by a thread is a flow: an instant `wakes TID` on the waker's track
//! (another process's thread gets a track of its own), its arrow ending at the wakee's
//! runnable slice. What the kernel could not send is counted on the process track.
//! A Go program's goroutines are tracks too, under one `goroutines (sampled ...)` track:
//! each goroutine's states (the runtime's wait reason, runnable, running, in a syscall)
//! as its sweeps saw them, each slice with its function and stack: sampled, so a slice's
//! ends are as wide as the sweep interval, and a state shorter than one may be missed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use perfetto_trace_proto as pb;

use crate::model::{Collected, GState, Kind, Timeline, TimelineWhat, WakerCtx};
use crate::profile::{FrameKind, Profile};
use crate::symbolize::Symbols;
use crate::text::printable;

const SEQUENCE: u32 = 1;
const PROCESS_TRACK: u64 = 1;
/// BUILTIN_CLOCK_MONOTONIC: bpf_ktime_get_ns's clock.
const MONOTONIC: u32 = 3;

fn thread_track(tgid: u32, tid: u32) -> u64 {
    (u64::from(tgid) << 32 | u64::from(tid)) + 2
}

/// The goroutines' parent track, and each goroutine's (above any thread's: a tgid is
/// below 2^22).
const GOROUTINES_TRACK: u64 = 1 << 62;

fn goroutine_track(goid: u64) -> u64 {
    GOROUTINES_TRACK + 1 + (goid & (GOROUTINES_TRACK - 1))
}

/// What a thread is doing between two events.
#[derive(Clone, Debug)]
enum State {
    /// Nothing seen yet: off the CPU since before the session, or running.
    Unknown,
    Running {
        since: u64,
    },
    Blocked {
        since: u64,
        name: String,
        object: Option<String>,
    },
    /// `flow`: the wakeup's arrow, which ends at this slice.
    Runnable {
        since: u64,
        name: String,
        flow: Option<u64>,
    },
}

/// One slice to draw: where, when, what, and the wakeup arrow that ends at it.
struct Slice {
    tid: u32,
    from: u64,
    to: u64,
    name: String,
    annotations: Vec<(&'static str, String)>,
    flow_end: Option<u64>,
}

/// A slice of one thread's time, or an instant, before it becomes packets.
struct Event {
    ts: u64,
    track: u64,
    kind: pb::track_event::Type,
    name: Option<String>,
    flow: Option<u64>,
    terminating_flow: Option<u64>,
    annotations: Vec<(&'static str, String)>,
}

/// The trace as it is written: each packet encoded as it is made (a Trace is its packets
/// one after another, field 1 repeated), none held. A thread's slices go on a packet
/// sequence of their own, in their order; the track descriptors and the instants (flows'
/// starts, made in time order) on sequence 1. Perfetto orders the sequences' packets by
/// time when it reads them, so nothing is sorted here.
struct Writer {
    out: Vec<u8>,
    sequences: HashMap<u64, u32>,
    /// Each sequence's event names, interned: a name goes into the trace once per
    /// sequence, then by its id.
    names: HashMap<u32, HashMap<String, u64>>,
}

impl Writer {
    /// A slice on `track` over `from..to` (an end before its begin is moved to it), with
    /// the flow whose arrow ends at it.
    fn slice(
        &mut self,
        track: u64,
        (from, to): (u64, u64),
        name: String,
        flow_end: Option<u64>,
        annotations: Vec<(&'static str, String)>,
    ) {
        self.push(Event {
            ts: from,
            track,
            kind: pb::track_event::Type::SliceBegin,
            name: Some(name),
            flow: None,
            terminating_flow: flow_end,
            annotations,
        });
        self.push(Event {
            ts: to.max(from),
            track,
            kind: pb::track_event::Type::SliceEnd,
            name: None,
            flow: None,
            terminating_flow: None,
            annotations: Vec::new(),
        });
    }

    fn packet(&mut self, p: &pb::TracePacket) {
        prost::encoding::message::encode(TRACE_PACKET_FIELD, p, &mut self.out);
    }

    fn push(&mut self, mut e: Event) {
        let sequence = match e.kind {
            pb::track_event::Type::Instant => SEQUENCE,
            _ => {
                let next = self.sequences.len() as u32 + SEQUENCE + 1;
                *self.sequences.entry(e.track).or_insert(next)
            }
        };
        use pb::trace_packet::SequenceFlags as F;
        // sequence 1 began with the process's descriptor, which cleared its state
        let fresh = sequence != SEQUENCE && !self.names.contains_key(&sequence);
        let names = self.names.entry(sequence).or_default();
        let mut interned = None;
        let iid = e.name.take().map(|name| match names.get(&name) {
            Some(&iid) => iid,
            None => {
                let iid = names.len() as u64 + 1;
                names.insert(name.clone(), iid);
                interned = Some(pb::InternedData {
                    event_names: vec![pb::EventName {
                        iid: Some(iid),
                        name: Some(name),
                    }],
                    ..Default::default()
                });
                iid
            }
        });
        let mut p = packet(e, sequence);
        if let (Some(iid), Some(pb::trace_packet::Data::TrackEvent(t))) = (iid, p.data.as_mut()) {
            t.name_field = Some(pb::track_event::NameField::NameIid(iid));
        }
        p.interned_data = interned;
        let mut flags = F::SeqNeedsIncrementalState as u32;
        if fresh {
            flags |= F::SeqIncrementalStateCleared as u32;
        }
        p.sequence_flags = Some(flags);
        self.packet(&p);
    }
}

/// The trace, encoded; None without a timeline.
pub fn trace(collected: &Collected, symbols: &Symbols, profile: &Profile) -> Option<Vec<u8>> {
    let timeline = collected.timeline.as_ref()?;
    let pid = collected.pid;
    let thread_names: HashMap<u32, &str> = collected
        .threads
        .iter()
        .map(|t| (t.tid, t.comm.as_str()))
        .collect();
    let ends: HashMap<u32, u64> = collected
        .threads
        .iter()
        .filter(|t| t.exited)
        .map(|t| (t.tid, t.end_ns))
        .collect();
    // a thread's first state began when the session did, or when it was created
    let starts: HashMap<u32, u64> = collected
        .threads
        .iter()
        .map(|t| (t.tid, t.start_ns.max(collected.start_ns)))
        .collect();
    let begin = |tid: u32| starts.get(&tid).copied().unwrap_or(collected.start_ns);
    let mut states: BTreeMap<u32, State> = BTreeMap::new();
    let mut next_flow = 1u64;
    // the tracks first: every thread of the target seen, and every thread (of another
    // process, or one of its own it never saw run) that woke one, named once
    let mut others: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut comms: HashMap<(u32, u32), String> = HashMap::new();
    for e in &timeline.events {
        if let TimelineWhat::Wake {
            ctx,
            waker_tid,
            waker_tgid,
        } = e.what
        {
            let by_task = timeline.wakers && waker_tid != 0 && ctx != WakerCtx::Interrupt;
            if by_task && (waker_tgid != pid || !thread_names.contains_key(&waker_tid)) {
                others.insert((waker_tgid, waker_tid));
            }
        }
    }
    for &(tgid, tid) in others.iter().filter(|(tgid, _)| *tgid != pid) {
        comms.insert((tgid, tid), comm_of(tgid, tid));
    }
    let mut w = Writer {
        out: Vec::new(),
        sequences: HashMap::new(),
        names: HashMap::new(),
    };
    let mut first = descriptor(
        PROCESS_TRACK,
        None,
        Some(pb::ProcessDescriptor {
            pid: Some(pid as i32),
            process_name: Some(printable(&collected.comm).into_owned()),
            ..Default::default()
        }),
        None,
    );
    first.sequence_flags = Some(pb::trace_packet::SequenceFlags::SeqIncrementalStateCleared as u32);
    w.packet(&first);
    let mut tids: Vec<u32> = timeline.events.iter().map(|e| e.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    for tid in tids {
        let name = thread_names
            .get(&tid)
            .map_or_else(|| format!("tid {tid}"), |c| printable(c).into_owned());
        w.packet(&thread_descriptor(pid, tid, name));
    }
    for &(tgid, tid) in &others {
        let name = match comms.get(&(tgid, tid)) {
            Some(comm) => format!("{comm} (waker, pid {tgid})"),
            None => format!("tid {tid}"),
        };
        w.packet(&thread_descriptor(tgid, tid, name));
    }
    let goroutines = collected
        .goroutines
        .as_ref()
        .and_then(|g| g.spells.as_ref());
    if let Some(spells) = goroutines {
        goroutine_descriptors(&mut w, collected, profile, spells.dropped);
    }
    // what the timeline could not see, on the process's track at the start
    w.push(Event {
        ts: collected.start_ns,
        track: PROCESS_TRACK,
        kind: pb::track_event::Type::Instant,
        name: Some("waitprof: session start".into()),
        flow: None,
        terminating_flow: None,
        annotations: losses(timeline),
    });
    let events = &mut w;
    let slice = |events: &mut Writer, s: Slice| {
        events.slice(
            thread_track(pid, s.tid),
            (s.from, s.to),
            s.name,
            s.flow_end,
            s.annotations,
        );
    };
    let plain = |tid, from, to, name: &str| Slice {
        tid,
        from,
        to,
        name: name.to_string(),
        annotations: Vec::new(),
        flow_end: None,
    };
    for e in &timeline.events {
        let state = states.entry(e.tid).or_insert(State::Unknown);
        let old = std::mem::replace(state, State::Unknown);
        match e.what {
            TimelineWhat::Off {
                kind,
                syscall,
                object,
                preempted,
            } => {
                let since = match old {
                    State::Running { since } => since,
                    // the first event: it ran since the session began (or it was created)
                    State::Unknown => begin(e.tid),
                    // a switch-in was not seen: what it did since is unknown
                    other => {
                        close(events, &slice, e.tid, other, e.ts, &[]);
                        e.ts
                    }
                };
                slice(events, plain(e.tid, since, e.ts, "running"));
                *state = if preempted {
                    State::Runnable {
                        since: e.ts,
                        name: "runnable (preempted)".into(),
                        flow: None,
                    }
                } else {
                    let call =
                        syscall.map_or_else(|| "no syscall".to_string(), crate::syscalls::name);
                    let object = (object != 0 && kind != Kind::Other)
                        .then(|| crate::analyze::object_label(kind, object, collected, symbols));
                    State::Blocked {
                        since: e.ts,
                        name: match &object {
                            Some(o) => format!("blocked: {call} ({o})"),
                            None => format!("blocked: {call}"),
                        },
                        object,
                    }
                };
            }
            TimelineWhat::Wake {
                ctx,
                waker_tid,
                waker_tgid,
            } => {
                let (since, blocked) = match old {
                    State::Blocked {
                        since,
                        name,
                        object,
                    } => (since, Some((name, object))),
                    State::Unknown => (begin(e.tid), None),
                    // woken while running or already runnable: nothing changes
                    other => {
                        *state = other;
                        continue;
                    }
                };
                // without wakers the kernel knows only the task that ran, which in an
                // interrupt is not the waker: no arrow then
                let by_task = timeline.wakers && waker_tid != 0 && ctx != WakerCtx::Interrupt;
                let waker = if !timeline.wakers {
                    "unknown (--no-wakers)".to_string()
                } else if !by_task {
                    "an interrupt".to_string()
                } else if waker_tgid == pid {
                    format!(
                        "thread {}-{waker_tid}",
                        printable(thread_names.get(&waker_tid).copied().unwrap_or("?"))
                    )
                } else {
                    let comm = comms
                        .get(&(waker_tgid, waker_tid))
                        .map_or("?", String::as_str);
                    format!("{comm} (pid {waker_tgid})")
                };
                let (name, object) = blocked
                    .unwrap_or_else(|| ("blocked (since before the session)".to_string(), None));
                let mut annotations = vec![("woken by", waker.clone())];
                if let Some(o) = object {
                    annotations.push(("object", o));
                }
                slice(
                    events,
                    Slice {
                        annotations,
                        ..plain(e.tid, since, e.ts, &name)
                    },
                );
                let flow = by_task.then(|| {
                    next_flow += 1;
                    next_flow
                });
                if let Some(id) = flow {
                    events.push(Event {
                        ts: e.ts,
                        track: thread_track(waker_tgid, waker_tid),
                        kind: pb::track_event::Type::Instant,
                        name: Some(format!("wakes {}", e.tid)),
                        flow: Some(id),
                        terminating_flow: None,
                        annotations: Vec::new(),
                    });
                }
                // the flow's arrow ends at the runnable slice: its begin carries the id
                *state = State::Runnable {
                    since: e.ts,
                    name: format!("runnable (woken by {waker})"),
                    flow,
                };
            }
            TimelineWhat::On => {
                match old {
                    State::Blocked {
                        since,
                        name,
                        object,
                    } => {
                        // no wakeup reached the hooks
                        let mut annotations = vec![("woken by", "unseen".to_string())];
                        annotations.extend(object.map(|o| ("object", o)));
                        slice(
                            events,
                            Slice {
                                annotations,
                                ..plain(e.tid, since, e.ts, &name)
                            },
                        )
                    }
                    State::Unknown => {
                        let from = begin(e.tid);
                        let name = if from > collected.start_ns {
                            "runnable (a new thread)"
                        } else {
                            "off-CPU (since before the session)"
                        };
                        slice(events, plain(e.tid, from, e.ts, name))
                    }
                    other => close(events, &slice, e.tid, other, e.ts, &[]),
                }
                *state = State::Running { since: e.ts };
            }
        }
    }
    // what each thread was doing at the end (or when it exited)
    for (tid, state) in std::mem::take(&mut states) {
        let (end, until) = match ends.get(&tid) {
            Some(&exit) => (exit, ("until", "the thread exited".to_string())),
            None => (collected.end_ns, ("until", "the session ended".to_string())),
        };
        let extra: &[(&'static str, String)] = match state {
            State::Running { .. } => &[],
            _ => std::slice::from_ref(&until),
        };
        close(events, &slice, tid, state, end, extra);
    }
    if goroutines.is_some() {
        goroutine_slices(&mut w, profile);
    }
    Some(w.out)
}

/// A goroutine's function: the frame its stacks begin with above `runtime.goexit`, past
/// the wrapper a `go` statement with arguments makes (`main.serve.gowrap1`, Go 1.21 on;
/// before, a `main.serve.func1` cannot be told from the program's own closure).
fn goroutine_function(profile: &Profile, stack: crate::profile::StackId) -> Option<&str> {
    let mut frames = profile.stack(stack);
    let first = frames.next()?;
    if &*first.name != "runtime.goexit" {
        return None;
    }
    let is_wrapper = |name: &str| {
        name.rsplit_once(".gowrap")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    frames
        .find(|f| f.kind != FrameKind::User || !is_wrapper(&f.name))
        .filter(|f| f.kind == FrameKind::User)
        .map(|f| &*f.name)
}

/// The goroutines' tracks, under one parent: `goroutine 17: main.worker`.
fn goroutine_descriptors(w: &mut Writer, collected: &Collected, profile: &Profile, dropped: u64) {
    let apart = collected
        .goroutines
        .as_ref()
        .map_or(0, |g| g.period_max.as_millis());
    let mut parent = descriptor(GOROUTINES_TRACK, Some(PROCESS_TRACK), None, None);
    if let Some(pb::trace_packet::Data::TrackDescriptor(d)) = parent.data.as_mut() {
        let mut name = format!(
            "goroutines (sampled: sweeps at most {apart} ms apart; a slice's ends are that wide)"
        );
        if dropped > 0 {
            name.push_str(&format!("; {dropped} spells beyond the most kept"));
        }
        d.static_or_dynamic_name = Some(pb::track_descriptor::StaticOrDynamicName::Name(name));
    }
    w.packet(&parent);
    let mut names: BTreeMap<u64, Option<&str>> = BTreeMap::new();
    for spell in &profile.goroutine_spells {
        let name = names.entry(spell.goid).or_default();
        if name.is_none() {
            *name = goroutine_function(profile, spell.stack);
        }
    }
    for (goid, function) in names {
        let name = match function {
            Some(f) => format!("goroutine {goid}: {}", printable(f)),
            None => format!("goroutine {goid}"),
        };
        let mut d = descriptor(goroutine_track(goid), Some(GOROUTINES_TRACK), None, None);
        if let Some(pb::trace_packet::Data::TrackDescriptor(t)) = d.data.as_mut() {
            t.static_or_dynamic_name = Some(pb::track_descriptor::StaticOrDynamicName::Name(name));
        }
        w.packet(&d);
    }
}

/// A goroutine state's slice name: the runtime's wait reason, or what it did instead.
fn goroutine_state(state: &GState) -> String {
    match state {
        GState::Waiting(reason) => printable(reason).into_owned(),
        GState::Runnable => "runnable (waiting for a P)".into(),
        GState::Running => "running".into(),
        GState::Syscall => "in a syscall".into(),
    }
}

/// Each goroutine's spells as slices, with the innermost function outside the runtime
/// (`in`) and the whole stack, leaf first.
fn goroutine_slices(w: &mut Writer, profile: &Profile) {
    // a goroutine's spells in time order, on its track's sequence
    let mut order: Vec<&crate::profile::GoroutineSpell> = profile.goroutine_spells.iter().collect();
    order.sort_by_key(|s| (s.goid, s.from_ns));
    for spell in order {
        let frames: Vec<&crate::profile::Frame> = profile.stack(spell.stack).collect();
        let mut annotations = Vec::new();
        if let Some(f) = frames.iter().rev().find(|f| {
            // the runtime's own, and the functions it links into other packages
            // (`sync.runtime_SemacquireMutex`, `internal/poll.runtime_pollWait`)
            f.kind == FrameKind::User
                && !f.name.starts_with("runtime.")
                && !f.name.contains(".runtime_")
        }) {
            annotations.push(("in", printable(&f.name).into_owned()));
        }
        let stack: Vec<String> = frames
            .iter()
            .rev()
            .map(|f| printable(&f.name).into_owned())
            .collect();
        annotations.push(("stack", stack.join("\n")));
        w.slice(
            goroutine_track(spell.goid),
            (spell.from_ns, spell.to_ns),
            goroutine_state(&spell.state),
            None,
            annotations,
        );
    }
}

/// `Trace.packet`'s field number in perfetto_trace.proto.
const TRACE_PACKET_FIELD: u32 = 1;

/// The slices a thread's last state makes, up to `end`.
fn close(
    events: &mut Writer,
    slice: &dyn Fn(&mut Writer, Slice),
    tid: u32,
    state: State,
    end: u64,
    extra: &[(&'static str, String)],
) {
    let mut annotations = extra.to_vec();
    let (from, name, flow_end) = match state {
        State::Running { since } => (since, "running".to_string(), None),
        State::Blocked {
            since,
            name,
            object,
        } => {
            annotations.extend(object.map(|o| ("object", o)));
            (since, name, None)
        }
        State::Runnable { since, name, flow } => (since, name, flow),
        State::Unknown => return,
    };
    slice(
        events,
        Slice {
            tid,
            from,
            to: end,
            name,
            annotations,
            flow_end,
        },
    );
}

fn losses(t: &Timeline) -> Vec<(&'static str, String)> {
    vec![
        ("events", t.events.len().to_string()),
        (
            "dropped (kernel ring buffer full)",
            t.dropped_in_kernel.to_string(),
        ),
        (
            "dropped (beyond the events kept)",
            t.dropped_beyond_limit.to_string(),
        ),
        (
            "wakers",
            if t.wakers {
                "recorded"
            } else {
                "off (--no-wakers): the running task only"
            }
            .into(),
        ),
    ]
}

/// Another process's thread's name, as /proc has it now (it may have exited).
fn comm_of(tgid: u32, tid: u32) -> String {
    std::fs::read(format!("/proc/{tgid}/task/{tid}/comm"))
        .ok()
        .map(|b| printable(String::from_utf8_lossy(&b[..b.len().min(64)]).trim_end()).into_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("tid {tid}"))
}

fn descriptor(
    uuid: u64,
    parent: Option<u64>,
    process: Option<pb::ProcessDescriptor>,
    thread: Option<pb::ThreadDescriptor>,
) -> pb::TracePacket {
    pb::TracePacket {
        data: Some(pb::trace_packet::Data::TrackDescriptor(
            pb::TrackDescriptor {
                uuid: Some(uuid),
                parent_uuid: parent,
                process,
                thread,
                ..Default::default()
            },
        )),
        optional_trusted_packet_sequence_id: Some(
            pb::trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(SEQUENCE),
        ),
        ..Default::default()
    }
}

fn thread_descriptor(tgid: u32, tid: u32, name: String) -> pb::TracePacket {
    descriptor(
        thread_track(tgid, tid),
        None,
        None,
        Some(pb::ThreadDescriptor {
            pid: Some(tgid as i32),
            tid: Some(tid as i32),
            thread_name: Some(name),
            ..Default::default()
        }),
    )
}

fn packet(e: Event, sequence: u32) -> pb::TracePacket {
    let debug_annotations = e
        .annotations
        .into_iter()
        .map(|(k, v)| pb::DebugAnnotation {
            name_field: Some(pb::debug_annotation::NameField::Name(k.to_string())),
            value: Some(pb::debug_annotation::Value::StringValue(v)),
            ..Default::default()
        })
        .collect();
    pb::TracePacket {
        timestamp: Some(e.ts),
        timestamp_clock_id: Some(MONOTONIC),
        data: Some(pb::trace_packet::Data::TrackEvent(pb::TrackEvent {
            r#type: Some(e.kind as i32),
            track_uuid: Some(e.track),
            name_field: e.name.map(pb::track_event::NameField::Name),
            flow_ids: e.flow.into_iter().collect(),
            terminating_flow_ids: e.terminating_flow.into_iter().collect(),
            debug_annotations,
            ..Default::default()
        })),
        optional_trusted_packet_sequence_id: Some(
            pb::trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(sequence),
        ),
        ..Default::default()
    }
}
