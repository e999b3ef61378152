//! Search latency as the collection grows, and requests per second under
//! load: synthetic tagged images (Zipf-distributed tags from the built-in
//! classifier's label table) written through the embedded index store, the
//! query service's own router serving them on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::Utc;
use imagetag_embedded::SqliteStore;
use imagetag_shared::model::{
    ImageFacts, ImageRecord, ImageStatus, Label, ModelInfo, image_id, terms_for_labels,
};
use imagetag_shared::ports::{GenerationUpdate, ObjectMeta};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::report::{Section, Table};
use crate::stats::{fmt_count, fmt_ms, fmt_rate, ms, quantile};

/// Images per transaction when loading.
const BATCH: usize = 5_000;
/// Most terms an image is indexed under (the indexer's own bound).
const MAX_TERMS: usize = 49;

pub struct Options {
    pub work: PathBuf,
    pub sizes: Vec<usize>,
    pub queries: usize,
    pub load_seconds: u32,
    pub connections: u32,
}

/// The vocabulary: tag names in popularity order and the categories.
struct Vocabulary {
    tags: Vec<String>,
    categories: Vec<String>,
    tag_cdf: Vec<f64>,
    category_cdf: Vec<f64>,
}

/// Zipf with exponent 1: the k-th most common of n items has weight 1/k.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn pick(cdf: &[f64], rng: &mut StdRng) -> usize {
    let u: f64 = rng.random();
    cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
}

impl Vocabulary {
    /// Names and categories of the built-in label table, shuffled with a
    /// fixed seed so popularity does not follow the table's order.
    fn new() -> Self {
        let mut tags = Vec::new();
        let mut categories = Vec::new();
        for line in imagetag_vision::hierarchy::TABLE.lines() {
            if line.starts_with('#') || line.starts_with("wnid\t") {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            if let Some(name) = fields.get(2).filter(|n| !n.is_empty()) {
                tags.push(name.to_string());
            }
            if let Some(category) = fields.get(5).filter(|c| !c.is_empty())
                && !categories.iter().any(|c| c == category)
            {
                categories.push(category.to_string());
            }
        }
        tags.sort();
        tags.dedup();
        let mut rng = StdRng::seed_from_u64(7);
        for i in (1..tags.len()).rev() {
            let j = rng.random_range(0..=i);
            tags.swap(i, j);
        }
        let (tag_cdf, category_cdf) = (zipf_cdf(tags.len()), zipf_cdf(categories.len().max(1)));
        Self {
            tags,
            categories,
            tag_cdf,
            category_cdf,
        }
    }

    fn labels(&self, rng: &mut StdRng) -> Vec<Label> {
        let count = rng.random_range(4..=12);
        let category = self
            .categories
            .get(pick(&self.category_cdf, rng))
            .cloned()
            .unwrap_or_else(|| "Everyday Objects".into());
        let mut labels: Vec<Label> = Vec::with_capacity(count);
        while labels.len() < count {
            let name = &self.tags[pick(&self.tag_cdf, rng)];
            if labels.iter().any(|l| &l.name == name) {
                continue;
            }
            labels.push(Label {
                name: name.clone(),
                confidence: (rng.random_range(5000..9999) as f32) / 100.0,
                parents: vec![],
                aliases: vec![],
                categories: vec![category.clone()],
                instances: vec![],
            });
        }
        labels
    }
}

/// One synthetic image: the generation ingest records, and the commit the
/// indexer makes for its tags (built with the indexer's own `diff`).
fn synthetic(
    n: usize,
    vocabulary: &Vocabulary,
    rng: &mut StdRng,
) -> (GenerationUpdate, imagetag_shared::ports::IndexCommit) {
    let key = format!("photos/{:04}/{n:08}.jpg", n / 1000);
    let id = image_id("bench", &key);
    let at = Utc::now();
    let meta = ObjectMeta {
        size: 2_000_000 + (n as u64 % 1000) * 1000,
        content_type: Some("image/jpeg".into()),
        etag: Some(format!("\"{n:032x}\"")),
        version_id: None,
    };
    let update = GenerationUpdate {
        image_id: id.clone(),
        bucket: "bench".into(),
        key: key.clone(),
        sequence: "0000000000000001".into(),
        status: ImageStatus::Pending,
        reason: None,
        meta: Some(meta.clone()),
        at,
    };
    let pending = ImageRecord {
        image_id: id,
        bucket: "bench".into(),
        key,
        status: ImageStatus::Pending,
        reason: None,
        sequence: update.sequence.clone(),
        etag: meta.etag,
        version_id: None,
        size: meta.size,
        content_type: meta.content_type,
        facts: None,
        model: None,
        labels: vec![],
        text: vec![],
        moderation: vec![],
        faces: vec![],
        indexed_terms: vec![],
        revision: 0,
        created_at: at,
        updated_at: at,
        tagged_at: None,
    };
    let labels = vocabulary.labels(rng);
    let mut terms = terms_for_labels(&labels);
    terms.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    terms.truncate(MAX_TERMS);
    terms.sort_by(|a, b| a.term.cmp(&b.term));
    let mut target = pending.clone();
    target.status = ImageStatus::Tagged;
    target.facts = Some(ImageFacts {
        width: 4032,
        height: 3024,
        format: "jpeg".into(),
    });
    target.model = Some(ModelInfo {
        backend: "local".into(),
        version: "bench".into(),
    });
    target.labels = labels;
    target.indexed_terms = terms;
    target.tagged_at = Some(at);
    (update, imagetag_indexer::diff(&pending, target))
}

async fn load(
    store: &SqliteStore,
    vocabulary: &Vocabulary,
    rng: &mut StdRng,
    from: usize,
    to: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = from;
    while n < to {
        let end = (n + BATCH).min(to);
        let batch = (n..end).map(|i| synthetic(i, vocabulary, rng)).collect();
        store.apply_batch(batch).await?;
        n = end;
    }
    Ok((to - from) as f64 / start.elapsed().as_secs_f64())
}

struct Query {
    name: &'static str,
    paths: Vec<String>,
}

fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Twenty variants of each query, so no single page stays hot.
fn queries(vocabulary: &Vocabulary) -> Vec<Query> {
    let tag = |rank: usize| enc(&vocabulary.tags[rank % vocabulary.tags.len()].to_lowercase());
    let variants = 0..20usize;
    vec![
        Query {
            name: "one tag",
            paths: variants
                .clone()
                .map(|i| format!("/v1/images?tags={}&limit=20", tag(5 + i)))
                .collect(),
        },
        Query {
            name: "three tags, all",
            paths: variants
                .clone()
                .map(|i| {
                    format!(
                        "/v1/images?tags={},{},{}&match=all&limit=20",
                        tag(i),
                        tag(20 + i),
                        tag(40 + i)
                    )
                })
                .collect(),
        },
        Query {
            name: "three tags, any",
            paths: variants
                .clone()
                .map(|i| {
                    format!(
                        "/v1/images?tags={},{},{}&match=any&limit=20",
                        tag(10 + i),
                        tag(30 + i),
                        tag(60 + i)
                    )
                })
                .collect(),
        },
        Query {
            name: "tag, excluding a tag",
            paths: variants
                .clone()
                .map(|i| format!("/v1/images?tags={}&exclude={}&limit=20", tag(i), tag(i + 1)))
                .collect(),
        },
        Query {
            name: "prefix (autocomplete)",
            paths: variants
                .clone()
                .map(|i| {
                    let name = vocabulary.tags[(i * 37) % vocabulary.tags.len()].to_lowercase();
                    let prefix: String = name.chars().take(2).collect();
                    format!("/v1/tags?prefix={}&limit=10", enc(&prefix))
                })
                .collect(),
        },
        Query {
            name: "tag counts (top 20)",
            paths: variants.map(|_| "/v1/tags?limit=20".to_string()).collect(),
        },
    ]
}

/// Serves the query service's router over `store` on a free loopback port.
async fn serve(store: SqliteStore, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = imagetag_query::AppState::new(Arc::new(store), b"bench-cursor-secret-0123456789");
    let app = imagetag_query::router(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(addr)
}

async fn latencies(
    client: &reqwest::Client,
    base: &str,
    query: &Query,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    // Warm-up: one of each variant.
    for path in &query.paths {
        client
            .get(format!("{base}{path}"))
            .send()
            .await?
            .error_for_status()?;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let path = &query.paths[i % query.paths.len()];
        let start = Instant::now();
        let response = client.get(format!("{base}{path}")).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        out.push(ms(start.elapsed()));
        if !status.is_success() {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(out)
}

/// Runs `wrk` against `url`; returns requests per second and its latency
/// percentiles (50, 99) in ms.
fn wrk(
    url: &str,
    seconds: u32,
    connections: u32,
    threads: usize,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let output = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk (scripts/bench installs it: apt-get install wrk)")?;
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let percentile = |p: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .and_then(parse_wrk_duration)
            .unwrap_or(f64::NAN)
    };
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok((rps, percentile("50%"), percentile("99%"), errors))
}

/// `1.23ms`, `456.00us`, `1.2s` → ms.
fn parse_wrk_duration(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|v| v * factor)
}

pub async fn run(options: &Options, cores: usize) -> anyhow::Result<(Section, Section)> {
    let db_dir = options.work.join("search");
    if db_dir.exists() {
        std::fs::remove_dir_all(&db_dir)?;
    }
    std::fs::create_dir_all(&db_dir)?;
    let db = db_dir.join("index.db");
    let store = SqliteStore::open(&db, cores.max(2))?;
    let vocabulary = Vocabulary::new();
    let queries = queries(&vocabulary);
    let shutdown = CancellationToken::new();
    let addr = serve(store.clone(), shutdown.clone()).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(42);

    let mut sizes = options.sizes.clone();
    sizes.sort_unstable();
    let mut headers = vec!["query".to_string()];
    for size in &sizes {
        headers.push(format!("p50 @ {}", fmt_count(*size)));
        headers.push(format!("p99 @ {}", fmt_count(*size)));
    }
    let mut rows: Vec<Vec<String>> = queries.iter().map(|q| vec![q.name.to_string()]).collect();
    let mut loading = Table::new(
        "Loading (through the store's batched index commits)",
        &[
            "images",
            "load rate (images/s)",
            "database size",
            "postings",
        ],
    );
    let mut one_tag_p99_at_largest = f64::NAN;
    let mut loaded = 0;
    for &size in &sizes {
        println!("search: loading to {} images", fmt_count(size));
        let rate = load(&store, &vocabulary, &mut rng, loaded, size).await?;
        loaded = size;
        let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(db_dir.join("index.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
        let postings = count_postings(&db)?;
        loading.row([
            fmt_count(size),
            fmt_rate(rate),
            crate::stats::fmt_mib(bytes),
            postings.to_string(),
        ]);
        for (row, query) in rows.iter_mut().zip(&queries) {
            let times = latencies(&client, &base, query, options.queries).await?;
            let (p50, p99) = (quantile(&times, 0.5), quantile(&times, 0.99));
            if query.name == "one tag" {
                one_tag_p99_at_largest = p99;
            }
            row.push(fmt_ms(p50));
            row.push(fmt_ms(p99));
        }
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut latency = Table::new(
        "Latency per query, ms (sequential requests over HTTP on loopback)",
        &header_refs,
    );
    latency.rows = rows;

    let largest = sizes.last().copied().unwrap_or(0);
    let mut search = Section {
        key: "search",
        title: "Search latency and scale (embedded SQLite index)".into(),
        method: format!(
            "Synthetic tagged images are written through the embedded store (`SqliteStore`) with the \
             same conditional generation write and index commit the ingest and indexer use one by one, \
             batched {BATCH} images per transaction (`SqliteStore::apply_batch`); the commits come from the \
             indexer's own `diff`. Each image has 4–12 labels drawn from the built-in classifier's {} label \
             names with a Zipf distribution (exponent 1, popularity order shuffled) and one of {} categories, \
             also Zipf; its postings are every label and category, as the indexer writes them. The collection \
             grows in place from one size to the next. At each size, every query runs {} times \
             sequentially through the query service's own router (`imagetag_query::router`) on loopback, \
             rotating over 20 variants (after one warm-up round), with reqwest as the client; times include \
             HTTP and JSON. Tags at popularity ranks 0–80 are used, so results are long lists.",
            vocabulary.tags.len(),
            vocabulary.categories.len(),
            options.queries
        ),
        tables: vec![loading, latency],
        notes: vec![],
    };
    search.notes.push(if largest >= 1_000_000 {
        let verdict = if one_tag_p99_at_largest < 10.0 { "meets" } else { "misses" };
        format!(
            "One-tag search p99 at {}: {} ms; this {verdict} the goal of under 10 ms at 1M images.",
            fmt_count(largest),
            fmt_ms(one_tag_p99_at_largest)
        )
    } else {
        format!(
            "One-tag search p99 at {}: {} ms. The goal (under 10 ms) is set at 1M images, which this run \
             did not load: `scripts/bench search --search-sizes 10k,100k,1M` (loading runs at the rate above, \
             so 1M takes tens of minutes on this machine).",
            fmt_count(largest),
            fmt_ms(one_tag_p99_at_largest)
        )
    });
    println!("search: load test with wrk");
    let threads = cores.clamp(1, 2);
    let mut load_table = Table::new(
        format!(
            "Requests per second under load (wrk, {} connections, {} threads, {} s each), {} images",
            options.connections,
            threads,
            options.load_seconds,
            fmt_count(largest)
        ),
        &[
            "endpoint",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "vs /healthz",
            "non-2xx",
        ],
    );
    let targets = [
        (
            "/healthz (baseline: routing and HTTP only)",
            "/healthz".to_string(),
        ),
        ("one tag", queries[0].paths[0].clone()),
        ("three tags, all", queries[1].paths[0].clone()),
        ("prefix (autocomplete)", queries[4].paths[0].clone()),
    ];
    let mut floor = f64::NAN;
    for (name, path) in targets {
        let (rps, p50, p99, errors) = wrk(
            &format!("{base}{path}"),
            options.load_seconds,
            options.connections,
            threads,
        )?;
        if floor.is_nan() {
            floor = rps;
        }
        load_table.row([
            name.to_string(),
            fmt_rate(rps),
            fmt_ms(p50),
            fmt_ms(p99),
            format!("{:.0} %", 100.0 * rps / floor),
            errors.to_string(),
        ]);
    }
    shutdown.cancel();
    let load = Section {
        key: "load",
        title: "Query service under concurrent load".into(),
        method: format!(
            "`wrk` (Debian's package) drives the query service's router, in the benchmark's process, on \
             loopback against the {}-image index above. wrk and the server share the machine's {cores} \
             cores, so the numbers are a floor for a dedicated server. `/healthz` does no store work and \
             shows what HTTP and routing alone cost on this machine.",
            fmt_count(largest)
        ),
        tables: vec![load_table],
        notes: vec![],
    };
    Ok((search, load))
}

fn count_postings(db: &Path) -> anyhow::Result<u64> {
    let connection = rusqlite::Connection::open(db)?;
    let n: i64 = connection.query_row("SELECT COUNT(*) FROM postings", [], |row| row.get(0))?;
    Ok(n.max(0) as u64)
}
