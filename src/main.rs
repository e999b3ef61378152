//! `imagetag`: run the whole product on a folder (`up`), or talk to a
//! running deployment (`search`, `tags`, `redrive`).

mod chart;
mod models;
mod up;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use imagetag_shared::aws::{SqsQueue, load_sdk_config};
use imagetag_shared::config::AwsArgs;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "imagetag",
    version,
    about = "Automatic image tagging and search"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tag a folder of images and serve search over it, all in one process.
    Up(up::UpArgs),
    /// Tag local files with the built-in models (no service needed).
    Tag(TagArgs),
    /// Search images by tag: `imagetag search dog beach -indoor`.
    Search(SearchArgs),
    /// List tags with their image counts, most used first.
    Tags(TagsArgs),
    /// Totals and the tag distribution; `--plot tags.png` draws it.
    Stats(StatsArgs),
    /// Move dead-lettered messages back to their queue after a fix.
    Redrive(RedriveArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Mint a key: prints it once and appends only its hash to the file.
    Create(KeyCreateArgs),
}

#[derive(Debug, clap::Args)]
struct KeyCreateArgs {
    /// A name for the key (letters, digits, - and _), shown in logs.
    name: String,

    /// The key file the API reads (`IMAGETAG_API_KEYS_FILE`).
    #[arg(long, env = "IMAGETAG_API_KEYS_FILE")]
    file: std::path::PathBuf,

    /// The key may read but not write.
    #[arg(long)]
    read_only: bool,
}

#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// Base URL of the query service.
    #[arg(long, env = "IMAGETAG_API", default_value = "http://127.0.0.1:8080")]
    api: String,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SearchArgs {
    /// Tags to match; prefix with `-` to exclude. Options go before the tags
    /// (everything after the first tag is read as a tag).
    #[arg(required = true, allow_hyphen_values = true)]
    query: Vec<String>,

    /// Match images with any of the tags instead of all.
    #[arg(long)]
    any: bool,

    /// Only postings at or above this confidence (0–100).
    #[arg(long)]
    min_confidence: Option<f32>,

    /// Only images with a label in this category.
    #[arg(long)]
    category: Option<String>,

    /// Results per page.
    #[arg(long, default_value_t = 20)]
    limit: u32,

    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct TagsArgs {
    /// Only tags starting with this.
    #[arg(long)]
    prefix: Option<String>,

    /// `tag` or `category`.
    #[arg(long, default_value = "tag")]
    kind: String,

    #[arg(long, default_value_t = 50)]
    limit: u32,

    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct TagArgs {
    /// Image files.
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,

    /// One JSON object per file, in the tagger's output schema.
    #[arg(long)]
    json: bool,

    /// Folder of the prepared built-in models.
    #[arg(long, env = "IMAGETAG_MODEL_DIR")]
    model_dir: Option<std::path::PathBuf>,

    /// Tagging policy (TOML) to apply, as the tagger service would.
    #[arg(long, env = "IMAGETAG_POLICY_FILE")]
    policy_file: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// Write a bar chart of the most used tags to this PNG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,

    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct RedriveArgs {
    /// The dead-letter queue to drain.
    #[arg(long)]
    from: String,

    /// The queue to send the messages back to.
    #[arg(long)]
    to: String,

    /// Stop after this many messages.
    #[arg(long, default_value_t = 10_000)]
    max: usize,

    #[command(flatten)]
    aws: AwsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => {
            let telemetry = imagetag_shared::telemetry::init_with(
                "imagetag",
                imagetag_shared::telemetry::LogFormat::Human,
            );
            let result = up::run(args).await;
            telemetry.shutdown();
            result
        }
        Command::Search(args) => search(args).await,
        Command::Tag(args) => tag_files(args),
        Command::Tags(args) => tags(args).await,
        Command::Stats(args) => stats(args).await,
        Command::Redrive(args) => redrive(args).await,
        Command::Keys(KeysCommand::Create(args)) => create_key(args),
    }
}

async fn get(api: &str, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .query(query)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body: Value = response.json().await.context("response is not JSON")?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        let code = body["error"]["code"].as_str().unwrap_or("error");
        bail!("{status}: {code}: {message}");
    }
    Ok(body)
}

async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let (exclude, include): (Vec<String>, Vec<String>) =
        args.query.into_iter().partition(|t| t.starts_with('-'));
    let exclude: Vec<String> = exclude
        .into_iter()
        .map(|t| t.trim_start_matches('-').to_owned())
        .collect();
    let mut query = vec![("limit", args.limit.to_string())];
    if !include.is_empty() {
        query.push(("tags", include.join(",")));
    }
    if !exclude.is_empty() {
        query.push(("exclude", exclude.join(",")));
    }
    if args.any {
        query.push(("match", "any".into()));
    }
    if let Some(min) = args.min_confidence {
        query.push(("min_confidence", min.to_string()));
    }
    if let Some(category) = args.category {
        query.push(("category", category));
    }
    let body = get(&args.api.api, "/v1/images", &query).await?;
    if args.api.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    println!("{:<32}  {:<40}  TOP TAGS", "ID", "KEY");
    for item in &items {
        let top: Vec<String> = item["labels"]
            .as_array()
            .map(|labels| {
                labels
                    .iter()
                    .take(4)
                    .map(|l| {
                        format!(
                            "{} {:.0}",
                            l["name"].as_str().unwrap_or("?"),
                            l["confidence"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<32}  {:<40}  {}",
            item["id"].as_str().unwrap_or(""),
            item["key"].as_str().unwrap_or(""),
            top.join(", ")
        );
    }
    println!(
        "{} result(s){}",
        items.len(),
        match body["next_cursor"].as_str() {
            Some(_) => " (more available: use --json for the cursor)",
            None => "",
        }
    );
    Ok(())
}

async fn tags(args: TagsArgs) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string()), ("kind", args.kind)];
    if let Some(prefix) = args.prefix {
        query.push(("prefix", prefix));
    }
    let body = get(&args.api.api, "/v1/tags", &query).await?;
    if args.api.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!("{:<40}  {:>8}", "TAG", "IMAGES");
    for item in body["items"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<40}  {:>8}",
            item["name"].as_str().unwrap_or(""),
            item["image_count"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

/// Decodes each file as the tagger does (limits, EXIF orientation), runs the
/// built-in models and the policy, and prints the result.
fn tag_files(args: TagArgs) -> anyhow::Result<()> {
    let dir = models::model_dir(args.model_dir.as_deref());
    let backend = models::load_local(&dir, Some(1))?;
    let policy = match &args.policy_file {
        Some(path) => imagetag_tagger::policy::Policy::load(path)?,
        None => imagetag_tagger::policy::Policy::default(),
    };
    let limits = imagetag_tagger::decode::DecodeLimits::default();
    let mut failures = 0;
    for file in &args.files {
        let name = file.display().to_string();
        let result = std::fs::read(file)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                Ok(imagetag_tagger::decode::decode_image(
                    bytes.into(),
                    &limits,
                )?)
            })
            .and_then(|image| {
                let output = backend.tag_blocking(&image.rgb)?;
                Ok((image, output))
            });
        let (image, output) = match result {
            Ok(done) => done,
            Err(err) => {
                failures += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({ "file": name, "error": format!("{err:#}") })
                    );
                } else {
                    eprintln!("{name}: {err:#}");
                }
                continue;
            }
        };
        let output = policy.apply(&name, output);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "file": name,
                    "facts": { "width": image.rgb.width(), "height": image.rgb.height(), "format": image.format },
                    "model": { "backend": "local", "version": imagetag_shared::ports::TaggingBackend::version(&backend) },
                    "output": output,
                })
            );
            continue;
        }
        println!(
            "{name} ({}×{} {})",
            image.rgb.width(),
            image.rgb.height(),
            image.format
        );
        for label in &output.labels {
            let parents = if label.parents.is_empty() {
                String::new()
            } else {
                format!("  ← {}", label.parents.join(" ← "))
            };
            println!("  {:>5.1}  {}{parents}", label.confidence, label.name);
            for instance in &label.instances {
                let b = instance.bounding_box;
                println!(
                    "         box {:.0}% at left {:.2} top {:.2} size {:.2}×{:.2}",
                    instance.confidence, b.left, b.top, b.width, b.height
                );
            }
        }
        for text in &output.text {
            println!("  text   {:?} ({:.0})", text.text, text.confidence);
        }
        for face in &output.faces {
            let b = face.bounding_box;
            println!(
                "  face   {:.0}% at left {:.2} top {:.2} size {:.2}×{:.2}",
                face.confidence, b.left, b.top, b.width, b.height
            );
        }
        match output.moderation.as_slice() {
            [] => println!("  safe   no unsafe content detected"),
            labels => {
                for m in labels {
                    println!("  unsafe {} ({:.0})", m.name, m.confidence);
                }
            }
        }
    }
    if failures > 0 {
        anyhow::bail!(
            "{failures} of {} file(s) could not be tagged",
            args.files.len()
        );
    }
    Ok(())
}

async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let body = get(&args.api.api, "/v1/stats", &[]).await?;
    let tags: Vec<(String, u64)> = body["top_tags"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|t| {
                    (
                        t["name"].as_str().unwrap_or("").to_owned(),
                        t["image_count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(path) = &args.plot {
        chart::bar_chart(path, "Most used tags", &tags)?;
    }
    if args.api.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let images = &body["images"];
    println!(
        "images: {} total, {} tagged, {} pending, {} rejected, {} failed",
        images["total"], images["tagged"], images["pending"], images["rejected"], images["failed"]
    );
    println!("{:<40}  {:>8}", "TAG", "IMAGES");
    for (name, count) in &tags {
        println!("{name:<40}  {count:>8}");
    }
    let categories = body["top_categories"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !categories.is_empty() {
        println!("{:<40}  {:>8}", "CATEGORY", "IMAGES");
        for c in categories {
            println!(
                "{:<40}  {:>8}",
                c["name"].as_str().unwrap_or(""),
                c["image_count"].as_u64().unwrap_or(0)
            );
        }
    }
    if let Some(path) = &args.plot {
        println!("chart written to {}", path.display());
    }
    Ok(())
}

fn create_key(args: KeyCreateArgs) -> anyhow::Result<()> {
    let scope = if args.read_only {
        imagetag_query::auth::Scope::Read
    } else {
        imagetag_query::auth::Scope::Write
    };
    let key = imagetag_query::auth::keys::create(&args.file, &args.name, scope)?;
    eprintln!(
        "key {} added to {}; it is shown only this once:",
        args.name,
        args.file.display()
    );
    println!("{key}");
    Ok(())
}

/// Moves dead-lettered messages back (see `imagetag_shared::redrive`).
async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let sdk = load_sdk_config(&args.aws).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let from = SqsQueue::new(client.clone(), &args.from);
    let to = SqsQueue::new(client, &args.to);
    let moved = imagetag_shared::redrive::redrive(&from, &to, args.max).await?;
    println!("moved {moved} message(s) from {} to {}", args.from, args.to);
    Ok(())
}
