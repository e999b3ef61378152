//! How big the product is: binaries, model cache, and the peak memory of
//! `imagetag up` (measured by the embedded section and kept beside the
//! fragments, so this section can be re-run on its own).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::embedded::UpFootprint;
use crate::report::{Section, Table};
use crate::stats::fmt_mib;

const BINARIES: &[(&str, &str)] = &[
    (
        "imagetag",
        "CLI and `imagetag up` (all four services in one process)",
    ),
    ("imagetag-ingest", "ingest service"),
    ("imagetag-tagger", "tagger service"),
    ("imagetag-indexer", "indexer service"),
    ("imagetag-query", "query service (API and web UI)"),
];

#[derive(Serialize, Deserialize)]
struct Saved {
    peak_rss_backfill: u64,
    peak_rss_end: u64,
}

pub fn save_up(fragments: &Path, up: &UpFootprint) -> anyhow::Result<()> {
    std::fs::create_dir_all(fragments)?;
    let saved = Saved {
        peak_rss_backfill: up.peak_rss_backfill,
        peak_rss_end: up.peak_rss_end,
    };
    std::fs::write(
        fragments.join("up-footprint.json"),
        serde_json::to_vec(&saved)?,
    )
    .context("saving the embedded footprint")
}

pub fn save_services(
    fragments: &Path,
    memory: &crate::microservices::ServiceMemory,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(fragments)?;
    std::fs::write(
        fragments.join("services-footprint.json"),
        serde_json::to_vec(memory)?,
    )
    .context("saving the services' footprint")
}

pub fn run(bin_dir: &Path, model_dir: &Path, fragments: &Path) -> anyhow::Result<Section> {
    let mut binaries = Table::new(
        "Release binaries (stripped of nothing; `cargo build --release`)",
        &["binary", "what", "size"],
    );
    for (name, what) in BINARIES {
        let size = std::fs::metadata(bin_dir.join(name))
            .map(|m| fmt_mib(m.len()))
            .unwrap_or_else(|_| "not built".into());
        binaries.row([format!("`{name}`"), what.to_string(), size]);
    }
    let mut models = Table::new("Model cache (`scripts/prepare-models`)", &["what", "size"]);
    let runtime = model_dir.join("lib");
    let total = crate::tagging::dir_size(model_dir);
    let runtime_size = crate::tagging::dir_size(&runtime);
    let samples = crate::tagging::dir_size(&model_dir.join("samples"));
    models.row(["whole cache".to_string(), fmt_mib(total)]);
    models.row([
        "of which ONNX Runtime (`lib/`)".to_string(),
        fmt_mib(runtime_size),
    ]);
    models.row([
        "of which sample photos (tests)".to_string(),
        fmt_mib(samples),
    ]);
    models.row([
        "models and label data".to_string(),
        fmt_mib(total.saturating_sub(runtime_size + samples)),
    ]);

    let mut memory = Table::new("Peak memory (VmHWM)", &["process", "peak RSS"]);
    let mut notes = Vec::new();
    match std::fs::read(fragments.join("up-footprint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
    {
        Some(saved) => {
            memory.row([
                "`imagetag up`, backfill of small photos".to_string(),
                fmt_mib(saved.peak_rss_backfill),
            ]);
            memory.row([
                "`imagetag up`, after also tagging 3 MP and 12 MP JPEGs".to_string(),
                fmt_mib(saved.peak_rss_end),
            ]);
            notes.push(format!(
                "`imagetag up` holds the tagger plus ingest, indexer, query, the SQLite queues and index in one \
                 process; its peak with large photos was {}.",
                fmt_mib(saved.peak_rss_end)
            ));
        }
        None => notes.push(
            "Peak memory comes from the embedded section; run `scripts/bench embedded` first."
                .into(),
        ),
    }
    match std::fs::read(fragments.join("services-footprint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<(String, u64)>>(&b).ok())
    {
        Some(services) => {
            if let Some((_, tagger)) = services.iter().find(|(name, _)| name == "tagger") {
                let verdict = if *tagger < 500 * 1024 * 1024 { "meets" } else { "misses" };
                notes.push(format!(
                    "The tagger service's peak on moto was {}; this {verdict} the goal of under 500 MB.",
                    fmt_mib(*tagger)
                ));
            }
            for (name, bytes) in services {
                let what = if name == "moto" {
                    "moto server (the AWS stand-in, Python)".to_string()
                } else {
                    format!("`imagetag-{name}` on moto, after the uploads")
                };
                memory.row([what, fmt_mib(bytes)]);
            }
        }
        None => notes.push(
            "Each service's own peak comes from the microservices section; run `scripts/bench microservices`.".into(),
        ),
    }
    notes.push(
        "Container image size: not measured, since this machine has no container engine to build the `Dockerfile` with."
            .into(),
    );
    Ok(Section {
        key: "footprint",
        title: "Footprint".into(),
        method: "Sizes on disk of the release binaries and of the model cache, and the peak resident memory of \
                 `imagetag up` during the embedded section."
            .into(),
        tables: vec![binaries, models, memory],
        notes,
    })
}
