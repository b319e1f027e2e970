//! A function's code: an ES module and the sibling modules it imports, read once from disk
//! and kept in memory (every worker's runtime compiles the same bytes; nothing is read while
//! serving). Loading runs the module once in a scratch runtime, so a syntax error, a missing
//! import or a module that throws is refused with its message and location before any
//! version of it serves.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Largest module file read, and largest total.
const MAX_FILE: u64 = 4 << 20;
const MAX_TOTAL: usize = 16 << 20;

/// A loaded module graph; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The entry module's name (its file name).
    pub(crate) entry: String,
    /// Every module by name (a path relative to the entry's directory, `/`-separated).
    pub(crate) modules: HashMap<String, Arc<[u8]>>,
}

/// Why a script cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ScriptError {
    /// What went wrong (the engine's message, or an I/O error).
    pub message: String,
    /// Where: the module (relative to the entry's directory), line and column.
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// The engine's stack, when there is one.
    pub stack: Option<String>,
}

impl ScriptError {
    pub(crate) fn plain(message: impl Into<String>) -> ScriptError {
        ScriptError {
            message: message.into(),
            file: None,
            line: None,
            column: None,
            stack: None,
        }
    }

    /// From an engine error's text (`Name: message` then `    at f (file:line:col)` lines).
    pub(crate) fn from_engine(text: &str) -> ScriptError {
        let mut lines = text.lines();
        let message = lines.next().unwrap_or("error").trim().to_owned();
        let stack: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        let mut error = ScriptError::plain(message);
        if let Some((file, line, column)) = stack.iter().find_map(|l| location(l)) {
            error.file = Some(file);
            error.line = Some(line);
            error.column = Some(column);
        }
        if !stack.is_empty() {
            error.stack = Some(stack.join("\n"));
        }
        error
    }

    fn render(&self) -> String {
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(column)) => {
                format!("{file}:{line}:{column}: {}", self.message)
            }
            _ => self.message.clone(),
        }
    }
}

/// `file:line:col` out of a stack line such as `    at f (chat.js:3:13)`.
fn location(line: &str) -> Option<(String, u32, u32)> {
    let text = line.trim().strip_prefix("at ")?;
    let inner = match (text.rfind('('), text.ends_with(')')) {
        (Some(open), true) => &text[open + 1..text.len() - 1],
        _ => text,
    };
    let mut parts = inner.rsplitn(3, ':');
    let column = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?.to_owned();
    if file.starts_with('<') || file == "prelude" {
        return None;
    }
    Some((file, line, column))
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} modules)", self.entry, self.modules.len())
    }
}

impl Script {
    /// Loads the module at `path` and every module it imports (relative specifiers only,
    /// inside its directory), then runs it once in a scratch runtime (module code runs; its
    /// timers never fire and it opens no socket) to refuse what would not serve.
    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let entry = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ScriptError::plain(format!("{}: not a file name", path.display())))?
            .to_owned();
        let disk = Disk {
            root,
            read: HashMap::new(),
            total: 0,
        };
        crate::engine::check_from_disk(entry, disk)
    }

    /// A script from in-memory sources (`name -> source`), checked the same way.
    pub fn from_sources(
        entry: &str,
        sources: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Script, ScriptError> {
        let script = Script {
            entry: entry.to_owned(),
            modules: sources
                .into_iter()
                .map(|(name, source)| (name, Arc::from(source.into_bytes())))
                .collect(),
        };
        crate::engine::check(&script)?;
        Ok(script)
    }

    /// The entry module's name.
    pub fn entry(&self) -> &str {
        &self.entry
    }
}

/// Module files read from disk while a script is loaded, confined to its directory.
#[derive(Debug)]
pub(crate) struct Disk {
    root: PathBuf,
    pub(crate) read: HashMap<String, Arc<[u8]>>,
    total: usize,
}

impl Disk {
    /// Reads module `name` (already resolved and confined), once.
    pub(crate) fn read(&mut self, name: &str) -> Result<Arc<[u8]>, String> {
        if let Some(source) = self.read.get(name) {
            return Ok(Arc::clone(source));
        }
        let path = self.root.join(name);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{name}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{name}: not a file"));
        }
        if meta.len() > MAX_FILE {
            return Err(format!("{name}: over {MAX_FILE} bytes"));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{name}: {e}"))?;
        self.total += bytes.len();
        if self.total > MAX_TOTAL {
            return Err(format!("the modules pass {MAX_TOTAL} bytes in all"));
        }
        let source: Arc<[u8]> = Arc::from(bytes);
        self.read.insert(name.to_owned(), Arc::clone(&source));
        Ok(source)
    }
}

/// Resolves `specifier` imported by module `base` to a module name: relative specifiers
/// only, never outside the entry's directory.
pub(crate) fn resolve(base: &str, specifier: &str) -> Result<String, String> {
    if !(specifier.starts_with("./") || specifier.starts_with("../")) {
        return Err(format!(
            "import {specifier:?} from {base}: only relative imports of sibling files (\"./x.js\") are allowed"
        ));
    }
    let dir = Path::new(base).parent().unwrap_or(Path::new(""));
    let mut parts: Vec<String> = Vec::new();
    for component in dir.join(specifier).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "import {specifier:?} from {base}: outside the script's directory"
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("import {specifier:?} from {base}: not relative"));
            }
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_resolve_relative_to_the_importer_and_stay_inside() {
        assert_eq!(resolve("main.js", "./lib/a.js"), Ok("lib/a.js".into()));
        assert_eq!(resolve("lib/a.js", "../b.js"), Ok("b.js".into()));
        assert_eq!(resolve("lib/a.js", "./c.js"), Ok("lib/c.js".into()));
        assert!(resolve("main.js", "../etc/passwd").is_err());
        assert!(resolve("main.js", "lodash").is_err());
        assert!(resolve("main.js", "https://example.com/x.js").is_err());
        assert!(resolve("main.js", "/etc/passwd").is_err());
    }

    #[test]
    fn an_engine_error_gives_its_message_and_location() {
        let e = ScriptError::from_engine(
            "SyntaxError: unexpected token in expression: ';'\n    at handler.js:3:13\n",
        );
        assert_eq!(
            e.message,
            "SyntaxError: unexpected token in expression: ';'"
        );
        assert_eq!(
            (e.file.as_deref(), e.line, e.column),
            (Some("handler.js"), Some(3), Some(13))
        );
        assert_eq!(
            e.to_string(),
            "handler.js:3:13: SyntaxError: unexpected token in expression: ';'"
        );
        let e = ScriptError::from_engine(
            "Error: boom\n    at f (lib/m.js:1:25)\n    at <anonymous> (m.js:2:1)",
        );
        assert_eq!((e.file.as_deref(), e.line), (Some("lib/m.js"), Some(1)));
    }
}
