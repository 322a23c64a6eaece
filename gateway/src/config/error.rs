//! Config errors that point at a place in a file and say how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a config file, kept on model items whose later checks
/// (certificate loading, port binding) may still fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: Location,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if !self.fix.is_empty() {
            write!(f, " — {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Turns byte spans into `line:col` for one file and collects errors.
#[derive(Debug)]
pub struct Reporter {
    file: Arc<Path>,
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl Reporter {
    pub fn new(file: &Path, source: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Reporter {
            file: Arc::from(file),
            line_starts,
            errors: Vec::new(),
        }
    }

    /// Where a span starts, as 1-based line and column.
    pub fn locate(&self, span: &Range<usize>) -> Location {
        let line = self.line_starts.partition_point(|&s| s <= span.start);
        let col = span.start - self.line_starts[line.saturating_sub(1)] + 1;
        Location {
            file: self.file.clone(),
            line: line.max(1),
            col,
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn error(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let location = self.locate(span);
        self.push(location, message, fix);
    }

    pub fn push(&mut self, location: Location, message: impl Into<String>, fix: impl Into<String>) {
        self.errors.push(ConfigError {
            location,
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors
            .sort_by_key(|e| (e.location.line, e.location.col));
        Err(ConfigErrors(self.errors))
    }
}

/// An error that is not tied to a span (the file cannot be read at all).
pub fn whole_file(file: &Path, message: impl Into<String>, fix: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        location: Location {
            file: Arc::from(PathBuf::from(file).as_path()),
            line: 1,
            col: 1,
        },
        message: message.into(),
        fix: fix.into(),
    }])
}
