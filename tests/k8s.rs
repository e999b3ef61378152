//! Tests of the Kubernetes manifests under `k8s/`.
//!
//! Every overlay is rendered with every subset of the components, the way an
//! operator composes them (a kustomization of their own with the overlay as
//! its resource, the components, and the overlay's namespace), with
//! `kubectl kustomize`. The rendered objects are then
//!
//! - validated against the Kubernetes 1.32 schemas (`kubernetes-validate
//!   --strict`), and the KEDA objects against KEDA's CRD schemas vendored in
//!   `k8s/schemas/keda` (Python `jsonschema`), both from the test venv;
//! - scanned by checkov, as is `deploy/imagetag.yaml`: no failed check, and
//!   every skipped check carries its reason next to it;
//! - compared with the binaries: each container runs a binary of this
//!   workspace, sets only environment variables that binary reads (its
//!   `--help`), probes the paths and port the binary serves, and the metric
//!   names used in `k8s/` and `docs/operations.md` are the ones exported;
//! - checked for the security settings every container must have.
//!
//! kubectl must be installed (it renders the manifests; no cluster needed).
//! The service binaries must be built (`cargo build --workspace --bins`, as
//! the README's test command does).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value as Json, json};

use support::{load_template, venv_bin, workspace_root};

/// Metric names the services export (shared telemetry; histograms also
/// appear with the `_bucket`, `_sum` and `_count` suffixes). A constant for
/// now: the names are being added to the services as these tests are
/// written; a scrape of a running service can replace it.
const METRICS: &[&str] = &[
    "imagetag_messages_received_total",
    "imagetag_messages_processed_total",
    "imagetag_messages_failed_total",
    "imagetag_message_processing_seconds",
    "imagetag_messages_in_flight",
    "imagetag_tagger_stage_seconds",
    "imagetag_images_tagged_total",
    "imagetag_http_request_duration_seconds",
];

/// Environment variables a manifest may set although no `--help` lists
/// them: read by the logging and tracing setup of every binary.
const STANDARD_ENV: &[&str] = &["RUST_LOG"];
const STANDARD_ENV_PREFIXES: &[&str] = &["OTEL_"];

/// The only Secret a manifest may reference (never hold): the query
/// service's cursor-signing key, which it reads only from its environment.
const ALLOWED_SECRET_ENV: &[&str] = &["IMAGETAG_CURSOR_SECRET"];

/// Each queue consumer: its binary, the variable naming the queue it reads
/// (which its KEDA trigger must watch) and the longest single job it can
/// have started just before SIGTERM, in seconds. The grace period of its pods
/// must exceed shutdown grace + long-poll wait + that job.
const CONSUMERS: &[(&str, &str, u64)] = &[
    // HEAD, one conditional write, one send.
    ("imagetag-ingest", "IMAGETAG_EVENTS_QUEUE_URL", 5),
    // Download (<= 50 MB), decode (<= 40 MP), inference, thumbnail upload.
    ("imagetag-tagger", "IMAGETAG_TAG_QUEUE_URL", 30),
    // One DynamoDB transaction with retries.
    ("imagetag-indexer", "IMAGETAG_INDEX_QUEUE_URL", 10),
];

/// API groups whose objects are custom resources: not in the Kubernetes
/// schemas. KEDA's are checked against its vendored CRDs instead.
const CUSTOM_GROUPS: &[&str] = &["keda.sh", "monitoring.coreos.com"];

/// Keys the `aws-sqs-queue` scaler understands (KEDA 2.16). KEDA ignores
/// unknown keys, so a misspelt one would silently fall back to a default.
const SQS_TRIGGER_KEYS: &[&str] = &[
    "queueURL",
    "queueURLFromEnv",
    "queueLength",
    "activationQueueLength",
    "awsRegion",
    "awsEndpoint",
    "scaleOnInFlight",
    "scaleOnDelayed",
];

/// checkov lives in a venv of its own: it pins boto3 exactly (1.35.49),
/// which would downgrade the boto3/botocore that moto serves from in the
/// shared venv (`tests/support/moto.rs`).
const CHECKOV_REQUIREMENT: &str = "checkov==3.3.30";

// ---------------------------------------------------------------- rendering

struct Render {
    /// `<overlay>` or `<overlay>+<component>+...`.
    name: String,
    namespace: String,
    components: Vec<String>,
    objects: Vec<Json>,
}

fn k8s_dir() -> PathBuf {
    workspace_root().join("k8s")
}

/// A fresh scratch directory under the target directory, removed when
/// dropped. Unique per call: under nextest every test is its own process,
/// and each renders on its own.
fn scratch(name: &str) -> tempfile::TempDir {
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", parent.display()))
}

/// Names of the kustomizations directly under `dir`, sorted.
fn kustomizations(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.join("kustomization.yaml").is_file())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn kubectl_kustomize(dir: &Path) -> Vec<Json> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kubectl ({e}). kubectl renders the manifests \
                 (`kubectl kustomize`, no cluster needed): install kubectl 1.27 or later"
            )
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_documents(
        &String::from_utf8_lossy(&output.stdout),
        &dir.display().to_string(),
    )
}

/// The YAML documents of a stream as JSON values (empty documents dropped).
fn parse_documents(text: &str, origin: &str) -> Vec<Json> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            let value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{origin}: invalid YAML: {e}"));
            serde_json::to_value(value).unwrap_or_else(|e| panic!("{origin}: {e}"))
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// `to` relative to the directory `from` (kustomize refuses absolute paths
/// to other kustomizations).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().expect("existing directory");
    let to = to.canonicalize().expect("existing directory");
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut path = PathBuf::new();
    for _ in from.components().skip(common) {
        path.push("..");
    }
    for part in to.components().skip(common) {
        path.push(part);
    }
    path
}

/// Every overlay with every subset of the components, rendered once per test
/// binary (the tests share it).
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(render_all)
}

fn render_all() -> Vec<Render> {
    let started = Instant::now();
    let overlays = kustomizations(&k8s_dir().join("overlays"));
    let components = kustomizations(&k8s_dir().join("components"));
    for expected in ["aws", "dev"] {
        assert!(
            overlays.iter().any(|o| o == expected),
            "k8s/overlays/{expected} is missing"
        );
    }
    for expected in ["keda", "rekognition", "otel", "servicemonitor", "ingress"] {
        assert!(
            components.iter().any(|c| c == expected),
            "k8s/components/{expected} is missing"
        );
    }
    let scratch = scratch("k8s-render");
    let root = scratch.path();

    let mut jobs = Vec::new();
    for overlay in &overlays {
        // The namespace the overlay puts everything in; the composing
        // kustomization repeats it so the components' objects land there too.
        let plain = kubectl_kustomize(&k8s_dir().join("overlays").join(overlay));
        let namespaces: Vec<&str> = plain
            .iter()
            .filter(|o| kind(o) == "Namespace")
            .map(name)
            .collect();
        assert_eq!(
            namespaces.len(),
            1,
            "overlay {overlay} must render exactly one Namespace, found {namespaces:?}"
        );
        let namespace = namespaces[0].to_owned();
        for mask in 0..1u32 << components.len() {
            let chosen: Vec<String> = components
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| c.clone())
                .collect();
            let name = std::iter::once(overlay.clone())
                .chain(chosen.iter().cloned())
                .collect::<Vec<_>>()
                .join("+");
            jobs.push((overlay.clone(), namespace.clone(), chosen, name));
        }
    }

    // kubectl takes a fraction of a second per render; a few at a time.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 6));
    let chunk = jobs.len().div_ceil(workers);
    let mut renders: Vec<Render> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|jobs| {
                scope.spawn(move || {
                    jobs.iter()
                        .map(|(overlay, namespace, chosen, name)| {
                            render_combination(root, overlay, namespace, chosen, name)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(renders) => renders,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    renders.sort_by(|a, b| a.name.cmp(&b.name));
    eprintln!(
        "rendered {} combinations ({} overlays x 2^{} component subsets) in {:.1?}",
        renders.len(),
        overlays.len(),
        components.len(),
        started.elapsed()
    );
    renders
}

fn render_combination(
    root: &Path,
    overlay: &str,
    namespace: &str,
    components: &[String],
    name: &str,
) -> Render {
    let dir = root.join(name);
    fs::create_dir_all(&dir).expect("render directory");
    let overlay_path = relative(&dir, &k8s_dir().join("overlays").join(overlay));
    let component_paths: Vec<String> = components
        .iter()
        .map(|c| {
            relative(&dir, &k8s_dir().join("components").join(c))
                .display()
                .to_string()
        })
        .collect();
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": [overlay_path.display().to_string()],
        "components": component_paths,
    });
    fs::write(
        dir.join("kustomization.yaml"),
        serde_yaml::to_string(&kustomization).expect("YAML"),
    )
    .expect("write kustomization");
    Render {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        components: components.to_vec(),
        objects: kubectl_kustomize(&dir),
    }
}

fn kind(object: &Json) -> &str {
    object["kind"].as_str().unwrap_or("")
}

fn name(object: &Json) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

fn api_group(object: &Json) -> &str {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn label(object: &Json) -> String {
    format!("{}/{}", kind(object), name(object))
}

fn of_kind<'a>(render: &'a Render, wanted: &'a str) -> impl Iterator<Item = &'a Json> + 'a {
    render.objects.iter().filter(move |o| kind(o) == wanted)
}

fn find<'a>(render: &'a Render, wanted_kind: &str, wanted_name: &str) -> Option<&'a Json> {
    render
        .objects
        .iter()
        .find(|o| kind(o) == wanted_kind && name(o) == wanted_name)
}

/// Distinct objects over all renders, each with one render it comes from.
fn unique_objects() -> Vec<(&'static Json, &'static Render)> {
    let mut seen = BTreeSet::new();
    let mut unique = Vec::new();
    for render in renders() {
        for object in &render.objects {
            if seen.insert(serde_json::to_string(object).expect("JSON")) {
                unique.push((object, render));
            }
        }
    }
    unique
}

fn matches_selector(selector: &Json, labels: &Json) -> bool {
    let match_labels = selector["matchLabels"].as_object();
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(key, value)| labels[key] == *value);
    let expressions_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|expression| {
            let value = &labels[expression["key"].as_str().unwrap_or("")];
            let values = expression["values"].as_array().cloned().unwrap_or_default();
            match expression["operator"].as_str() {
                Some("In") => values.contains(value),
                Some("NotIn") => !values.contains(value),
                Some("Exists") => !value.is_null(),
                Some("DoesNotExist") => value.is_null(),
                other => panic!("unknown selector operator {other:?}"),
            }
        });
    labels_ok && expressions_ok
}

// ---------------------------------------------------------------- tools

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// checkov from its own pinned venv, `<workspace>/.cache/checkov-venv`:
/// checkov pins an older boto3 than moto needs, so it cannot share theirs.
fn checkov_bin() -> PathBuf {
    support::ensure_pinned_venv("checkov-venv", &[CHECKOV_REQUIREMENT], &["checkov"])
        .join("bin")
        .join("checkov")
}

/// Runs checkov with JSON output and returns (failed, skipped) check
/// results, after asserting that it parsed everything it was given.
fn checkov(args: &[&str], cwd: &Path) -> (Vec<Json>, Vec<Json>) {
    let checkov = checkov_bin();
    let output = run(Command::new(&checkov)
        .args(["--skip-download", "--output", "json"])
        .args(args)
        .current_dir(cwd)
        .env("LOG_LEVEL", "WARNING"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov did not print a JSON report ({e}); exit {}:\n{}",
            output.status,
            text(&output)
        )
    });
    // One framework gives an object, several a list of them.
    let reports = match report {
        Json::Array(reports) => reports,
        report => vec![report],
    };
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for report in reports {
        assert_eq!(
            report["summary"]["parsing_errors"],
            json!(0),
            "checkov could not parse some files:\n{}",
            serde_json::to_string_pretty(&report["summary"]).unwrap()
        );
        assert!(
            report["summary"]["passed"].as_u64().unwrap_or(0) > 0,
            "checkov ran no check; exit {}:\n{}",
            output.status,
            text(&output)
        );
        failed.extend(
            report["results"]["failed_checks"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        skipped.extend(
            report["results"]["skipped_checks"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    (failed, skipped)
}

fn describe_checks(checks: &[Json]) -> String {
    checks
        .iter()
        .map(|check| {
            format!(
                "{} {} ({}): {}",
                check["check_id"].as_str().unwrap_or("?"),
                check["resource"].as_str().unwrap_or("?"),
                check["file_path"].as_str().unwrap_or("?"),
                check["check_name"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_skips_are_justified(skipped: &[Json]) {
    for check in skipped {
        let reason = check["check_result"]["suppress_comment"]
            .as_str()
            .unwrap_or("")
            .trim();
        assert!(
            reason.len() >= 20,
            "checkov skip without a reason next to it: {}",
            describe_checks(std::slice::from_ref(check))
        );
    }
}

// ---------------------------------------------------------------- binaries

/// Binary targets of the workspace, from cargo's own view of it.
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = run(Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root()));
    assert!(
        output.status.success(),
        "cargo metadata failed:\n{}",
        text(&output)
    );
    let metadata: Json = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|package| package["targets"].as_array().cloned().unwrap_or_default())
        .filter(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&json!("bin")))
        })
        .map(|target| target["name"].as_str().expect("target name").to_owned())
        .collect()
}

/// What a binary says about itself in `--help`.
struct Help {
    text: String,
}

impl Help {
    fn of(binary: &str) -> Help {
        let path = support::services::binary(binary);
        let output = run(Command::new(&path).arg("--help"));
        assert!(
            output.status.success(),
            "{} --help failed:\n{}",
            path.display(),
            text(&output)
        );
        Help {
            text: String::from_utf8_lossy(&output.stdout).into_owned(),
        }
    }

    /// Every `[env: NAME=...]` (clap hides the value of secret ones:
    /// `[env: NAME]`).
    fn env_vars(&self) -> BTreeSet<String> {
        self.text
            .match_indices("[env: ")
            .map(|(at, marker)| {
                self.text[at + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect()
            })
            .collect()
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flag_block(flag).is_some()
    }

    /// The help text of one option, from its name to the next option.
    fn flag_block(&self, flag: &str) -> Option<&str> {
        let start = self
            .text
            .match_indices(flag)
            .map(|(at, _)| at)
            .find(|&at| {
                let after = self.text[at + flag.len()..].chars().next();
                matches!(after, Some(' ' | '\n' | '=' | '<'))
            })?;
        let rest = &self.text[start + flag.len()..];
        let end = ["\n      --", "\n  -"]
            .iter()
            .filter_map(|next| rest.find(next))
            .min()
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    /// The `[default: ...]` of an option.
    fn default_of(&self, flag: &str) -> String {
        let block = self
            .flag_block(flag)
            .unwrap_or_else(|| panic!("--help has no {flag}:\n{}", self.text));
        let start = block
            .find("[default: ")
            .unwrap_or_else(|| panic!("{flag} has no default in --help:\n{block}"))
            + "[default: ".len();
        let end = block[start..].find(']').expect("closing bracket") + start;
        block[start..end].to_owned()
    }
}

fn helps() -> &'static BTreeMap<String, Help> {
    static HELPS: OnceLock<BTreeMap<String, Help>> = OnceLock::new();
    HELPS.get_or_init(|| {
        workspace_binaries()
            .into_iter()
            .map(|binary| {
                let help = Help::of(&binary);
                (binary, help)
            })
            .collect()
    })
}

fn port_of_address(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in listen address {address:?}"))
}

// ---------------------------------------------------------------- helpers on pods

/// The literal value an env entry gets: `value`, or the ConfigMap key it
/// references in the same render.
fn env_value(render: &Render, entry: &Json) -> Option<String> {
    if let Some(value) = entry["value"].as_str() {
        return Some(value.to_owned());
    }
    let reference = &entry["valueFrom"]["configMapKeyRef"];
    let config_map = find(render, "ConfigMap", reference["name"].as_str()?)?;
    config_map["data"][reference["key"].as_str()?]
        .as_str()
        .map(str::to_owned)
}

fn container_env(render: &Render, container: &Json) -> BTreeMap<String, Option<String>> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            (
                entry["name"].as_str().expect("env name").to_owned(),
                env_value(render, entry),
            )
        })
        .collect()
}

/// The binary a container runs: the file name of `command[0]`.
fn binary_of(container: &Json) -> String {
    let command = container["command"][0]
        .as_str()
        .unwrap_or_else(|| panic!("container {} has no command", container["name"]));
    command.rsplit('/').next().unwrap().to_owned()
}

fn resolve_port(container: &Json, port: &Json) -> i64 {
    match port {
        Json::Number(n) => n.as_i64().expect("port number"),
        Json::String(named) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == *named)
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("container {} has no port named {named}", container["name"])),
        other => panic!("unexpected port {other}"),
    }
}

fn deployments(render: &Render) -> impl Iterator<Item = &Json> {
    of_kind(render, "Deployment")
}

fn containers(deployment: &Json) -> Vec<&Json> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- tests

#[test]
fn every_overlay_and_component_combination_renders() {
    let renders = renders();
    let overlays = kustomizations(&k8s_dir().join("overlays"));
    let components = kustomizations(&k8s_dir().join("components"));
    assert_eq!(renders.len(), overlays.len() << components.len());

    for render in renders {
        let names: BTreeSet<&str> = deployments(render).map(name).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "imagetag-indexer",
                "imagetag-ingest",
                "imagetag-query",
                "imagetag-tagger"
            ]),
            "{}: Deployments",
            render.name
        );
        for object in &render.objects {
            // Every object but the Namespace itself lives in the overlay's
            // namespace; an object without one would land in `default`.
            let expected = if kind(object) == "Namespace" {
                assert_eq!(name(object), render.namespace, "{}", render.name);
                None
            } else {
                Some(render.namespace.as_str())
            };
            assert_eq!(
                object["metadata"]["namespace"].as_str(),
                expected,
                "{}: namespace of {}",
                render.name,
                label(object)
            );
        }
        // The overlays must fill in every placeholder of the base.
        let serialized = serde_json::to_string(&render.objects).unwrap();
        assert!(
            !serialized.contains("REPLACE_ME") && !serialized.contains("from-configmap"),
            "{}: a placeholder is left:\n{}",
            render.name,
            render
                .objects
                .iter()
                .map(|o| serde_yaml::to_string(o).unwrap())
                .filter(|o| o.contains("REPLACE_ME") || o.contains("from-configmap"))
                .collect::<Vec<_>>()
                .join("---\n")
        );
        // Each component adds what it is for.
        let has = |k: &str| render.objects.iter().any(|o| kind(o) == k);
        for component in &render.components {
            match component.as_str() {
                "keda" => assert!(
                    has("ScaledObject") && has("TriggerAuthentication"),
                    "{}",
                    render.name
                ),
                "servicemonitor" => assert!(
                    has("ServiceMonitor") && has("PodMonitor"),
                    "{}",
                    render.name
                ),
                "ingress" => assert!(has("Ingress"), "{}", render.name),
                _ => {}
            }
        }
    }
}

#[test]
fn rendered_objects_pass_kubernetes_validate_strict_for_1_32() {
    let scratch = scratch("k8s-validate");
    let dir = scratch.path();
    let objects: Vec<&Json> = unique_objects()
        .into_iter()
        .map(|(object, _)| object)
        .filter(|object| !CUSTOM_GROUPS.contains(&api_group(object)))
        .collect();
    let file = dir.join("objects.yaml");
    let stream: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    fs::write(&file, stream).expect("write objects");

    let started = Instant::now();
    let output = run(Command::new(venv_bin("kubernetes-validate"))
        .args(["--kubernetes-version", "1.32", "--strict", "--quiet"])
        .arg(&file));
    eprintln!(
        "kubernetes-validate: {} distinct objects in {:.1?}",
        objects.len(),
        started.elapsed()
    );
    let report = text(&output);
    assert!(
        output.status.success() && !report.contains("ERROR"),
        "kubernetes-validate --strict (1.32) rejected rendered objects:\n{report}"
    );
    // A kind it has no schema for is only a warning there; every object
    // here is a built-in kind, so that would be a wrong apiVersion.
    assert!(
        !report.contains("Couldn't find schema"),
        "an object has no Kubernetes 1.32 schema (wrong apiVersion or kind?):\n{report}"
    );
}

/// Validates objects against OpenAPI schemas from CRDs with the `jsonschema`
/// package of the test venv. Object schemas are made strict first (see
/// k8s/schemas/keda/README.md).
const VALIDATE_CRD_OBJECTS: &str = r#"
import json, sys
from jsonschema import Draft4Validator

def strict(schema):
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema

data = json.load(open(sys.argv[1]))
errors = []
for item in data["objects"]:
    validator = Draft4Validator(strict(data["schemas"][item["kind"]]))
    for error in sorted(validator.iter_errors(item["object"]), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in error.path) or "(root)"
        errors.append(f'{item["label"]}: {where}: {error.message}')
print(json.dumps(errors))
"#;

#[test]
fn keda_objects_validate_against_the_vendored_crds() {
    let mut schemas = serde_json::Map::new();
    for file in [
        "scaledobjects.keda.sh.yaml",
        "triggerauthentications.keda.sh.yaml",
    ] {
        let path = k8s_dir().join("schemas/keda").join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let crd = &parse_documents(&text, &path.display().to_string())[0];
        let version = crd["spec"]["versions"]
            .as_array()
            .and_then(|versions| versions.iter().find(|v| v["name"] == "v1alpha1"))
            .unwrap_or_else(|| panic!("{}: no v1alpha1", path.display()));
        let schema = version["schema"]["openAPIV3Schema"].clone();
        assert!(schema.is_object(), "{}: no openAPIV3Schema", path.display());
        schemas.insert(
            crd["spec"]["names"]["kind"].as_str().unwrap().to_owned(),
            schema,
        );
    }

    let keda: Vec<(&Json, &Render)> = unique_objects()
        .into_iter()
        .filter(|(object, _)| api_group(object) == "keda.sh")
        .collect();
    assert!(
        keda.iter().any(|(o, _)| kind(o) == "ScaledObject")
            && keda.iter().any(|(o, _)| kind(o) == "TriggerAuthentication"),
        "no KEDA objects rendered"
    );
    for (object, render) in &keda {
        assert_eq!(
            object["apiVersion"],
            "keda.sh/v1alpha1",
            "{}",
            label(object)
        );
        assert!(
            schemas.contains_key(kind(object)),
            "{}: no vendored schema for {}",
            render.name,
            kind(object)
        );
    }

    let scratch = scratch("k8s-keda");
    let dir = scratch.path();
    let input = json!({
        "schemas": schemas,
        "objects": keda.iter().map(|(object, render)| json!({
            "kind": kind(object),
            "label": format!("{} {}", render.name, label(object)),
            "object": object,
        })).collect::<Vec<_>>(),
    });
    let input_path = dir.join("input.json");
    fs::write(&input_path, serde_json::to_vec(&input).unwrap()).expect("write input");
    let script = dir.join("validate.py");
    fs::write(&script, VALIDATE_CRD_OBJECTS).expect("write script");
    let python = support::ensure_venv().join("bin/python");
    let output = run(Command::new(python).arg(&script).arg(&input_path));
    assert!(
        output.status.success(),
        "schema validation did not run:\n{}",
        text(&output)
    );
    let errors: Vec<String> = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("validator output ({e}):\n{}", text(&output)));
    assert!(
        errors.is_empty(),
        "KEDA objects do not match KEDA's CRD schemas:\n{}",
        errors.join("\n")
    );

    // What the schema cannot say: the trigger's free-form metadata.
    for render in renders()
        .iter()
        .filter(|r| r.components.iter().any(|c| c == "keda"))
    {
        for authentication in of_kind(render, "TriggerAuthentication") {
            let identity = &authentication["spec"]["podIdentity"];
            assert_eq!(
                identity["provider"],
                "aws",
                "{}: {}",
                render.name,
                label(authentication)
            );
            assert!(
                identity["roleArn"].is_null() || identity["identityOwner"].is_null(),
                "{}: roleArn and identityOwner are mutually exclusive",
                render.name
            );
        }
        let scaled: Vec<&Json> = of_kind(render, "ScaledObject").collect();
        for (consumer, queue_env, _) in CONSUMERS {
            let target_deployment = find(render, "Deployment", consumer)
                .unwrap_or_else(|| panic!("{}: no Deployment {consumer}", render.name));
            let object = scaled
                .iter()
                .find(|o| o["spec"]["scaleTargetRef"]["name"] == *consumer)
                .unwrap_or_else(|| panic!("{}: no ScaledObject scales {consumer}", render.name));
            let spec = &object["spec"];
            let min = spec["minReplicaCount"].as_i64().unwrap_or(0);
            let max = spec["maxReplicaCount"].as_i64().expect("maxReplicaCount");
            assert!(
                min <= max && max > 0,
                "{}: {} replicas {min}..{max}",
                render.name,
                label(object)
            );
            let container = containers(target_deployment)[0];
            let queue_url = container_env(render, container)
                .remove(*queue_env)
                .flatten()
                .unwrap_or_else(|| panic!("{}: {consumer} has no {queue_env}", render.name));
            let region = container_env(render, container)
                .remove("AWS_REGION")
                .flatten()
                .unwrap_or_else(|| panic!("{}: {consumer} has no AWS_REGION", render.name));
            let triggers = spec["triggers"].as_array().expect("triggers");
            assert_eq!(triggers.len(), 1, "{}: {}", render.name, label(object));
            let trigger = &triggers[0];
            assert_eq!(
                trigger["type"],
                "aws-sqs-queue",
                "{}: {}",
                render.name,
                label(object)
            );
            let authentication = trigger["authenticationRef"]["name"].as_str().unwrap_or("");
            assert!(
                find(render, "TriggerAuthentication", authentication).is_some(),
                "{}: {} uses missing TriggerAuthentication {authentication:?}",
                render.name,
                label(object)
            );
            let metadata = trigger["metadata"].as_object().expect("trigger metadata");
            for key in metadata.keys() {
                assert!(
                    SQS_TRIGGER_KEYS.contains(&key.as_str()),
                    "{}: {} has trigger key {key:?}, unknown to the aws-sqs-queue scaler",
                    render.name,
                    label(object)
                );
            }
            // KEDA must watch the queue the consumer actually reads.
            assert_eq!(
                metadata["queueURL"],
                json!(queue_url),
                "{}: {}",
                render.name,
                label(object)
            );
            assert_eq!(
                metadata["awsRegion"],
                json!(region),
                "{}: {}",
                render.name,
                label(object)
            );
            for key in ["queueLength", "activationQueueLength"] {
                let value = metadata[key].as_str().unwrap_or("");
                assert!(
                    value.parse::<u32>().is_ok(),
                    "{}: {} {key} {value:?} is not a count",
                    render.name,
                    label(object)
                );
            }
        }
        assert_eq!(
            scaled.len(),
            CONSUMERS.len(),
            "{}: one ScaledObject per consumer",
            render.name
        );
    }
}

#[test]
fn checkov_passes_on_the_rendered_manifests() {
    // Each distinct object is scanned once: checkov takes minutes on all
    // the renders, whose objects mostly repeat. Objects are packed into as
    // few files as keep (kind, name) unique per file, so its cross-resource
    // checks still see consistent sets.
    let scratch = scratch("k8s-checkov");
    let dir = scratch.path();
    // Per file: the (namespace, kind, name) keys in it, and its YAML.
    type Packed = (BTreeSet<(String, String, String)>, String);
    let mut files: Vec<Packed> = Vec::new();
    let unique = unique_objects();
    for (object, render) in &unique {
        let key = (
            render.namespace.clone(),
            kind(object).to_owned(),
            name(object).to_owned(),
        );
        let document = format!("---\n{}", serde_yaml::to_string(object).unwrap());
        match files.iter_mut().find(|(keys, _)| !keys.contains(&key)) {
            Some((keys, text)) => {
                keys.insert(key);
                text.push_str(&document);
            }
            None => files.push((BTreeSet::from([key]), document)),
        }
    }
    for (i, (_, text)) in files.iter().enumerate() {
        fs::write(dir.join(format!("objects-{i:02}.yaml")), text).expect("write objects");
    }
    let started = Instant::now();
    let (failed, skipped) = checkov(&["--framework", "kubernetes", "--directory", "."], dir);
    eprintln!(
        "checkov (kubernetes): {} distinct objects in {} files, {:.1?}",
        unique.len(),
        files.len(),
        started.elapsed()
    );
    if !failed.is_empty() {
        // Kept for a look at the objects the resource names refer to.
        let kept = scratch.keep();
        panic!(
            "checkov failed checks on the rendered manifests (files kept in {}):\n{}",
            kept.display(),
            describe_checks(&failed)
        );
    }
    assert_skips_are_justified(&skipped);
}

#[test]
fn checkov_passes_on_the_cloudformation_template() {
    let started = Instant::now();
    let (failed, skipped) = checkov(
        &[
            "--framework",
            "cloudformation",
            "--file",
            "deploy/imagetag.yaml",
        ],
        &workspace_root(),
    );
    eprintln!("checkov (cloudformation): {:.1?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "checkov failed checks on deploy/imagetag.yaml:\n{}",
        describe_checks(&failed)
    );
    assert_skips_are_justified(&skipped);
}

#[test]
fn manifests_match_what_the_binaries_serve_and_read() {
    let helps = helps();
    let mut checked = 0;
    for (deployment, render) in unique_objects()
        .into_iter()
        .filter(|(object, _)| kind(object) == "Deployment")
    {
        let context = format!("{} {}", render.name, label(deployment));
        let pod = &deployment["spec"]["template"]["spec"];
        for container in containers(deployment) {
            let binary = binary_of(container);
            let command = container["command"][0].as_str().unwrap();
            assert_eq!(
                command,
                format!("/usr/local/bin/{binary}"),
                "{context}: binaries are installed in /usr/local/bin (Dockerfile)"
            );
            let help = helps.get(&binary).unwrap_or_else(|| {
                panic!(
                    "{context}: {binary} is not a binary of this workspace ({:?})",
                    helps.keys()
                )
            });
            for arg in container["args"].as_array().into_iter().flatten() {
                let arg = arg.as_str().unwrap_or("");
                if let Some(flag) = arg.strip_prefix("--") {
                    let flag = format!("--{}", flag.split('=').next().unwrap());
                    assert!(help.has_flag(&flag), "{context}: {binary} has no {flag}");
                }
            }

            // Environment: only what the binary reads.
            let read = help.env_vars();
            let names: Vec<&str> = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().expect("env name"))
                .collect();
            let distinct: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                names.len(),
                "{context}: duplicate env {names:?}"
            );
            for name in &names {
                let standard = STANDARD_ENV.contains(name)
                    || STANDARD_ENV_PREFIXES.iter().any(|p| name.starts_with(p));
                assert!(
                    read.contains(*name) || standard,
                    "{context}: sets {name}, which `{binary} --help` does not list (it reads {read:?})"
                );
            }
            assert!(
                container["envFrom"].is_null(),
                "{context}: envFrom would hand the container variables it does not read"
            );
            for entry in container["env"].as_array().into_iter().flatten() {
                let reference = &entry["valueFrom"]["configMapKeyRef"];
                if !reference.is_null() {
                    assert!(
                        env_value(render, entry).is_some(),
                        "{context}: {} references missing ConfigMap key {reference}",
                        entry["name"]
                    );
                }
            }
            let env = container_env(render, container);

            // The port the binary listens on, and the probes on it.
            let (flag, variable) = if help.has_flag("--health-listen") {
                ("--health-listen", "IMAGETAG_HEALTH_LISTEN")
            } else {
                ("--listen", "IMAGETAG_LISTEN")
            };
            let address = env
                .get(variable)
                .cloned()
                .flatten()
                .unwrap_or_else(|| help.default_of(flag));
            let port = port_of_address(&address);
            // The ports the services are documented to use.
            let documented = if flag == "--listen" { 8080 } else { 9090 };
            assert_eq!(port, documented, "{context}: {binary} listens on {address}");
            assert!(
                container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["containerPort"] == json!(port)),
                "{context}: no containerPort {port}"
            );
            for (probe, path) in [
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
                ("startupProbe", "/healthz"),
            ] {
                let get = &container[probe]["httpGet"];
                if probe == "startupProbe" && container[probe].is_null() {
                    continue;
                }
                assert_eq!(get["path"], path, "{context}: {probe} path");
                assert_eq!(
                    resolve_port(container, &get["port"]),
                    port,
                    "{context}: {probe} port"
                );
            }

            // Scale-in never cuts a job short.
            if let Some((_, _, job)) = CONSUMERS.iter().find(|(b, _, _)| *b == binary) {
                let seconds = |flag: &str, variable: &str| -> u64 {
                    env.get(variable)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| help.default_of(flag))
                        .parse()
                        .unwrap_or_else(|e| panic!("{context}: {variable}: {e}"))
                };
                let grace = seconds(
                    "--shutdown-grace-seconds",
                    "IMAGETAG_SHUTDOWN_GRACE_SECONDS",
                );
                let wait = seconds("--receive-wait-seconds", "IMAGETAG_RECEIVE_WAIT_SECONDS");
                let termination = pod["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{context}: no terminationGracePeriodSeconds"));
                assert!(
                    termination > grace + wait + job,
                    "{context}: terminationGracePeriodSeconds {termination} must exceed \
                     shutdown grace {grace} + long-poll wait {wait} + longest job {job}"
                );
            }

            // The tagging policy the tagger is pointed at is mounted.
            if let Some(Some(policy)) = env.get("IMAGETAG_POLICY_FILE") {
                let policy = Path::new(policy);
                let mount = container["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| policy.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
                    .unwrap_or_else(|| {
                        panic!("{context}: nothing mounted at {}", policy.display())
                    });
                let volume = pod["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == mount["name"])
                    .expect("mounted volume");
                let config_map = find(
                    render,
                    "ConfigMap",
                    volume["configMap"]["name"].as_str().unwrap_or(""),
                )
                .unwrap_or_else(|| panic!("{context}: policy volume is not a rendered ConfigMap"));
                let key = policy.file_name().unwrap().to_str().unwrap();
                let toml = config_map["data"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{context}: {} has no key {key}", label(config_map)));
                imagetag_tagger::policy::Policy::from_toml(toml).unwrap_or_else(|e| {
                    panic!("{context}: the mounted policy does not parse: {e}")
                });
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "no containers checked");

    for render in renders() {
        // The query Service reaches the API port.
        let query = find(render, "Deployment", "imagetag-query").expect("query Deployment");
        let query_container = containers(query)[0];
        let pod_labels = &query["spec"]["template"]["metadata"]["labels"];
        let service = find(render, "Service", "imagetag-query").expect("query Service");
        assert!(matches_selector(
            &json!({"matchLabels": service["spec"]["selector"]}),
            pod_labels
        ));
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            assert_eq!(
                resolve_port(query_container, &port["targetPort"]),
                8080,
                "{}",
                render.name
            );
        }

        // Prometheus scrapes /metrics on ports that exist.
        for monitor in of_kind(render, "ServiceMonitor") {
            assert!(matches_selector(
                &monitor["spec"]["selector"],
                &service["metadata"]["labels"]
            ));
            for endpoint in monitor["spec"]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(endpoint["path"], "/metrics", "{}", render.name);
                assert!(
                    service["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == endpoint["port"]),
                    "{}: ServiceMonitor port {} is not a port of the Service",
                    render.name,
                    endpoint["port"]
                );
            }
        }
        for monitor in of_kind(render, "PodMonitor") {
            let selected: Vec<&Json> = deployments(render)
                .filter(|d| {
                    matches_selector(
                        &monitor["spec"]["selector"],
                        &d["spec"]["template"]["metadata"]["labels"],
                    )
                })
                .collect();
            let selected_names: BTreeSet<&str> = selected.iter().map(|d| name(d)).collect();
            let consumers: BTreeSet<&str> = CONSUMERS.iter().map(|(b, _, _)| *b).collect();
            assert_eq!(
                selected_names, consumers,
                "{}: PodMonitor selects the consumers",
                render.name
            );
            for endpoint in monitor["spec"]["podMetricsEndpoints"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(endpoint["path"], "/metrics", "{}", render.name);
                for deployment in &selected {
                    let container = containers(deployment)[0];
                    assert_eq!(
                        resolve_port(container, &endpoint["port"]),
                        9090,
                        "{}: PodMonitor port on {}",
                        render.name,
                        name(deployment)
                    );
                }
            }
        }
        // ... and the network policies let it in there.
        let admits_monitoring = of_kind(render, "NetworkPolicy").any(|policy| {
            policy["spec"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| {
                    rule["from"].as_array().into_iter().flatten().any(|peer| {
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            == "monitoring"
                    }) && rule["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["port"] == 9090)
                })
        });
        assert!(
            admits_monitoring,
            "{}: no policy admits the monitoring namespace on 9090",
            render.name
        );
    }

    // Metric names used in manifests and docs are ones the services export,
    // and the docs list them all.
    let mut files = vec![workspace_root().join("docs/operations.md")];
    collect_files(&k8s_dir(), &mut files);
    let known: BTreeSet<&str> = METRICS.iter().copied().collect();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for metric in metric_names(&text) {
            assert!(
                known.contains(metric.as_str()),
                "{} uses metric {metric}, which the services do not export ({METRICS:?})",
                file.display()
            );
        }
    }
    let docs = fs::read_to_string(workspace_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    let documented = metric_names(&docs);
    for metric in METRICS {
        assert!(
            documented.contains(*metric),
            "docs/operations.md does not document {metric}"
        );
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Every `imagetag_...` metric name in a text, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("imagetag_")
        .filter(|(at, _)| {
            // Not the middle of a longer identifier.
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| METRICS.contains(base) && base.ends_with("_seconds"))
                })
                .map_or(name.clone(), str::to_owned)
        })
        .collect()
}

#[test]
fn every_container_is_locked_down() {
    for render in renders() {
        assert!(
            of_kind(render, "Secret").next().is_none(),
            "{}: manifests must not carry Secrets",
            render.name
        );
        let default_deny = of_kind(render, "NetworkPolicy").any(|p| {
            p["spec"]["podSelector"] == json!({})
                && p["spec"]["policyTypes"] == json!(["Ingress", "Egress"])
                && p["spec"]["ingress"].is_null()
                && p["spec"]["egress"].is_null()
        });
        assert!(
            default_deny,
            "{}: no default-deny NetworkPolicy",
            render.name
        );
        for deployment in deployments(render) {
            let context = format!("{} {}", render.name, label(deployment));
            let labels = &deployment["spec"]["template"]["metadata"]["labels"];
            assert!(
                of_kind(render, "PodDisruptionBudget")
                    .any(|p| matches_selector(&p["spec"]["selector"], labels)),
                "{context}: no PodDisruptionBudget"
            );
            assert!(
                of_kind(render, "NetworkPolicy")
                    .filter(|p| !p["spec"]["egress"].is_null())
                    .any(|p| matches_selector(&p["spec"]["podSelector"], labels)),
                "{context}: no NetworkPolicy allows its egress"
            );
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false, "{context}");
            let account = pod["serviceAccountName"].as_str().unwrap_or("");
            let service_account = find(render, "ServiceAccount", account).unwrap_or_else(|| {
                panic!("{context}: service account {account:?} is not rendered")
            });
            assert_eq!(
                service_account["automountServiceAccountToken"], false,
                "{context}"
            );
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{context}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{context}"
            );
            for field in ["hostNetwork", "hostPID", "hostIPC"] {
                assert!(
                    pod[field].is_null() || pod[field] == false,
                    "{context}: {field}"
                );
            }
            let volumes: HashMap<&str, &Json> = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| (v["name"].as_str().unwrap_or(""), v))
                .collect();
            for (volume_name, volume) in &volumes {
                assert!(
                    volume["hostPath"].is_null(),
                    "{context}: volume {volume_name} must not be hostPath"
                );
                // Secrets reach a pod as files (the API key hashes), never
                // as writable mounts.
                if !volume["secret"].is_null() {
                    for container in containers(deployment) {
                        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                            if mount["name"] == **volume_name {
                                assert_eq!(
                                    mount["readOnly"], true,
                                    "{context}: secret volume {volume_name} must be mounted read-only"
                                );
                            }
                        }
                    }
                }
            }
            assert!(
                pod["terminationGracePeriodSeconds"].as_u64().is_some(),
                "{context}"
            );

            for container in containers(deployment) {
                let context = format!("{context} container {}", container["name"]);
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            !container["resources"][bound][resource].is_null(),
                            "{context}: resources.{bound}.{resource}"
                        );
                    }
                }
                for probe in ["livenessProbe", "readinessProbe"] {
                    assert!(!container[probe]["httpGet"].is_null(), "{context}: {probe}");
                }
                let security = &container["securityContext"];
                assert_eq!(security["runAsNonRoot"], true, "{context}");
                assert!(
                    security["runAsUser"].as_u64().is_some_and(|uid| uid > 0),
                    "{context}: runAsUser"
                );
                assert_eq!(security["allowPrivilegeEscalation"], false, "{context}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{context}");
                assert!(
                    security["privileged"].is_null() || security["privileged"] == false,
                    "{context}"
                );
                assert_eq!(
                    security["capabilities"]["drop"],
                    json!(["ALL"]),
                    "{context}"
                );
                assert!(
                    security["capabilities"]["add"].is_null(),
                    "{context}: capabilities.add"
                );
                assert_eq!(
                    security["seccompProfile"]["type"], "RuntimeDefault",
                    "{context}"
                );
                // Scratch space on a read-only root: an emptyDir at /tmp.
                let tmp = container["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["mountPath"] == "/tmp")
                    .unwrap_or_else(|| panic!("{context}: nothing mounted at /tmp"));
                let volume = volumes[tmp["name"].as_str().unwrap()];
                assert!(
                    !volume["emptyDir"].is_null(),
                    "{context}: /tmp is not an emptyDir"
                );
                // Secrets are referenced, never written into a manifest.
                for entry in container["env"].as_array().into_iter().flatten() {
                    let env_name = entry["name"].as_str().unwrap_or("");
                    if !entry["valueFrom"]["secretKeyRef"].is_null() {
                        assert!(
                            ALLOWED_SECRET_ENV.contains(&env_name),
                            "{context}: {env_name} comes from a Secret"
                        );
                    }
                    let secret_like = ["SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY"]
                        .iter()
                        .any(|word| env_name.contains(word));
                    assert!(
                        !secret_like || entry["value"].is_null(),
                        "{context}: {env_name} has a literal value"
                    );
                }
            }
        }
        let hpa = find(render, "HorizontalPodAutoscaler", "imagetag-query")
            .unwrap_or_else(|| panic!("{}: no HorizontalPodAutoscaler for query", render.name));
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "imagetag-query");
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    }
}

#[test]
fn overlay_values_name_real_stack_outputs() {
    let template = load_template();
    let outputs = template["Outputs"].as_object().expect("template Outputs");
    // What the services need from the stack.
    let needed = [
        "EventsQueueUrl",
        "TagQueueUrl",
        "IndexQueueUrl",
        "ImagesTableName",
        "PostingsTableName",
        "TagsTableName",
        "BucketName",
        "IngestRoleArn",
        "TaggerRoleArn",
        "IndexerRoleArn",
        "QueryRoleArn",
    ];
    let base_keys: BTreeSet<String> = {
        let base = kubectl_kustomize(&k8s_dir().join("base"));
        let config = base
            .iter()
            .find(|o| kind(o) == "ConfigMap" && name(o).starts_with("imagetag-config"))
            .expect("base ConfigMap imagetag-config");
        config["data"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for overlay in kustomizations(&k8s_dir().join("overlays")) {
        let dir = k8s_dir().join("overlays").join(&overlay);
        let mut named = BTreeSet::new();
        for file in ["stack-outputs.env", "service-accounts.yaml"] {
            let path = dir.join(file);
            let text =
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut lines = text.lines().peekable();
            while let Some(line) = lines.next() {
                let Some(output) = line.trim().strip_prefix("# from output ") else {
                    continue;
                };
                assert!(
                    outputs.contains_key(output),
                    "{}: names output {output}, which deploy/imagetag.yaml does not have",
                    path.display()
                );
                named.insert(output.to_owned());
                let next = lines.peek().copied().unwrap_or("").trim();
                assert!(
                    !next.is_empty() && !next.starts_with('#'),
                    "{}: nothing after `# from output {output}`",
                    path.display()
                );
            }
            if file.ends_with(".env") {
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    let key = line.split('=').next().unwrap();
                    assert!(
                        base_keys.contains(key),
                        "{}: {key} is not a key of the base ConfigMap, so nothing reads it",
                        path.display()
                    );
                }
            }
        }
        for output in needed {
            assert!(
                named.contains(output),
                "overlay {overlay}: no value from output {output}"
            );
        }
    }
}

#[test]
fn the_tagging_policy_parses_with_the_tagger() {
    let path = k8s_dir().join("base/policy.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    imagetag_tagger::policy::Policy::from_toml(&text)
        .unwrap_or_else(|e| panic!("{} does not parse as a tagging policy: {e}", path.display()));
}
