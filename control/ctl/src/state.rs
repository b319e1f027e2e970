//! The control process's persisted state: the desired configuration and its source, in one
//! TOML file written atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old state or the new one, never a mix.
//!
//! The file is the configuration itself behind a two-line comment header (naming its
//! content hash, the identity `wsedgectl status` shows), so an operator can read it (and
//! `wsedge --check` it) as it is. The daemon does not number configurations (the dataplane
//! does), so no version is kept; the header of earlier builds, `version N`, still loads.

use std::io::Write as _;
use std::path::{Path, PathBuf};

const HEADER: &str = "# wsedgectl applied state: ";

/// A configuration and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) toml: String,
    pub(crate) source: String,
}

impl Desired {
    /// Its identity, `wire::config_hash` of the text.
    pub(crate) fn hash(&self) -> String {
        wsedge_command::wire::config_hash(&self.toml)
    }
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
        "{HEADER}config {}; source: {source}\n# Written by `wsedgectl daemon`, loaded at its next start. Change it with wsedgectl.\n{}",
        desired.hash(),
        desired.toml
    )
}

/// Parses a state file's text.
fn parse(text: &str) -> Option<Desired> {
    let (first, rest) = text.split_once('\n')?;
    let header = first.strip_prefix(HEADER)?;
    // `config HASH` (the hash is recomputed from the text), or `version N` of earlier builds.
    let (identity, source) = header.split_once("; source: ")?;
    let known = identity.strip_prefix("config ").is_some()
        || identity
            .strip_prefix("version ")
            .is_some_and(|v| v.trim().parse::<u64>().is_ok());
    if !known {
        return None;
    }
    let (_, toml) = rest.split_once('\n')?;
    Some(Desired {
        toml: toml.to_owned(),
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
            source: "/etc/wsedge/wsedge.toml + live edits".to_owned(),
        };
        save(&path, &desired).expect("save");
        assert_eq!(load(&path).expect("load"), Some(desired.clone()));
        // The file is itself a valid configuration, and names its hash.
        let text = std::fs::read_to_string(&path).expect("read");
        wsedge_command::Config::from_toml(&text, "state").expect("valid TOML config");
        assert!(
            text.starts_with(&format!(
                "# wsedgectl applied state: config {}; source: /etc/",
                desired.hash()
            )),
            "{text}"
        );
        let next = Desired {
            toml: format!("{}idle_timeout = \"1m\"\n", desired.toml),
            ..desired
        };
        save(&path, &next).expect("overwrite");
        assert_eq!(load(&path).expect("load"), Some(next.clone()));
        let leftovers = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        std::fs::write(&path, "garbage").expect("write");
        assert!(load(&path).is_err());
        // The header of earlier builds (they numbered configurations) still loads.
        std::fs::write(
            &path,
            format!(
                "# wsedgectl applied state: version 5; source: f.toml\n# Written by\n{}",
                next.toml
            ),
        )
        .expect("write");
        assert_eq!(
            load(&path).expect("old header"),
            Some(Desired {
                toml: next.toml.clone(),
                source: "f.toml".to_owned()
            })
        );
        std::fs::write(
            &path,
            "# wsedgectl applied state: version x; source: f\n#\n",
        )
        .expect("write");
        assert!(load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
