//! `imagetag-bench`: measures the product against the alternatives users
//! would pick instead, prints tables and writes `docs/benchmarks.md`.
//! Run it through `scripts/bench` (release build, models prepared, the
//! Python reference's venv and wrk installed).

mod embedded;
mod footprint;
mod microservices;
mod photos;
mod report;
mod search;
mod stats;
mod tagging;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::report::{Machine, ReportDir, Section};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Every section at its default size (the documented run, under 15 minutes).
    All,
    /// Images/second of the tagger's whole path vs the Python reference.
    Tagging,
    /// Search latency at growing collection sizes, and wrk load.
    Search,
    /// `imagetag up`: backfill, upload → searchable latency, peak memory.
    Embedded,
    /// The four services on moto: upload → searchable per hop, peak RSS each.
    Microservices,
    /// Binary sizes, model cache, peak RSS (from the embedded and microservices sections).
    Footprint,
}

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Which section to run.
    #[arg(value_enum, default_value = "all")]
    section: Which,
    /// Where the assembled report is written.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The maintained analysis appended to the report.
    #[arg(long, default_value = "bench/NOTES.md")]
    notes: PathBuf,
    /// Where each section's fragment is kept between runs.
    #[arg(long, default_value = "target/bench")]
    fragments: PathBuf,
    /// Scratch space (photos, databases, logs).
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// The prepared model cache (default: as `imagetag up` finds it).
    #[arg(long, env = "IMAGETAG_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Python of the reference pipeline's venv.
    #[arg(long, default_value = ".cache/bench-venv/bin/python")]
    python: PathBuf,
    /// The reference pipeline.
    #[arg(long, default_value = "bench/python/reference.py")]
    reference: PathBuf,
    /// Directory of the release binaries (`imagetag`, the services).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Timed passes per throughput measurement (the median is reported;
    /// five keep one or two passes disturbed by a neighbour out of it).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Collection sizes for the search section; 1M loads for tens of
    /// minutes on 2 cores, so it is opt-in (`10k,100k,1M`).
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_value = "10k,100k")]
    search_sizes: Vec<usize>,
    /// Requests per query and size.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Seconds of each wrk load run.
    #[arg(long, default_value_t = 10)]
    load_seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Photos in the embedded backfill.
    #[arg(long, value_parser = parse_count, default_value = "1000")]
    backfill: usize,
    /// Uploads timed until searchable (embedded).
    #[arg(long, value_parser = parse_count, default_value = "200")]
    uploads: usize,
    /// Uploads timed until searchable (microservices on moto).
    #[arg(long, value_parser = parse_count, default_value = "200")]
    moto_uploads: usize,
    /// The venv holding moto's server and boto3.
    #[arg(long, default_value = ".cache/bench-moto-venv")]
    moto_venv: PathBuf,
}

fn parse_count(text: &str) -> Result<usize, String> {
    stats::parse_count(text)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let machine = Machine::detect();
    println!(
        "imagetag-bench on {} ({} cores), {}",
        machine.cpu_model, machine.cores, machine.build
    );
    let dir = ReportDir::new(&cli.fragments);
    std::fs::create_dir_all(&cli.work)?;
    let model_dir = cli
        .model_dir
        .clone()
        .unwrap_or_else(imagetag_vision::default_model_dir);
    let run = |which: Which| cli.section == Which::All || cli.section == which;
    let started = std::time::Instant::now();

    if run(Which::Tagging) {
        let section = tagging::run(&tagging::Options {
            model_dir: model_dir.clone(),
            work: cli.work.clone(),
            python: cli.python.clone(),
            script: cli.reference.clone(),
            runs: cli.runs,
            cores: machine.cores,
        })
        .await?;
        emit(&dir, &section, &machine)?;
    }
    if run(Which::Search) {
        let (search, load) = search::run(
            &search::Options {
                work: cli.work.clone(),
                sizes: cli.search_sizes.clone(),
                queries: cli.queries,
                load_seconds: cli.load_seconds,
                connections: cli.connections,
            },
            machine.cores,
        )
        .await?;
        emit(&dir, &search, &machine)?;
        emit(&dir, &load, &machine)?;
    }
    if run(Which::Embedded) {
        let (backfill, latency, up) = embedded::run(&embedded::Options {
            work: cli.work.clone(),
            model_dir: model_dir.clone(),
            imagetag: cli.bin_dir.join("imagetag"),
            backfill: cli.backfill,
            uploads: cli.uploads,
        })
        .await?;
        emit(&dir, &backfill, &machine)?;
        emit(&dir, &latency, &machine)?;
        footprint::save_up(&cli.fragments, &up)?;
    }
    if run(Which::Microservices) {
        let (section, memory) = microservices::run(&microservices::Options {
            work: cli.work.clone(),
            model_dir: model_dir.clone(),
            bin_dir: cli.bin_dir.clone(),
            moto_venv: cli.moto_venv.clone(),
            template: PathBuf::from("deploy/imagetag.yaml"),
            stack_script: PathBuf::from("bench/python/moto_stack.py"),
            uploads: cli.moto_uploads,
        })
        .await?;
        emit(&dir, &section, &machine)?;
        footprint::save_services(&cli.fragments, &memory)?;
    }
    if run(Which::Footprint) {
        let section = footprint::run(&cli.bin_dir, &model_dir, &cli.fragments)?;
        emit(&dir, &section, &machine)?;
    }
    dir.assemble(&cli.out, &cli.notes)?;
    println!(
        "\nwrote {} ({:.0} s)",
        cli.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn emit(dir: &ReportDir, section: &Section, machine: &Machine) -> anyhow::Result<()> {
    let mut section = section.clone();
    // Other work on the machine skews absolute times; say how busy it was.
    if let Some(load) = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
    {
        section.notes.push(format!(
            "Load average (1 min) on this {}-core machine when the section finished: {load}.",
            machine.cores
        ));
    }
    section.print();
    dir.save(&section, machine)
}
