//! Flame graphs: folded stacks into an SVG with inferno.

use anyhow::{bail, Context, Result};
use inferno::flamegraph::color::{Color, MultiPalette, Palette, PaletteMap};
use inferno::flamegraph::{self, Options};

use crate::fold::Folded;

/// The flame graph of a non-empty profile as SVG text.
pub fn svg(folded: &Folded, title: &str, subtitle: &str) -> Result<Vec<u8>> {
    if folded.is_empty() {
        bail!("nothing to draw: the profile is empty");
    }
    let mut opts = Options::default();
    opts.title = title.to_string();
    opts.subtitle = Some(subtitle.to_string());
    opts.count_name = "us".to_string();
    opts.colors = Palette::Multi(MultiPalette::Java);
    opts.hash = true;
    opts.deterministic = true;
    // fold already sorted the lines frame by frame: a large profile skips a second sort
    opts.no_sort = true;
    let mut wakers = waker_colours(folded);
    if wakers.iter().next().is_some() {
        opts.palette_map = Some(&mut wakers);
    }
    // what inferno would draw, without the frames it would prune as too narrow
    let drawable = folded.drawable(opts.min_width);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut opts, drawable.iter().map(String::as_str), &mut out)
        .context("rendering the flame graph failed")?;
    Ok(out)
}

/// A shade of `base` that depends only on the name, as inferno's hashed palettes do.
fn shade(name: &str, base: [u8; 3], spread: [u8; 3]) -> Color {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let v = (h % 1000) as f64 / 1000.0;
    let c = |i: usize| base[i].saturating_add((f64::from(spread[i]) * v) as u8);
    Color {
        r: c(0),
        g: c(1),
        b: c(2),
    }
}

/// Waker frames (`_[w]`, after the `--` of an off-wake line) in blue, their kernel
/// frames lighter: the waker's part stands apart from the blocked part below it.
fn waker_colours(folded: &Folded) -> PaletteMap {
    let mut map = PaletteMap::default();
    let kernel: std::collections::HashSet<&str> = folded
        .waker_kernel_frames()
        .iter()
        .map(String::as_str)
        .collect();
    for f in folded.frame_names().filter(|f| f.ends_with("_[w]")) {
        let colour = if kernel.contains(f) {
            shade(f, [140, 165, 230], [40, 40, 25])
        } else {
            shade(f, [70, 90, 200], [60, 60, 50])
        };
        map.insert(f, colour);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_profile_is_not_drawn() {
        let err = svg(&Folded::default(), "t", "s").unwrap_err();
        assert!(format!("{err:#}").contains("nothing to draw"));
    }
}
