//! `[record]`: write the samples `alsentry run` reads to size-rotated CSV files, in the format
//! `alsentry replay` reads, so a plant builds its own corpus for tuning rules.

use std::path::PathBuf;

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{Problems, Source, TableReader};
use super::Device;

pub const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_FILES: usize = 10;
/// Below this a file would hold only a handful of rows and rotation would churn the disk.
pub const MIN_MAX_SIZE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordConfig {
    pub dir: PathBuf,
    /// A file is closed and a new one started before it would grow past this.
    pub max_size: u64,
    /// Oldest files are deleted beyond this many.
    pub max_files: usize,
    /// Only these tags are recorded; `None` records every tag.
    pub tags: Option<Vec<String>>,
}

pub fn parse_record(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
) -> Option<RecordConfig> {
    let mut r = TableReader::of(v, src, path, p)?;
    let dir = r.req_str(
        p,
        "dir",
        "the directory for the sample files, e.g. \"/var/lib/alsentry/record\"",
    );
    if dir.as_deref() == Some("") {
        r.problem(p, "dir", "must not be empty");
    }
    let max_size = r.opt_size(p, "max_size").unwrap_or(DEFAULT_MAX_SIZE);
    if max_size < MIN_MAX_SIZE {
        r.problem(
            p,
            "max_size",
            format!("{max_size} bytes is too small; at least \"4KiB\" (default \"64MiB\")"),
        );
    }
    let max_files = r
        .opt_int_in(p, "max_files", 1, 100_000)
        .map_or(DEFAULT_MAX_FILES, |n| n as usize);
    let tags = r.opt_str_list(p, "tags");
    if let Some(t) = &tags {
        if t.is_empty() {
            r.problem(
                p,
                "tags",
                "an empty list would record nothing; leave `tags` out to record every tag",
            );
        }
    }
    r.finish(p);
    Some(RecordConfig {
        dir: PathBuf::from(dir?),
        max_size,
        max_files,
        tags,
    })
}

impl RecordConfig {
    /// Names in `tags` that no device has: likely typos, worth reporting at load time.
    pub fn unknown_tags(&self, devices: &[Device]) -> Vec<String> {
        let Some(tags) = &self.tags else {
            return Vec::new();
        };
        tags.iter()
            .filter(|t| {
                !devices
                    .iter()
                    .any(|d| d.tags.iter().any(|dt| &dt.name == *t))
            })
            .cloned()
            .collect()
    }
}

/// Reports `tags` entries no device has, at `offset` (the `[record]` table), once devices are
/// expanded. A typo there would otherwise silently record nothing. Names of tags refused where
/// they are defined (`refused`) are not reported again.
pub fn check_tags(
    rc: &RecordConfig,
    devices: &[Device],
    refused: &std::collections::HashSet<String>,
    src: &Source,
    offset: usize,
    p: &mut Problems,
) {
    for t in rc
        .unknown_tags(devices)
        .into_iter()
        .filter(|t| !refused.contains(t))
    {
        p.add(
            src,
            offset,
            "record.tags",
            format!("no device has a tag \"{t}\""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::reader::parse_document;
    use std::path::Path;

    fn parse(text: &str) -> (Option<RecordConfig>, Vec<String>) {
        let src = Source {
            path: Path::new("t.toml").to_path_buf(),
            text: text.to_string(),
        };
        let mut p = Problems::default();
        let doc = parse_document(&src, &mut p).unwrap();
        let v = doc.get_ref().get("record").unwrap();
        let rc = parse_record(v, &src, "record".into(), &mut p);
        (rc, p.sorted().iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn defaults_and_full_form() {
        let (rc, problems) = parse("[record]\ndir = \"/tmp/rec\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            rc,
            Some(RecordConfig {
                dir: "/tmp/rec".into(),
                max_size: 64 * 1024 * 1024,
                max_files: 10,
                tags: None
            })
        );
        let (rc, problems) = parse(
            "[record]\ndir = \"r\"\nmax_size = \"1MiB\"\nmax_files = 3\ntags = [\"voltage\", \"current\"]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let rc = rc.unwrap();
        assert_eq!((rc.max_size, rc.max_files), (1 << 20, 3));
        assert_eq!(rc.tags, Some(vec!["voltage".into(), "current".into()]));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let (rc, problems) =
            parse("[record]\nmax_size = \"1KiB\"\nmax_files = 0\ntags = []\nspeed = 3\n");
        assert!(rc.is_none());
        let all = problems.join("\n");
        assert!(
            all.contains("t.toml:1:1: record.dir: missing required key"),
            "{all}"
        );
        assert!(
            all.contains(":2:") && all.contains("record.max_size"),
            "{all}"
        );
        assert!(
            all.contains(":3:") && all.contains("record.max_files"),
            "{all}"
        );
        assert!(all.contains(":4:") && all.contains("record.tags"), "{all}");
        assert!(
            all.contains(":5:") && all.contains("record.speed: unknown key"),
            "{all}"
        );
    }

    #[test]
    fn tags_no_device_has_are_reported() {
        let cfg = crate::config::Config::from_str(
            Path::new("t.toml"),
            r#"
[agent]
id = "gw"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "pot-001"
endpoint = "tcp://127.0.0.1:5020"
tags = [ { name = "voltage", table = "input", address = 0, type = "f32" } ]
"#,
        )
        .unwrap();
        let src = Source {
            path: Path::new("t.toml").to_path_buf(),
            text: "[record]\n".into(),
        };
        let rc = RecordConfig {
            dir: "r".into(),
            max_size: DEFAULT_MAX_SIZE,
            max_files: 1,
            tags: Some(vec!["voltage".into(), "volts".into()]),
        };
        let mut p = Problems::default();
        check_tags(&rc, &cfg.devices, &Default::default(), &src, 0, &mut p);
        let all: Vec<String> = p.sorted().iter().map(|x| x.to_string()).collect();
        assert_eq!(
            all,
            vec!["t.toml:1:1: record.tags: no device has a tag \"volts\"".to_string()]
        );
    }
}
