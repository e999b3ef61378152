//! `imagetag-bench`: measures the product against the alternatives users
//! would pick instead, prints tables and writes `docs/benchmarks.md`.
//! Run it through `scripts/bench` (release build, models prepared).

mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::{Machine, ReportDir, Section};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Where the assembled report is written.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Where each section's fragment is kept between runs.
    #[arg(long, default_value = "target/bench")]
    fragments: PathBuf,
    #[command(subcommand)]
    section: Option<Which>,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// Every section at its default size (the documented run, under 15 minutes).
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let machine = Machine::detect();
    let dir = ReportDir::new(&cli.fragments);
    let sections: Vec<Section> = match cli.section.unwrap_or(Which::All) {
        Which::All => Vec::new(),
    };
    for section in &sections {
        section.print();
        dir.save(section, &machine)?;
    }
    dir.assemble(&cli.out)?;
    println!("\nwrote {}", cli.out.display());
    Ok(())
}
