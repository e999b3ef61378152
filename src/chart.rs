//! The tag-distribution chart `imagetag stats --plot` writes.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// System fonts tried in order; the chart needs one for its labels.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let font = std::env::var("IMAGETAG_CHART_FONT")
        .ok()
        .into_iter()
        .chain(FONT_CANDIDATES.iter().map(|p| p.to_string()))
        .find_map(|path| std::fs::read(&path).ok())
        .context(
            "no TrueType font found for the chart labels; install DejaVu (Debian: fonts-dejavu-core) \
             or point IMAGETAG_CHART_FONT at a .ttf file",
        )?;
    // The plotting library keeps fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the chart font could not be read"))
}

/// Draws `counts` (name, images) as horizontal bars, most used on top.
pub fn bar_chart(path: &Path, title: &str, counts: &[(String, u64)]) -> anyhow::Result<()> {
    if counts.is_empty() {
        bail!("no tags to plot yet");
    }
    register_font()?;
    let height = (120 + counts.len() * 28) as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let names: Vec<String> = counts.iter().map(|(name, _)| name.clone()).collect();
    let rows = counts.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(220)
        .build_cartesian_2d(0u64..max + max / 10 + 1, 0i32..rows)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(counts.len())
        .y_label_formatter(&|row| {
            // Row 0 is at the bottom; the most used tag goes on top.
            let index = rows - 1 - *row;
            names
                .get(usize::try_from(index).unwrap_or(usize::MAX))
                .cloned()
                .unwrap_or_default()
        })
        .x_desc("images")
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, (_, n))| {
        let row = rows - 1 - i as i32;
        Rectangle::new([(0, row), (*n, row + 1)], RGBColor(64, 120, 200).filled())
    }))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
