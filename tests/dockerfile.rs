//! Checks of the `Dockerfile` that need no container engine (none is
//! available where the tests run): everything it copies exists, nothing it
//! copies is excluded by `.dockerignore`, the builder gets every workspace
//! member, the runtime stage runs as a non-root user without a shell, and it
//! installs every binary the Kubernetes Deployments run.
//!
//! The builder's binaries are checked against a local release build:
//! run `cargo build --release --workspace` first.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value as Json;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- parsing

#[derive(Debug)]
struct Instruction {
    keyword: String,
    arguments: String,
    line: usize,
}

#[derive(Debug)]
struct Stage {
    name: Option<String>,
    image: String,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.image.clone())
    }

    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// The working directory in effect at the end of the stage.
    fn workdir(&self) -> Option<&str> {
        self.all("WORKDIR").last().map(|i| i.arguments.trim())
    }
}

/// The Dockerfile as stages of instructions: comments dropped, continuation
/// lines joined.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut pending = String::new();
    let mut pending_line = 0;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if pending.is_empty() {
            pending_line = number + 1;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
                continue;
            }
            None => pending.push_str(trimmed),
        }
        let instruction = std::mem::take(&mut pending);
        let (keyword, arguments) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction.as_str(), ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            arguments: arguments.trim().to_owned(),
            line: pending_line,
        };
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.arguments.split_whitespace().collect();
            let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                other => panic!("Dockerfile line {pending_line}: cannot read FROM {other:?}"),
            };
            stages.push(Stage {
                name,
                image: words[0].to_owned(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
        } else {
            assert!(
                instruction.keyword == "ARG",
                "Dockerfile line {pending_line}: {} before the first FROM",
                instruction.keyword
            );
        }
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    stages
}

#[derive(Debug)]
struct Copy {
    from: Option<String>,
    sources: Vec<String>,
    destination: String,
    line: usize,
}

impl Copy {
    fn parse(instruction: &Instruction) -> Copy {
        let mut from = None;
        let mut rest = instruction.arguments.trim();
        while let Some(flag_text) = rest.strip_prefix("--") {
            let (flag, after) = flag_text
                .split_once(char::is_whitespace)
                .unwrap_or((flag_text, ""));
            if let Some(stage) = flag.strip_prefix("from=") {
                from = Some(stage.to_owned());
            }
            rest = after.trim_start();
        }
        let mut paths: Vec<String> = if rest.starts_with('[') {
            serde_json::from_str(rest).unwrap_or_else(|e| {
                panic!("Dockerfile line {}: bad JSON form ({e})", instruction.line)
            })
        } else {
            rest.split_whitespace().map(str::to_owned).collect()
        };
        assert!(
            paths.len() >= 2,
            "Dockerfile line {}: {} needs a source and a destination",
            instruction.line,
            instruction.keyword
        );
        let destination = paths.pop().unwrap();
        Copy {
            from,
            sources: paths,
            destination,
            line: instruction.line,
        }
    }

    /// Where one source lands in the image.
    fn target_of(&self, source: &str) -> String {
        if self.destination.ends_with('/') {
            let file = source.trim_end_matches('/').rsplit('/').next().unwrap();
            format!("{}{file}", self.destination)
        } else {
            self.destination.clone()
        }
    }
}

fn dockerfile() -> Vec<Stage> {
    let path = workspace_root().join("Dockerfile");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stages = parse_dockerfile(&text);
    assert!(stages.len() >= 2, "the Dockerfile should be multi-stage");
    stages
}

fn copies(stage: &Stage) -> Vec<Copy> {
    stage
        .instructions
        .iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        .map(|i| {
            assert_eq!(
                i.keyword, "COPY",
                "line {}: use COPY, not ADD (no remote or tar surprises)",
                i.line
            );
            Copy::parse(i)
        })
        .collect()
}

fn stage_named<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("COPY --from={name}: no stage of that name"))
}

/// The stage that compiles the workspace.
fn builder(stages: &[Stage]) -> &Stage {
    stages
        .iter()
        .find(|s| s.all("RUN").any(|r| r.arguments.contains("cargo build")))
        .expect("a stage runs cargo build")
}

fn runtime(stages: &[Stage]) -> &Stage {
    stages.last().unwrap()
}

// ---------------------------------------------------------------- .dockerignore

/// `.dockerignore` rules in order: (exclude?, pattern segments).
fn dockerignore() -> Vec<(bool, Vec<String>)> {
    let path = workspace_root().join(".dockerignore");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (exclude, pattern) = match line.strip_prefix('!') {
                Some(pattern) => (false, pattern),
                None => (true, line),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            (exclude, pattern.split('/').map(str::to_owned).collect())
        })
        .collect()
}

/// One path segment against one pattern segment (`*` and `?`).
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_matches(&pattern[1..], name)
                || (!name.is_empty() && segment_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => segment_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => segment_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// A whole path against a pattern (`**` spans any number of segments).
fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            path_matches(&pattern[1..], path)
                || (!path.is_empty() && path_matches(pattern, &path[1..]))
        }
        (Some(p), Some(name)) => {
            segment_matches(p.as_bytes(), name.as_bytes())
                && path_matches(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

/// Whether Docker leaves `path` (relative to the context) out of the
/// context: the last rule matching the path or one of its parents decides.
fn ignored(rules: &[(bool, Vec<String>)], path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut excluded = false;
    for (exclude, pattern) in rules {
        if (1..=segments.len()).any(|n| path_matches(pattern, &segments[..n])) {
            excluded = *exclude;
        }
    }
    excluded
}

// ---------------------------------------------------------------- cargo

fn cargo_metadata() -> Json {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata JSON")
}

/// Binaries the product ships. Packages marked `publish = false` (the
/// benchmark runner) are development tools and stay out of the image.
fn workspace_binaries() -> BTreeSet<String> {
    cargo_metadata()["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["publish"]
                .as_array()
                .is_none_or(|registries| !registries.is_empty())
        })
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Directory of each workspace package, relative to the workspace root
/// (the root package is "").
fn workspace_members() -> Vec<String> {
    let root = workspace_root().canonicalize().unwrap();
    cargo_metadata()["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().canonicalize().unwrap();
            dir.strip_prefix(&root)
                .unwrap_or_else(|_| panic!("{} is outside the workspace", dir.display()))
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Whether a COPY source (context-relative) brings `path` along.
fn covers(source: &str, path: &str) -> bool {
    let source = source.trim_start_matches("./").trim_end_matches('/');
    source == "." || source == path || path.starts_with(&format!("{source}/"))
}

// ---------------------------------------------------------------- tests

#[test]
fn files_copied_from_the_build_context_exist_and_are_not_dockerignored() {
    let stages = dockerfile();
    let rules = dockerignore();
    let mut checked = 0;
    for stage in &stages {
        for copy in copies(stage).iter().filter(|c| c.from.is_none()) {
            for source in &copy.sources {
                assert!(
                    !source.contains(['*', '?', '[']),
                    "Dockerfile line {}: name files explicitly, not {source}",
                    copy.line
                );
                let relative = source.trim_start_matches("./");
                let path = workspace_root().join(relative);
                assert!(
                    path.exists(),
                    "Dockerfile line {} (stage {}): copies {source}, which does not exist",
                    copy.line,
                    stage.label()
                );
                assert!(
                    !ignored(&rules, relative),
                    "Dockerfile line {}: copies {source}, but .dockerignore leaves it out of the context",
                    copy.line
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0,
        "the Dockerfile copies nothing from the context"
    );
}

#[test]
fn the_dockerignore_matcher_follows_docker_rules() {
    let rules = |text: &[&str]| -> Vec<(bool, Vec<String>)> {
        text.iter()
            .map(|l| match l.strip_prefix('!') {
                Some(p) => (false, p.split('/').map(str::to_owned).collect()),
                None => (true, l.split('/').map(str::to_owned).collect()),
            })
            .collect()
    };
    // Anchored at the context root, unlike .gitignore.
    assert!(ignored(&rules(&["tests"]), "tests/k8s.rs"));
    assert!(!ignored(&rules(&["tests"]), "services/ingest/tests"));
    assert!(ignored(
        &rules(&["**/node_modules"]),
        "tests/browser/node_modules/x"
    ));
    assert!(ignored(&rules(&["**/*.swp"]), "src/main.rs.swp"));
    assert!(!ignored(
        &rules(&["target", "!target"]),
        "target/release/imagetag"
    ));
    assert!(ignored(
        &rules(&["scripts/*", "!scripts/models", "scripts/models/x.py"]),
        "scripts/models/x.py"
    ));
    assert!(!ignored(
        &rules(&["scripts/*", "!scripts/models"]),
        "scripts/models/x.py"
    ));
}

#[test]
fn files_copied_from_the_builder_exist_after_a_release_build() {
    let stages = dockerfile();
    let builder = builder(&stages);
    let build = builder
        .all("RUN")
        .find(|r| r.arguments.contains("cargo build"))
        .unwrap();
    for flag in ["--release", "--locked", "--workspace"] {
        assert!(
            build.arguments.contains(flag),
            "Dockerfile line {}: the builder should run cargo build {flag}",
            build.line
        );
    }
    let workdir = builder
        .workdir()
        .expect("the builder sets WORKDIR")
        .trim_end_matches('/');
    let builder_name = builder.name.as_deref().expect("the builder stage is named");
    let mut checked = 0;
    for stage in &stages {
        for copy in copies(stage) {
            let Some(from) = copy.from.as_deref() else {
                continue;
            };
            if from != builder_name {
                // Output of another stage's RUN: that stage must make it.
                let source_stage = stage_named(&stages, from);
                for source in &copy.sources {
                    assert!(
                        source_stage
                            .all("RUN")
                            .any(|r| r.arguments.contains(source.as_str())),
                        "Dockerfile line {}: copies {source} from stage {from}, where no RUN makes it",
                        copy.line
                    );
                }
                continue;
            }
            for source in &copy.sources {
                let relative = source
                    .strip_prefix(&format!("{workdir}/"))
                    .unwrap_or_else(|| {
                        panic!(
                            "Dockerfile line {}: {source} is outside the builder's WORKDIR {workdir}",
                            copy.line
                        )
                    });
                let path = workspace_root().join(relative);
                if relative.starts_with("target/release/") {
                    assert!(
                        path.exists(),
                        "{} is missing: run `cargo build --release --workspace` first (the \
                         Dockerfile's builder stage runs the same build and copies this file \
                         from it, line {})",
                        path.display(),
                        copy.line
                    );
                } else {
                    assert!(
                        path.exists(),
                        "Dockerfile line {}: {source} does not exist",
                        copy.line
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "nothing is copied from the builder stage");
}

#[test]
fn the_builder_gets_every_workspace_member() {
    let stages = dockerfile();
    let builder = builder(&stages);
    let sources: Vec<String> = copies(builder)
        .into_iter()
        .filter(|c| c.from.is_none())
        .flat_map(|c| c.sources)
        .collect();
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    for member in workspace_members() {
        if member.is_empty() {
            // The root package: its manifest is Cargo.toml, its code src/.
            needed.push("src".to_owned());
        } else {
            needed.push(member);
        }
    }
    for path in needed {
        assert!(
            sources.iter().any(|s| covers(s, &path)),
            "the builder stage does not COPY {path}, so `cargo build --workspace` fails in Docker"
        );
    }
}

#[test]
fn the_runtime_stage_runs_as_a_numeric_non_root_user_without_a_shell() {
    let stages = dockerfile();
    let runtime = runtime(&stages);
    let user = runtime
        .all("USER")
        .last()
        .unwrap_or_else(|| panic!("the runtime stage ({}) sets no USER", runtime.label()));
    let uid = user.arguments.split(':').next().unwrap();
    let uid: u32 = uid.parse().unwrap_or_else(|_| {
        panic!(
            "Dockerfile line {}: USER {} should be numeric, so Kubernetes can check runAsNonRoot",
            user.line, user.arguments
        )
    });
    assert_ne!(
        uid, 0,
        "Dockerfile line {}: the runtime user is root",
        user.line
    );
    // The runtime image has no shell: a RUN, or a shell-form ENTRYPOINT or
    // CMD, would need one.
    assert!(
        runtime.all("RUN").next().is_none(),
        "the runtime stage has no shell to RUN with"
    );
    for keyword in ["ENTRYPOINT", "CMD"] {
        for instruction in runtime.all(keyword) {
            assert!(
                instruction.arguments.starts_with('['),
                "Dockerfile line {}: {keyword} must use the exec (JSON) form",
                instruction.line
            );
        }
    }
    // Deployments choose the binary with `command`; an ENTRYPOINT would be
    // replaced anyway and only confuse `docker run`.
    assert!(
        runtime.all("ENTRYPOINT").next().is_none(),
        "the runtime stage sets an ENTRYPOINT"
    );
}

#[test]
fn the_image_holds_every_binary_and_the_models_the_deployments_use() {
    let stages = dockerfile();
    let runtime = runtime(&stages);
    let copies = copies(runtime);
    let installed: BTreeSet<String> = copies
        .iter()
        .flat_map(|c| c.sources.iter().map(|s| c.target_of(s)))
        .collect();

    for binary in workspace_binaries() {
        assert!(
            installed.contains(&format!("/usr/local/bin/{binary}")),
            "the image lacks the workspace binary {binary} in /usr/local/bin (it has {installed:?})"
        );
    }

    let output = Command::new("kubectl")
        .args(["kustomize"])
        .arg(workspace_root().join("k8s/base"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): it renders k8s/ (`kubectl kustomize`); install kubectl 1.27 or later")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize k8s/base failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut commands = BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: Json =
            serde_json::to_value(serde_yaml::Value::deserialize(document).unwrap()).unwrap();
        if object["kind"] != "Deployment" {
            continue;
        }
        for container in object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let command = container["command"][0].as_str().unwrap_or_else(|| {
                panic!(
                    "{}: container without a command",
                    object["metadata"]["name"]
                )
            });
            commands.insert(command.to_owned());
        }
    }
    assert_eq!(
        commands.len(),
        4,
        "four services, four binaries: {commands:?}"
    );
    for command in &commands {
        assert!(
            installed.contains(command),
            "a Deployment runs {command}, which the image does not install (it has {installed:?})"
        );
    }

    // The local backend finds the models through IMAGETAG_MODEL_DIR, which
    // the image points at the directory it copies them to.
    let model_dir = runtime
        .all("ENV")
        .find_map(|e| e.arguments.strip_prefix("IMAGETAG_MODEL_DIR="))
        .expect("the runtime stage sets IMAGETAG_MODEL_DIR");
    let models_copy = copies
        .iter()
        .find(|c| c.target_of(&c.sources[0]) == model_dir)
        .unwrap_or_else(|| panic!("nothing is copied to IMAGETAG_MODEL_DIR={model_dir}"));
    let models_stage = stage_named(
        &stages,
        models_copy
            .from
            .as_deref()
            .expect("models come from a stage"),
    );
    assert!(
        models_stage
            .all("RUN")
            .any(|r| r.arguments.contains(&format!(
                "scripts/prepare-models --dir {}",
                models_copy.sources[0]
            ))),
        "stage {} should prepare the models with scripts/prepare-models --dir {}",
        models_stage.label(),
        models_copy.sources[0]
    );
    assert!(Path::new(&workspace_root().join("scripts/prepare-models")).exists());
}
