//! Printing: tables for people, JSON or YAML for scripts.

use std::io::{IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use finpool_proto::v1 as pb;

use crate::args::Output;

/// A document as `-o json` (pretty) or `-o yaml` prints it.
pub fn render(output: Output, value: &serde_json::Value) -> String {
    match output {
        // A JSON value's map keys are strings: YAML takes every value.
        Output::Yaml => serde_yaml_ng::to_string(value).expect("YAML from a JSON value"),
        _ => serde_json::to_string_pretty(value).expect("JSON from a JSON value"),
    }
}

/// One document of a stream (`--watch`, `job watch`): for JSON, one
/// compact line (as `kubectl -w -o json`); for YAML, a `---` document.
pub fn render_line(output: Output, value: &serde_json::Value) -> String {
    match output {
        Output::Yaml => format!("---\n{}", render(output, value).trim_end()),
        _ => value.to_string(),
    }
}

/// Prints a message as JSON or YAML: the JSON the REST API returns.
pub fn message<M: prost::Message + prost::Name>(output: Output, message: &M) {
    println!("{}", render(output, &finpool_proto::to_json(message)));
}

/// Prints a list of messages as a JSON (or YAML) array.
pub fn list<M: prost::Message + prost::Name>(output: Output, messages: &[M]) {
    let values: Vec<_> = messages.iter().map(finpool_proto::to_json).collect();
    println!("{}", render(output, &serde_json::Value::Array(values)));
}

/// Prints any serializable report (simulations, benchmarks) as JSON or YAML.
pub fn serialized<T: serde::Serialize + ?Sized>(output: Output, value: &T) -> anyhow::Result<()> {
    println!("{}", render(output, &serde_json::to_value(value)?));
    Ok(())
}

/// Writes `text` and a newline to stdout at once, flushed. A reader that
/// went away is `Ok(false)`: a watch ends quietly then (exit 0).
pub fn emit(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Text from the server made safe for a terminal: control characters
/// (escape sequences, carriage returns, bidi overrides) are shown as
/// `\u{..}` escapes instead of acting on the terminal. The server refuses
/// them in new input; rows stored before that still print safely.
pub fn clean(text: &str) -> String {
    if text.chars().all(finpool_domain::text::is_printable) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if finpool_domain::text::is_printable(c) {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

/// The terminal's width, when stdout is one.
fn terminal_width() -> Option<u16> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct given.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(size.ws_col)
}

/// A table that fits the terminal (wrapping cells), or at full width when
/// the output goes to a file or a pipe.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(headers.to_vec());
    if let Some(width) = terminal_width() {
        t.set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(width);
    }
    for row in rows {
        t.add_row(row.iter().map(|cell| clean(cell)).collect::<Vec<_>>());
    }
    t
}

pub fn millis(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref()
        .map(|t| t.seconds * 1000 + t.nanos as i64 / 1_000_000)
}

pub fn timestamp(t: &Option<prost_types::Timestamp>) -> String {
    match millis(t) {
        Some(ms) => finpool_domain::Timestamp(ms).to_rfc3339(),
        None => "-".into(),
    }
}

/// "1.5s", "2m03s".
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

pub fn state(value: i32) -> String {
    // A job's first transition comes from no state at all.
    if value == pb::JobState::Unspecified as i32 {
        return "new".into();
    }
    pb::JobState::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {value}"))
}

/// "node-a: 0,1" or "node-a: 2 (250m)" for a share.
pub fn placement(p: &Option<pb::Placement>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p.gpus.is_empty() => format!("{} (no GPU)", p.node),
        Some(p) => {
            let cards: Vec<String> = p.gpus.iter().map(|g| g.index.to_string()).collect();
            let share = match p.gpus.first() {
                Some(g) if g.milli < 1000 => format!(" ({}m)", g.milli),
                _ => String::new(),
            };
            format!("{}: {}{share}", p.node, cards.join(","))
        }
    }
}

/// What a job asks for, briefly.
pub fn request(spec: &Option<pb::JobSpec>) -> String {
    let Some(resources) = spec.as_ref().and_then(|s| s.resources.as_ref()) else {
        return "-".into();
    };
    match resources.gpu.as_ref().and_then(|g| g.kind.as_ref()) {
        Some(pb::gpu_request::Kind::WholeGpus(n)) => format!("{n} GPU"),
        Some(pb::gpu_request::Kind::Share(s)) if s.memory_mib > 0 => {
            format!("{}m / {} MiB", s.milli, s.memory_mib)
        }
        Some(pb::gpu_request::Kind::Share(s)) => format!("{}m GPU", s.milli),
        None => "CPU only".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_print_as_escapes() {
        assert_eq!(clean("plain — text"), "plain — text");
        assert_eq!(clean("\x1b[2Jgone"), "\\u{1b}[2Jgone");
        let table = table(&["REASON"], vec![vec!["a\rb".into()]]).to_string();
        assert!(table.contains("a\\u{d}b"), "{table}");
        assert!(!table.contains('\r'));
    }
}
