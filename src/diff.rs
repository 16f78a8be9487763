//! `waitprof diff OLD NEW`: two sessions' folded files into a differential flame graph
//! (inferno's diff-folded: each frame's width is the new time, red where it grew, blue
//! where it shrank) and the biggest changes, by stack and by kind of wait. Times are
//! normalised by session length, read from the title of the SVG written beside each
//! folded file (`waitprof: NAME (pid N), 2.0 s, ...`), so that a 10 s session compares
//! with a 30 s one; without those SVGs the totals are compared as they are, and the
//! output says so.
//!
//! The folded files are input from wherever the user found them: every line is checked
//! (a stack, a space, a whole number), and a bad one is an error naming its line. A pprof
//! profile (`.pb.gz`) is read too, as folded stacks of the same form, its length its own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::export::files::{Content, OutputDir};

/// The largest folded file read (a 40,000-stack profile's is ~100 MB).
const MAX_FILE: u64 = 2 << 30;
/// The largest SVG title read, from the start of the SVG.
const TITLE_BYTES: u64 = 64 << 10;

/// Compare two sessions: `waitprof diff OLD.folded NEW.folded` (or their `.pb.gz`).
#[derive(Parser, Debug)]
#[command(name = "waitprof diff", bin_name = "waitprof diff", version)]
pub struct DiffArgs {
    /// The earlier session's folded file (any of waitprof's views, or any folded stacks),
    /// or its pprof profile (.pb.gz).
    pub old: PathBuf,
    /// The later session's, of the same view and format.
    pub new: PathBuf,
    /// Where to write the differential flame graph (.svg). Default:
    /// flamegraphs/diff-OLD-NEW.svg.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// How many of the biggest changes to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

/// One session's folded file, read and checked.
#[derive(Debug, Default, PartialEq)]
pub struct Side {
    /// stack -> value (microseconds for waitprof's files).
    pub stacks: HashMap<String, u64>,
    /// Session length in seconds, when the SVG beside the file gives it.
    pub seconds: Option<f64>,
}

impl Side {
    fn total(&self) -> u64 {
        self.stacks.values().sum()
    }
}

/// Parses folded text: `frame;frame;... VALUE` per line. Empty lines are skipped; any
/// other line without a whole-number value is an error naming it.
pub fn parse_folded(what: &str, text: &[u8]) -> Result<HashMap<String, u64>> {
    let mut stacks: HashMap<String, u64> = HashMap::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line)
            .with_context(|| format!("{what}: line {} is not UTF-8 text", i + 1))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            anyhow::anyhow!(
                "{what}: line {} is not folded stacks (`frame;frame;... COUNT`): {:?}",
                i + 1,
                crate::text::printable(&line.chars().take(80).collect::<String>())
            )
        };
        let (stack, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        if stack.is_empty() {
            return Err(bad());
        }
        let v = stacks.entry(stack.to_string()).or_default();
        *v = v.saturating_add(value);
    }
    if stacks.is_empty() {
        bail!("{what}: no stacks in it (an empty profile): nothing to compare");
    }
    Ok(stacks)
}

/// The session length in a waitprof SVG title: `waitprof: NAME (pid N), 2.0 s, what`.
pub fn seconds_in_title(svg: &str) -> Option<f64> {
    let start = svg.find("waitprof: ")?;
    let title = &svg[start..];
    let title = &title[..title.find('<').unwrap_or(title.len())];
    // the last "), " before the length: NAME may itself hold ", " or ")"
    let after_pid = &title[title.rfind("), ")? + 3..];
    let secs = after_pid.split(" s,").next()?;
    secs.trim().parse::<f64>().ok().filter(|s| *s > 0.0)
}

/// Reads a file that the user named, bounded: a FIFO or a device is refused before it
/// can block the read (opened non-blocking, then checked to be a regular file).
/// With `prefix`, only the first `max` bytes of a larger file are read.
fn read_bounded(path: &Path, max: u64, prefix: bool) -> Result<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot read {}", path.display()))?;
    let st = rustix::fs::fstat(&fd).with_context(|| format!("cannot read {}", path.display()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        bail!("{} is not a regular file", path.display());
    }
    if st.st_size as u64 > max && !prefix {
        bail!(
            "{} is larger than {} MiB: not a folded file waitprof wrote",
            path.display(),
            max >> 20
        );
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(max)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {} failed", path.display()))?;
    Ok(data)
}

/// A pprof profile (gzipped or not) as folded stacks, in microseconds, and the session
/// length it says. Its stacks become root-first function names (each location's inlined
/// functions outermost first), kernel frames (`[kernel.kallsyms]`) with `_[k]` and the
/// `syscall` label as a `[syscall]_[i]` frame before them, as waitprof's folded files
/// have them; a waitprof profile's run-queue time goes on top as `[run queue]_[j]`. Other
/// profiles count their default sample type.
pub fn parse_pprof(what: &str, data: &[u8]) -> Result<Side> {
    use crate::export::pprof::proto;
    let p = crate::export::pprof::decode(data).with_context(|| what.to_string())?;
    let string = |i: i64| -> Result<&str> {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map(String::as_str)
            .with_context(|| format!("{what}: a string index {i} past its string table"))
    };
    let type_index = |name: &str| -> Result<Option<usize>> {
        for (i, t) in p.sample_type.iter().enumerate() {
            if string(t.r#type)? == name {
                return Ok(Some(i));
            }
        }
        Ok(None)
    };
    let default = match p.default_sample_type {
        0 => p.sample_type.len().saturating_sub(1),
        d => {
            let name = string(d)?.to_string();
            type_index(&name)?.unwrap_or(0)
        }
    };
    // waitprof's main view: blocked below, run-queue wait on top
    let split = match (type_index("blocked")?, type_index("runq")?) {
        (Some(b), Some(r)) => Some((b, r)),
        _ => None,
    };
    let locations: HashMap<u64, &proto::Location> = p.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &proto::Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let kernel: std::collections::HashSet<u64> = p
        .mapping
        .iter()
        .filter(|m| string(m.filename).is_ok_and(|f| f == crate::symbolize::KERNEL_CODE))
        .map(|m| m.id)
        .collect();
    let syscall_key = p.string_table.iter().position(|s| s == "syscall");
    let mut stacks: HashMap<String, u64> = HashMap::new();
    for sample in &p.sample {
        let mut user: Vec<String> = Vec::new();
        let mut kframes: Vec<String> = Vec::new();
        for id in sample.location_id.iter().rev() {
            let l = locations
                .get(id)
                .with_context(|| format!("{what}: a sample refers to no location {id}"))?;
            for line in l.line.iter().rev() {
                let f = functions
                    .get(&line.function_id)
                    .with_context(|| format!("{what}: a location refers to no function"))?;
                let name = string(f.name)?.replace(';', ":").replace(['\n', '\r'], " ");
                if kernel.contains(&l.mapping_id) {
                    kframes.push(format!("{name}_[k]"));
                } else {
                    user.push(name);
                }
            }
        }
        if let Some(key) = syscall_key {
            if let Some(l) = sample.label.iter().find(|l| l.key as usize == key) {
                user.push(format!("[{}]_[i]", string(l.str)?));
            }
        }
        user.extend(kframes);
        let stack = user.join(";");
        if stack.is_empty() {
            continue;
        }
        let value = |i: usize| sample.value.get(i).copied().unwrap_or(0).max(0) as u64 / 1000;
        let mut add = |stack: String, us: u64| {
            if us > 0 {
                let v = stacks.entry(stack).or_default();
                *v = v.saturating_add(us);
            }
        };
        match split {
            Some((b, r)) => {
                add(stack.clone(), value(b));
                add(
                    format!("{stack};{}", crate::fold::RUN_QUEUE_FRAME),
                    value(r),
                );
            }
            None => add(stack, value(default)),
        }
    }
    if stacks.is_empty() {
        bail!("{what}: no samples in it (an empty profile): nothing to compare");
    }
    let seconds = (p.duration_nanos > 0).then(|| p.duration_nanos as f64 / 1e9);
    Ok(Side { stacks, seconds })
}

/// Reads one side: a folded file, and the session length from the SVG beside it; or a
/// pprof profile (`.pb.gz`), which holds its own length.
pub fn read_side(path: &Path) -> Result<Side> {
    let data = read_bounded(path, MAX_FILE, false)?;
    if data.starts_with(&[0x1f, 0x8b]) || path.extension().is_some_and(|e| e == "pb") {
        return parse_pprof(&path.display().to_string(), &data);
    }
    let stacks = parse_folded(&path.display().to_string(), &data)?;
    let seconds = read_bounded(&path.with_extension("svg"), TITLE_BYTES, true)
        .ok()
        .and_then(|svg| seconds_in_title(&String::from_utf8_lossy(&svg)));
    Ok(Side { stacks, seconds })
}

/// The kind of wait a stack is in: its syscall frame (`[futex]_[i]`) or a state on top
/// (`[chan receive]_[j]`), else `other`.
fn kind_of(stack: &str) -> &str {
    stack
        .split(';')
        .find_map(|f| f.strip_suffix("_[i]"))
        .or_else(|| {
            stack
                .rsplit(';')
                .next()
                .and_then(|f| f.strip_suffix("_[j]"))
        })
        .unwrap_or("other")
}

/// A change between the sessions, per second of session where both lengths are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub what: String,
    pub old: f64,
    pub new: f64,
}

impl Change {
    fn delta(&self) -> f64 {
        self.new - self.old
    }
}

/// The comparison: the two sides scaled to a rate (per second) when both lengths are
/// known, else as they are.
pub struct Compared {
    pub per_second: bool,
    pub by_stack: Vec<Change>,
    pub by_kind: Vec<Change>,
    /// Folded text for inferno: both values per stack, scaled alike.
    pub old_text: String,
    pub new_text: String,
    pub old_total: f64,
    pub new_total: f64,
}

pub fn compare(old: &Side, new: &Side) -> Compared {
    let (per_second, so, sn) = match (old.seconds, new.seconds) {
        (Some(a), Some(b)) => (true, 1.0 / a, 1.0 / b),
        _ => (false, 1.0, 1.0),
    };
    let mut all: Vec<&String> = old.stacks.keys().chain(new.stacks.keys()).collect();
    all.sort_unstable();
    all.dedup();
    let mut by_stack = Vec::new();
    let mut kinds: HashMap<&str, (f64, f64)> = HashMap::new();
    let (mut old_text, mut new_text) = (String::new(), String::new());
    for stack in all {
        let o = old.stacks.get(stack).copied().unwrap_or(0) as f64 * so;
        let n = new.stacks.get(stack).copied().unwrap_or(0) as f64 * sn;
        let k = kinds.entry(kind_of(stack)).or_default();
        k.0 += o;
        k.1 += n;
        // inferno's diff-folded reads whole numbers: scaled values keep microseconds
        // per second of session, rounded
        use std::fmt::Write as _;
        let _ = writeln!(old_text, "{stack} {}", o.round() as u64);
        let _ = writeln!(new_text, "{stack} {}", n.round() as u64);
        by_stack.push(Change {
            what: stack.clone(),
            old: o,
            new: n,
        });
    }
    let by = |c: &Change| -c.delta().abs();
    by_stack.sort_by(|a, b| by(a).total_cmp(&by(b)).then_with(|| a.what.cmp(&b.what)));
    let mut by_kind: Vec<Change> = kinds
        .into_iter()
        .map(|(k, (o, n))| Change {
            what: k.to_string(),
            old: o,
            new: n,
        })
        .collect();
    by_kind.sort_by(|a, b| by(a).total_cmp(&by(b)).then_with(|| a.what.cmp(&b.what)));
    Compared {
        per_second,
        old_total: old.total() as f64 * so,
        new_total: new.total() as f64 * sn,
        by_stack,
        by_kind,
        old_text,
        new_text,
    }
}

/// The most frames of a stack the report shows: its leaf end, without kernel frames.
const SHOWN_FRAMES: usize = 5;

/// A stack as the report shows it: the process, then its last user and synthetic
/// frames up to the wait (`…;sleeper;__clock_nanosleep;[clock_nanosleep]`); the SVG and
/// the folded file beside it have the whole stack.
fn short(stack: &str) -> String {
    let frames: Vec<&str> = stack.split(';').filter(|f| !f.ends_with("_[k]")).collect();
    let strip = |f: &str| {
        f.strip_suffix("_[i]")
            .or_else(|| f.strip_suffix("_[j]"))
            .unwrap_or(f)
            .to_string()
    };
    if frames.len() <= SHOWN_FRAMES + 1 {
        return frames
            .iter()
            .map(|f| strip(f))
            .collect::<Vec<_>>()
            .join(";");
    }
    let mut out = vec![strip(frames[0]), "…".to_string()];
    out.extend(
        frames[frames.len() - SHOWN_FRAMES..]
            .iter()
            .map(|f| strip(f)),
    );
    out.join(";")
}

/// The report printed on stderr.
pub fn report(c: &Compared, top: usize) -> String {
    use std::fmt::Write as _;
    let unit = if c.per_second { "ms/s" } else { "ms" };
    let ms = |us: f64| us / 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "waitprof diff: {} (old {:.1} {unit}, new {:.1} {unit}, {:+.1} {unit})",
        if c.per_second {
            "time per second of session (normalised by each session's length)"
        } else {
            "total time, not normalised: a session's length was not found (no waitprof SVG beside its folded file)"
        },
        ms(c.old_total),
        ms(c.new_total),
        ms(c.new_total - c.old_total)
    );
    let line = |out: &mut String, ch: &Change| {
        let pct = if ch.old > 0.0 {
            format!("{:+.0}%", (ch.new / ch.old - 1.0) * 100.0)
        } else {
            "new".to_string()
        };
        let _ = writeln!(
            out,
            "    {:+10.1} {unit} ({:>5})  {:.1} -> {:.1}  {}",
            ms(ch.delta()),
            pct,
            ms(ch.old),
            ms(ch.new),
            crate::text::printable(&short(&ch.what))
        );
    };
    let _ = writeln!(out, "  by kind of wait:");
    for ch in c.by_kind.iter().filter(|ch| ch.delta() != 0.0).take(top) {
        line(&mut out, ch);
    }
    let _ = writeln!(out, "  the biggest changes by stack:");
    for ch in c.by_stack.iter().filter(|ch| ch.delta() != 0.0).take(top) {
        line(&mut out, ch);
    }
    out
}

/// `waitprof diff ARGS`.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<std::process::ExitCode> {
    // bad flags: clap's message and usage, exit 2, as for the main command
    let args = DiffArgs::parse_from(args);
    let old = read_side(&args.old)?;
    let new = read_side(&args.new)?;
    let compared = compare(&old, &new);
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = format!("diff-{}-{}", stem(&args.old), stem(&args.new));
    let paths = crate::export::files::output_paths_named(
        args.output.as_deref(),
        &format!("{}.svg", crate::export::files::safe_name(&name)),
    );
    let dir = OutputDir::open(&paths, args.output.is_none())?;
    let mut two = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        compared.old_text.as_bytes(),
        compared.new_text.as_bytes(),
        &mut two,
    )
    .context("folding the two sessions together failed")?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "waitprof diff: {} -> {}",
        crate::text::printable(&stem(&args.old)),
        crate::text::printable(&stem(&args.new))
    );
    opts.subtitle = Some(format!(
        "width: the new session's time; red grew, blue shrank ({})",
        if compared.per_second {
            "us per second of session"
        } else {
            "us, not normalised"
        }
    ));
    opts.count_name = if compared.per_second { "us/s" } else { "us" }.to_string();
    opts.deterministic = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_reader(&mut opts, two.as_slice(), &mut svg)
        .context("drawing the differential flame graph failed")?;
    eprint!("{}", report(&compared, args.top));
    dir.write_all(
        &[
            (paths.folded.as_path(), Content::Bytes(&two)),
            (paths.svg.as_path(), Content::Bytes(&svg)),
        ],
        &|| false,
        || anyhow::anyhow!("interrupted"),
    )?;
    eprintln!(
        "waitprof diff: wrote {} (and {}: both sessions' values per stack)",
        paths.svg.display(),
        paths.folded.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Whether the command line is `waitprof diff ...`.
pub fn is_diff(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| a == "diff")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_folded_input_names_its_line() {
        let err = parse_folded("x", b"a;b 10\nnot a line\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        let err = parse_folded("x", b"a;b 1.5\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        let err = parse_folded("x", b"\n\n").unwrap_err();
        assert!(format!("{err:#}").contains("empty profile"), "{err:#}");
        let err = parse_folded("x", b"\xff\xfe 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("not UTF-8"), "{err:#}");
        assert_eq!(
            parse_folded("x", b"a;b 10\na;b 5\nc 1\n").unwrap(),
            HashMap::from([("a;b".to_string(), 15), ("c".to_string(), 1)])
        );
    }

    #[test]
    fn session_length_comes_from_the_title() {
        let svg = r#"<svg><text id="title">waitprof: my, (odd) name (pid 12), 2.5 s, off-CPU time</text>"#;
        assert_eq!(seconds_in_title(svg), Some(2.5));
        assert_eq!(seconds_in_title("<svg>no title</svg>"), None);
    }

    /// Normalised by length: the same rate over sessions of different lengths is no
    /// change; a doubled wait is +100%, and its kind carries it.
    #[test]
    fn changes_are_per_second_of_session() {
        let side = |secs: f64, lines: &[(&str, u64)]| Side {
            stacks: lines.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
            seconds: Some(secs),
        };
        let old = side(
            1.0,
            &[
                ("p;main;[futex]_[i];k_[k]", 1000),
                ("p;loop;[epoll_wait]_[i]", 500),
            ],
        );
        let new = side(
            2.0,
            &[
                ("p;main;[futex]_[i];k_[k]", 4000),
                ("p;loop;[epoll_wait]_[i]", 1000),
            ],
        );
        let c = compare(&old, &new);
        assert!(c.per_second);
        assert_eq!(c.by_stack[0].what, "p;main;[futex]_[i];k_[k]");
        assert_eq!((c.by_stack[0].old, c.by_stack[0].new), (1000.0, 2000.0));
        assert_eq!(c.by_stack[1].delta(), 0.0);
        assert_eq!(c.by_kind[0].what, "[futex]");
        assert!(report(&c, 5).contains("+100%"), "{}", report(&c, 5));
    }
}
