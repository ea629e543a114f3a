//! `apisix-stream top`: a live dashboard of a running server, read from its
//! Control API.
//!
//! The parts are kept apart so each can be tested alone:
//! - [`app`]: the state and every change to it (samples in, keys in), pure;
//! - [`poll`]: a background task reading the Control API into a
//!   latest-only channel, so HTTP never blocks the screen;
//! - [`ui`]: `draw(frame, &App)`, rendering only.
//!
//! This file owns the terminal: raw mode and the alternate screen are
//! entered by [`TerminalGuard`] and left when it drops, and a panic hook
//! leaves them too, so neither a quit nor a panic leaves the shell unusable.
//! The event loop waits on samples, keys, close results and a redraw tick.

pub mod app;
pub mod poll;
pub mod ui;

use std::io::{IsTerminal, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{bail, Context};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::{mpsc, Notify};

use app::{Action, App, Key};
use poll::ControlClient;

/// What `top` needs to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Control API base URL, e.g. `http://127.0.0.1:9090`.
    pub control_url: String,
    /// Time between polls.
    pub interval: Duration,
}

/// Parse a refresh interval: a number with a unit (`500ms`, `1s`, `1.5s`,
/// `2m`, `1h`), or plain seconds (`2`). Between 50 ms and one hour.
pub fn parse_interval(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("invalid --interval {text:?}: expected e.g. 1s or 500ms"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" | "sec" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("invalid --interval {text:?}: unknown unit {other:?} (use ms, s, m or h)"),
    };
    if !(0.05..=3600.0).contains(&secs) {
        bail!("invalid --interval {text:?}: must be between 50ms and 1h");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Make `--control-url` text a base URL: `http://` is added when no scheme
/// is given, a trailing `/` is dropped.
pub fn control_base_url(text: &str) -> anyhow::Result<String> {
    let t = text.trim();
    let with_scheme = if t.contains("://") {
        t.to_string()
    } else {
        format!("http://{t}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| anyhow::anyhow!("invalid --control-url {text:?}: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!("invalid --control-url {text:?}: use http:// or https://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("invalid --control-url {text:?}: no host");
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Run the dashboard until `q`, Esc or Ctrl-C.
pub fn run(options: Options) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("top needs a terminal (stdout is not a tty)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(event_loop(options))
}

/// What the input thread reports.
enum Input {
    Key(Key),
    Redraw,
    Failed(std::io::Error),
}

async fn event_loop(options: Options) -> anyhow::Result<()> {
    // A request may take up to one interval (at least 1s) before it counts
    // as failed, so a busy server is not reported as lost.
    let timeout = options.interval.max(Duration::from_secs(1));
    let client = Arc::new(ControlClient::new(&options.control_url, timeout)?);
    let poke = Arc::new(Notify::new());
    let mut samples = poll::spawn(client.clone(), options.interval, poke.clone());
    let mut app = App::new(options.control_url.clone());

    let mut guard = TerminalGuard::enter()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (input_tx, mut input_rx) = mpsc::channel(64);
    spawn_input_thread(input_tx, stop.clone());
    let (closed_tx, mut closed_rx) = mpsc::channel::<(u64, Result<(), String>)>(8);
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    let result = loop {
        if let Err(e) = guard.terminal.draw(|f| ui::draw(f, &app)) {
            break Err(anyhow::Error::new(e).context("cannot draw"));
        }
        tokio::select! {
            changed = samples.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let sample = samples.borrow_and_update().clone();
                if let Some(s) = sample {
                    app.ingest(s);
                }
            }
            input = input_rx.recv() => match input {
                Some(Input::Key(k)) => match app.handle_key(k) {
                    Action::Quit => break Ok(()),
                    Action::Close(id) => {
                        let (client, tx, poke) = (client.clone(), closed_tx.clone(), poke.clone());
                        tokio::spawn(async move {
                            let r = client.close(id).await;
                            let _ = tx.send((id, r)).await;
                            poke.notify_one();
                        });
                    }
                    Action::None => {}
                },
                Some(Input::Redraw) => {}
                Some(Input::Failed(e)) => break Err(anyhow::Error::new(e).context("cannot read the terminal")),
                None => break Ok(()),
            },
            Some((id, r)) = closed_rx.recv() => app.close_done(id, r),
            _ = tick.tick() => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(guard);
    result
}

/// Read terminal events on a thread of its own (crossterm's reads block)
/// and forward the ones that matter.
fn spawn_input_thread(tx: mpsc::Sender<Input>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let input = match event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => Input::Key(key_of(k)),
                    Ok(Event::Resize(..)) => Input::Redraw,
                    Ok(_) => continue,
                    Err(e) => Input::Failed(e),
                },
                Err(e) => Input::Failed(e),
            };
            let failed = matches!(input, Input::Failed(_));
            if tx.blocking_send(input).is_err() || failed {
                return;
            }
        }
    });
}

/// A crossterm key as the dashboard's [`Key`].
fn key_of(k: KeyEvent) -> Key {
    match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Esc => Key::Esc,
        KeyCode::Enter => Key::Enter,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        _ => Key::Other,
    }
}

/// Raw mode and the alternate screen for as long as it lives.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<TerminalGuard> {
        install_panic_hook();
        terminal::enable_raw_mode().context("cannot switch the terminal to raw mode")?;
        let entered = crossterm::execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            crossterm::cursor::Hide
        )
        .and_then(|()| Terminal::new(CrosstermBackend::new(std::io::stdout())));
        match entered {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(e) => {
                restore_terminal();
                Err(anyhow::Error::new(e).context("cannot set up the terminal"))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leave the alternate screen and raw mode; safe to call more than once.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Restore the terminal before the panic message is printed, so the
/// message is readable and the shell is usable afterwards.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests;
