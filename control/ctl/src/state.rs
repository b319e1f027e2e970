//! The control process's persisted state: the last applied configuration, its version and
//! its source, in one TOML file written atomically (temporary file, fsync, rename, fsync of
//! the directory), so a crash leaves either the old state or the new one, never a mix.
//!
//! The file is the configuration itself behind a two-line comment header, so an operator can
//! read it (and `wsedge --check` it) as it is.

use std::io::Write as _;
use std::path::{Path, PathBuf};

const HEADER: &str = "# wsedgectl applied state: version ";

/// A configuration with its version and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) toml: String,
    pub(crate) version: u64,
    pub(crate) source: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a wsedgectl state file (missing its header)")]
    Header(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file's text for `desired`.
fn render(desired: &Desired) -> String {
    let source = desired.source.replace(['\n', '\r'], " ");
    format!(
        "{HEADER}{}; source: {source}\n# Written by `wsedgectl daemon`, loaded at its next start. Change it with wsedgectl.\n{}",
        desired.version, desired.toml
    )
}

/// Parses a state file's text.
fn parse(text: &str) -> Option<Desired> {
    let (first, rest) = text.split_once('\n')?;
    let header = first.strip_prefix(HEADER)?;
    let (version, source) = header.split_once("; source: ")?;
    let version = version.trim().parse().ok()?;
    let (_, toml) = rest.split_once('\n')?;
    Some(Desired {
        toml: toml.to_owned(),
        version,
        source: source.to_owned(),
    })
}

/// Reads the state file; `Ok(None)` if there is none.
pub(crate) fn load(path: &Path) -> Result<Option<Desired>, StateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text)
            .map(Some)
            .ok_or_else(|| StateError::Header(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces the state file atomically.
pub(crate) fn save(path: &Path, desired: &Desired) -> Result<(), StateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(render(desired).as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename is durable once the directory is.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load() {
        let dir = std::env::temp_dir().join(format!("wsedgectl-state-{}", std::process::id()));
        let path = dir.join("sub").join("applied.toml");
        assert_eq!(load(&path).expect("no file"), None);
        let desired = Desired {
            toml: "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n".to_owned(),
            version: 12,
            source: "/etc/wsedge/wsedge.toml + live edits".to_owned(),
        };
        save(&path, &desired).expect("save");
        assert_eq!(load(&path).expect("load"), Some(desired.clone()));
        // The file is itself a valid configuration.
        let text = std::fs::read_to_string(&path).expect("read");
        wsedge_command::Config::from_toml(&text, "state").expect("valid TOML config");
        let next = Desired {
            version: 13,
            ..desired
        };
        save(&path, &next).expect("overwrite");
        assert_eq!(load(&path).expect("load").map(|d| d.version), Some(13));
        let leftovers = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        std::fs::write(&path, "garbage").expect("write");
        assert!(load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
