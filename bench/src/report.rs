//! What every benchmark section produces, and how the sections become
//! `docs/benchmarks.md`.
//!
//! Each section is written to its own fragment under `target/bench/`, so a
//! single section can be re-run and the document is reassembled from the
//! newest fragment of every section.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// One section of the report: a heading, what was measured and how, tables,
/// and notes that explain the numbers (goals met or missed and why).
#[derive(Debug, Default, Clone)]
pub struct Section {
    pub key: &'static str,
    pub title: String,
    pub method: String,
    pub tables: Vec<Table>,
    pub notes: Vec<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Table {
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            caption: caption.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Aligned plain-text rendering for the terminal.
    pub fn to_text(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                let _ = write!(out, "{cell:<width$}  ");
            }
            out.trim_end().to_string()
        };
        let mut out = String::new();
        if !self.caption.is_empty() {
            let _ = writeln!(out, "{}", self.caption);
        }
        let _ = writeln!(out, "{}", line(&self.headers));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", line(&rule));
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        if !self.caption.is_empty() {
            let _ = writeln!(out, "**{}**\n", self.caption);
        }
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.headers.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

impl Section {
    pub fn print(&self) {
        println!("\n== {} ==", self.title);
        for table in &self.tables {
            println!("{}", table.to_text());
        }
        for note in &self.notes {
            println!("* {note}");
        }
    }

    pub fn to_markdown(&self, machine: &Machine) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## {}\n", self.title);
        let _ = writeln!(
            out,
            "_Measured {} on {} ({} cores), {}._\n",
            machine.date, machine.cpu_model, machine.cores, machine.build
        );
        if !self.method.is_empty() {
            let _ = writeln!(out, "{}\n", self.method.trim());
        }
        for table in &self.tables {
            let _ = writeln!(out, "{}", table.to_markdown());
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }
}

/// Where the numbers come from; printed with every section because absolute
/// times only mean something next to the machine that produced them.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub date: String,
    pub build: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let build = if cfg!(debug_assertions) {
            "debug build (numbers not representative)".to_string()
        } else {
            "release build".to_string()
        };
        Self {
            cpu_model,
            cores,
            date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
            build,
        }
    }
}

/// Sections in the order the document shows them.
pub const SECTION_ORDER: &[&str] = &[
    "tagging",
    "latency",
    "microservices",
    "backfill",
    "search",
    "load",
    "footprint",
];

/// The `scripts/bench` argument that produces a section.
pub fn command_for(key: &str) -> &str {
    match key {
        "latency" | "backfill" => "embedded",
        "load" => "search",
        other => other,
    }
}

pub struct ReportDir {
    fragments: PathBuf,
}

impl ReportDir {
    pub fn new(fragments: impl Into<PathBuf>) -> Self {
        Self {
            fragments: fragments.into(),
        }
    }

    pub fn save(&self, section: &Section, machine: &Machine) -> anyhow::Result<()> {
        fs::create_dir_all(&self.fragments)
            .with_context(|| format!("creating {}", self.fragments.display()))?;
        let path = self.fragments.join(format!("{}.md", section.key));
        fs::write(&path, section.to_markdown(machine))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Rebuilds the document from the newest fragment of every section,
    /// then appends `notes` (the maintained analysis of the latest run),
    /// when it exists.
    pub fn assemble(&self, out: &Path, notes: &Path) -> anyhow::Result<()> {
        let mut doc = String::from(
            "# Benchmarks\n\n\
             Generated by `scripts/bench` (the `imagetag-bench` binary, release build); do not edit by hand.\n\
             Absolute times depend on the machine; compare the ratios against the baselines measured in the same run.\n\n",
        );
        for key in SECTION_ORDER {
            let path = self.fragments.join(format!("{key}.md"));
            match fs::read_to_string(&path) {
                Ok(text) => {
                    doc.push_str(&text);
                    doc.push('\n');
                }
                Err(_) => {
                    let _ = writeln!(
                        doc,
                        "## {key}\n\n_Not measured in the latest run (run `scripts/bench {}`)._\n",
                        command_for(key)
                    );
                }
            }
        }
        if let Ok(text) = fs::read_to_string(notes) {
            doc.push_str(&text);
        }
        fs::write(out, doc).with_context(|| format!("writing {}", out.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpu_model: "Test CPU".into(),
            cores: 2,
            date: "2026-01-02".into(),
            build: "release build".into(),
        }
    }

    fn section(key: &'static str) -> Section {
        let mut table = Table::new("Speed", &["workers", "images/s"]);
        table.row(["1", "4.50"]);
        table.row(["2", "8.25"]);
        Section {
            key,
            title: format!("Title of {key}"),
            method: "How it was measured.".into(),
            tables: vec![table],
            notes: vec!["A note.".into()],
        }
    }

    #[test]
    fn tables_render_as_markdown_and_aligned_text() {
        let table = &section("tagging").tables[0];
        assert_eq!(
            table.to_markdown(),
            "**Speed**\n\n| workers | images/s |\n|---|---|\n| 1 | 4.50 |\n| 2 | 8.25 |\n"
        );
        assert_eq!(
            table.to_text(),
            "Speed\nworkers  images/s\n-------  --------\n1        4.50\n2        8.25\n"
        );
    }

    #[test]
    fn assembly_orders_sections_and_marks_missing_ones() {
        let root =
            std::env::temp_dir().join(format!("imagetag-bench-report-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = ReportDir::new(root.join("fragments"));
        // Saved out of order; the document follows SECTION_ORDER.
        dir.save(&section("search"), &machine()).unwrap();
        dir.save(&section("tagging"), &machine()).unwrap();
        let out = root.join("benchmarks.md");
        let notes = root.join("notes.md");
        fs::write(&notes, "## Notes\n\nWhy the numbers are what they are.\n").unwrap();
        dir.assemble(&out, &notes).unwrap();
        let doc = fs::read_to_string(&out).unwrap();
        let tagging = doc.find("## Title of tagging").expect("tagging section");
        let search = doc.find("## Title of search").expect("search section");
        assert!(tagging < search, "{doc}");
        assert!(doc.contains("_Measured 2026-01-02 on Test CPU (2 cores), release build._"));
        assert!(doc.contains("| 2 | 8.25 |"));
        assert!(doc.contains("- A note."));
        assert!(
            doc.ends_with("## Notes\n\nWhy the numbers are what they are.\n"),
            "{doc}"
        );
        assert!(doc.contains(
            "## latency\n\n_Not measured in the latest run (run `scripts/bench embedded`)._"
        ));
        // A re-run of one section replaces only its fragment.
        let mut rerun = section("search");
        rerun.notes = vec!["Second run.".into()];
        dir.save(&rerun, &machine()).unwrap();
        dir.assemble(&out, &root.join("absent.md")).unwrap();
        let doc = fs::read_to_string(&out).unwrap();
        assert!(doc.contains("- Second run."));
        assert!(doc.contains("## Title of tagging"));
        fs::remove_dir_all(&root).unwrap();
    }
}
