//! Replacing a small state file so that a crash or a power loss leaves the old file or the new
//! one, never a torn or empty one: a temporary file beside it is written and fsynced, renamed
//! over the old one, and the directory is fsynced (only then is the rename itself durable).
//! Used by every state file the agent keeps (alarm state, report day, kill switches, bdSeq).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Which step failed, on which file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct ReplaceError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl From<ReplaceError> for io::Error {
    fn from(e: ReplaceError) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

fn at<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ReplaceError + 'p {
    move |source| ReplaceError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces the file at `path` with `bytes`, atomically and durably; the temporary file is
/// `path` + `.tmp`.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = File::create(&tmp).map_err(at("create", &tmp))?;
        f.write_all(bytes).map_err(at("write", &tmp))?;
        f.sync_data().map_err(at("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(at("rename into", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"{\"a\":1,\"long\":\"xxxxxxxx\"}").unwrap();
        replace(&path, b"{\"a\":2}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":2}");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failure_names_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state.json");
        let e = replace(&path, b"x").unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains("state.json.tmp"), "{e}");
    }
}
