//! The error log: the process's `tracing` output, one line per event, to
//! stderr or to `nginx_config.error_log`, at `nginx_config.error_log_level`
//! (`RUST_LOG`, when set, overrides the level).
//!
//! Why it is set up in two steps: `main` installs the subscriber before
//! anything else runs (so start-up errors are seen), writing to stderr at
//! `info`; `serve` then [`configure`]s the file and level the config names.
//! Both the filter and the format sit behind `tracing_subscriber::reload`
//! handles, and the destination behind one lock, so [`reopen`] (SIGUSR1)
//! swaps the file between two lines: every line goes whole to the old file
//! or whole to the new one.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::ErrorLogLevel;

/// Where error log lines go.
#[derive(Debug)]
enum Sink {
    Stderr,
    File(PathBuf, std::fs::File),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type FmtLayer = fmt::Layer<
    Filtered,
    fmt::format::DefaultFields,
    fmt::format::Format<fmt::format::Full, fmt::time::SystemTime>,
    fn() -> ErrorLogWriter,
>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<FmtLayer, Filtered>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Writes one formatted event to the current destination.
#[derive(Debug, Clone, Copy)]
pub struct ErrorLogWriter;

impl ErrorLogWriter {
    fn make() -> ErrorLogWriter {
        ErrorLogWriter
    }
}

impl Write for ErrorLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match SINK.lock() {
            Ok(mut sink) => match &mut *sink {
                Sink::Stderr => io::stderr().write(buf),
                Sink::File(_, f) => f.write(buf),
            },
            Err(_) => io::stderr().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One lock per event, so a reopen never splits a line.
        match SINK.lock() {
            Ok(mut sink) => match &mut *sink {
                Sink::Stderr => io::stderr().write_all(buf),
                Sink::File(_, f) => f.write_all(buf),
            },
            Err(_) => io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn format_layer(ansi: bool) -> FmtLayer {
    fmt::layer()
        .with_writer(ErrorLogWriter::make as fn() -> ErrorLogWriter)
        .with_ansi(ansi)
}

/// The filter `RUST_LOG` asks for, if it is set and valid.
fn env_filter() -> Option<EnvFilter> {
    EnvFilter::try_from_default_env().ok()
}

/// Install the subscriber: stderr at `info` (or `RUST_LOG`). Called once,
/// first thing in `main`.
pub fn init() {
    let filter = env_filter().unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (format, format_handle) = reload::Layer::new(format_layer(io::stderr().is_terminal()));
    if tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .is_ok()
    {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            format: format_handle,
        });
    }
}

/// Why the error log could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot open nginx_config.error_log {path}: {error}")]
pub struct ErrorLogError {
    /// The configured file.
    pub path: String,
    /// The OS error.
    pub error: io::Error,
}

/// Send the log to `error_log` (`stderr`, or a file opened for appending,
/// its directory created) at `level`, unless `RUST_LOG` names a level.
pub fn configure(error_log: &str, level: ErrorLogLevel) -> Result<(), ErrorLogError> {
    let Some(handles) = HANDLES.get() else {
        return Ok(());
    };
    if error_log != "stderr" && error_log != "/dev/stderr" {
        let path = PathBuf::from(error_log);
        let file = crate::access_log::open_append(&path).map_err(|error| ErrorLogError {
            path: error_log.to_string(),
            error,
        })?;
        if let Ok(mut sink) = SINK.lock() {
            *sink = Sink::File(path, file);
        }
        let _ = handles.format.reload(format_layer(false));
    }
    if env_filter().is_none() {
        let _ = handles.filter.reload(EnvFilter::new(level.directive()));
    }
    Ok(())
}

/// Reopen the error log file (log rotation); stderr stays as it is.
pub fn reopen() {
    let Ok(mut sink) = SINK.lock() else { return };
    if let Sink::File(path, file) = &mut *sink {
        match crate::access_log::open_append(path) {
            Ok(f) => *file = f,
            Err(e) => {
                let _ = writeln!(
                    file,
                    "cannot reopen the error log {}: {e}; writing to the old file",
                    path.display()
                );
            }
        }
    }
}
