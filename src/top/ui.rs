//! Drawing: [`draw`] turns an [`App`] into one frame and does nothing else.
//!
//! Layout, top to bottom: a three-line header (server, uptime, totals,
//! throughput) with a throughput sparkline at its right; the routes table;
//! the nodes of the selected route; the live connections; one footer line
//! with the keys, a pending confirmation or the last message. Every part
//! keeps a useful size at 80×24.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState,
};
use ratatui::Frame;

use super::app::{App, Link, Pane};

/// Draw the whole dashboard.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [header, routes, nodes, conns, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Fill(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, app, header);
    draw_routes(frame, app, routes);
    draw_nodes(frame, app, nodes);
    draw_connections(frame, app, conns);
    draw_footer(frame, app, footer);
}

fn draw_header(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let spark_width = (area.width / 3).clamp(10, 60);
    let [text_area, spark_area] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(spark_width)]).areas(area);

    let mut first = vec![
        Span::from("apisix-stream top ").bold(),
        Span::from(&*app.server),
    ];
    if let Some(v) = app.stats.as_ref().and_then(|s| s.version.as_deref()) {
        first.push(Span::from(format!(" v{v}")));
    }
    if app.paused {
        first.push(Span::from(" PAUSED").fg(Color::Yellow).bold());
    }
    let second = match &app.link {
        Link::Down(e) => Line::from(vec![
            Span::from("disconnected, retrying").fg(Color::Red).bold(),
            Span::from(format!(" ({e})")).fg(Color::Red),
        ]),
        Link::Connecting if app.stats.is_none() => Line::from("connecting…").fg(Color::Yellow),
        _ => match &app.stats {
            Some(s) => {
                let mut l = format!(
                    "up {}  active {}  total {}  {:.1} conn/s",
                    duration(s.uptime_s),
                    s.active,
                    s.total,
                    app.conns_rate.per_sec()
                );
                if let Some(rss) = s.memory_rss_bytes {
                    l.push_str(&format!("  rss {}", bytes(rss as f64)));
                }
                Line::from(l)
            }
            None => Line::from(""),
        },
    };
    let third = Line::from(format!(
        "in {}/s  out {}/s",
        bytes(app.in_rate),
        bytes(app.out_rate)
    ));
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), second, third]),
        text_area,
    );

    let points: Vec<u64> = {
        let n = usize::from(spark_area.width);
        let skip = app.history.len().saturating_sub(n);
        app.history.iter().skip(skip).copied().collect()
    };
    let peak = points.iter().copied().max().unwrap_or(0);
    let spark = Sparkline::default()
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(format!("bytes/s ≤{}", bytes(peak as f64))),
        )
        .data(&points)
        .style(Style::new().fg(Color::Cyan));
    frame.render_widget(spark, spark_area);
}

fn pane_block(app: &App, pane: Pane, title: String) -> Block<'static> {
    let focused = app.pane == pane;
    let style = if focused {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    let title = if focused {
        format!(" {title} · sort {} ", app.sort_name())
    } else {
        format!(" {title} ")
    };
    Block::bordered().border_style(style).title(title)
}

fn header_row(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().copied()).style(Style::new().add_modifier(Modifier::BOLD))
}

fn highlight(app: &App, pane: Pane) -> Style {
    if app.pane == pane {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new().add_modifier(Modifier::BOLD)
    }
}

/// The LIMIT column: the download rate limit (else the upload one), `*`
/// when the route throttles now; `-` without limit-bandwidth.
fn limit(b: Option<&crate::top::app::Bandwidth>) -> String {
    let Some(b) = b else {
        return "-".into();
    };
    let rate = if b.download_rate > 0 {
        b.download_rate
    } else {
        b.upload_rate
    };
    let text = if rate == 0 {
        "none".to_string()
    } else {
        bytes(rate as f64)
    };
    if b.throttled {
        format!("{text}*")
    } else {
        text
    }
}

fn draw_routes(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let routes = app.routes();
    let id_width = routes
        .iter()
        .map(|r| r.id.chars().count())
        .max()
        .unwrap_or(2)
        .clamp(2, 20) as u16;
    // The requests/s column shows when a protocol route is listed.
    let protocol = routes.iter().any(|r| r.requests.is_some());
    let rows: Vec<Row<'_>> = routes
        .iter()
        .map(|r| {
            let rates = app.route_rates(&r.id);
            let mut cells = vec![
                Cell::from(r.id.clone()),
                Cell::from(r.summary.clone().unwrap_or_else(|| "-".into())),
                Cell::from(r.active.to_string()),
                Cell::from(r.total.to_string()),
                Cell::from(format!("{:.1}", rates.conns.per_sec())),
            ];
            if protocol {
                cells.push(Cell::from(match r.requests {
                    Some(_) => format!("{:.1}", rates.requests.per_sec()),
                    None => "-".into(),
                }));
            }
            cells.extend([
                Cell::from(bytes(rates.bytes_in.per_sec())),
                Cell::from(bytes(rates.bytes_out.per_sec())),
                Cell::from(r.connect_failures.to_string()),
                Cell::from(limit(r.limit_bandwidth.as_ref())),
            ]);
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(id_width),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(6),
    ];
    let mut header = vec!["ID", "MATCH", "ACTIVE", "TOTAL", "CONN/S"];
    if protocol {
        widths.push(Constraint::Length(8));
        header.push("REQ/S");
    }
    widths.extend([
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(8),
    ]);
    header.extend(["IN/S", "OUT/S", "FAIL", "LIMIT"]);
    let table = Table::new(rows, widths)
        .header(header_row(&header))
        .row_highlight_style(highlight(app, Pane::Routes))
        .highlight_symbol("> ")
        .highlight_spacing(HighlightSpacing::Always);
    let title = format!("routes ({})", routes.len());
    let mut state = TableState::new().with_selected(app.route_index());
    frame.render_stateful_widget(
        table.block(pane_block(app, Pane::Routes, title)),
        area,
        &mut state,
    );
}

fn draw_nodes(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let nodes = app.nodes();
    let rows: Vec<Row<'_>> = nodes
        .iter()
        .map(|n| {
            let rates = app.node_rates(&n.route_id, &n.node);
            let health = match n.healthy {
                Some(true) => Cell::from("up").fg(Color::Green),
                Some(false) => Cell::from("DOWN").fg(Color::Red).bold(),
                None => Cell::from("-"),
            };
            Row::new(vec![
                Cell::from(n.node.clone()),
                Cell::from(n.route_id.clone()),
                Cell::from(n.active.to_string()),
                health,
                Cell::from(n.connect_failures.to_string()),
                Cell::from(bytes(rates.bytes_in.per_sec())),
                Cell::from(bytes(rates.bytes_out.per_sec())),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Fill(1),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(header_row(&[
        "NODE", "ROUTE", "ACTIVE", "HEALTH", "FAIL", "IN/S", "OUT/S",
    ]))
    .row_highlight_style(highlight(app, Pane::Nodes))
    .highlight_symbol("> ")
    .highlight_spacing(HighlightSpacing::Always);
    let title = match &app.selected_route {
        Some(r) => format!("nodes of route {r}"),
        None => "nodes".to_string(),
    };
    let mut state = TableState::new().with_selected(app.node_index());
    frame.render_stateful_widget(
        table.block(pane_block(app, Pane::Nodes, title)),
        area,
        &mut state,
    );
}

fn draw_connections(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let conns = app.connections();
    let block = pane_block(
        app,
        Pane::Connections,
        format!("connections ({})", conns.len()),
    );
    if let Some(e) = &app.connections_error {
        let text = Paragraph::new(format!("connection list unavailable: {e}")).block(block);
        frame.render_widget(text, area);
        return;
    }
    let rows: Vec<Row<'_>> = conns
        .iter()
        .map(|c| {
            Row::new(vec![
                Cell::from(c.id.to_string()),
                Cell::from(c.protocol.clone()),
                Cell::from(c.client.clone()),
                Cell::from(c.route_id.clone().unwrap_or_else(|| "-".into())),
                Cell::from(c.node.clone().unwrap_or_else(|| "-".into())),
                Cell::from(bytes(c.bytes_in as f64)),
                Cell::from(bytes(c.bytes_out as f64)),
                Cell::from(duration(c.age_s)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Fill(2),
            Constraint::Fill(1),
            Constraint::Fill(2),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(header_row(&[
        "ID", "PROTO", "CLIENT", "ROUTE", "NODE", "IN", "OUT", "AGE",
    ]))
    .row_highlight_style(highlight(app, Pane::Connections))
    .highlight_symbol("> ")
    .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::new().with_selected(app.conn_index());
    frame.render_stateful_widget(table.block(block), area, &mut state);
}

fn draw_footer(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let line = if let Some(id) = app.confirm_close {
        let who = app
            .connections
            .iter()
            .find(|c| c.id == id)
            .map(|c| format!(" from {}", c.client))
            .unwrap_or_default();
        Line::from(format!("close connection {id}{who}? y/n"))
            .fg(Color::Black)
            .bg(Color::Yellow)
    } else if let Some(m) = &app.message {
        Line::from(m.clone()).fg(Color::Cyan)
    } else {
        Line::from(format!(
            "q quit  Tab pane  ↑↓ select  s sort ({})  p {}  k close conn",
            app.sort_name(),
            if app.paused { "resume" } else { "pause" }
        ))
        .fg(Color::DarkGray)
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// `1536.0` → `1.5K`; `0` → `0B`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{}B", v.round())
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{}{}", v.round(), UNITS[unit])
    }
}

/// `3725.0` → `1h02m`; `42.3` → `42s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}
