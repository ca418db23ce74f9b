//! Reading the public traces' CSV files: columns found by name, rows with
//! their line numbers, and errors that name the file, line and field.

use std::io::Read;

use crate::openb::TraceError;

/// A trace file's header, to find columns by name.
pub(crate) struct Columns {
    file: String,
    headers: Vec<String>,
}

impl Columns {
    pub(crate) fn index(&self, name: &str) -> Result<usize, TraceError> {
        self.headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| TraceError::Format {
                file: self.file.clone(),
                reason: format!("no {name:?} column (columns: {})", self.headers.join(",")),
            })
    }
}

/// Opens a CSV trace and reads its header.
pub(crate) fn reader(
    file: &str,
    input: impl Read,
) -> Result<(csv::Reader<impl Read>, Columns), TraceError> {
    let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(input);
    let headers = r
        .headers()
        .map_err(|e| TraceError::Format {
            file: file.into(),
            reason: e.to_string(),
        })?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    Ok((
        r,
        Columns {
            file: file.into(),
            headers,
        },
    ))
}

/// The data rows, each with its line number.
pub(crate) fn rows<'r, R: Read>(
    file: &'r str,
    r: &'r mut csv::Reader<R>,
) -> impl Iterator<Item = Result<(u64, csv::StringRecord), TraceError>> + 'r {
    r.records().map(move |record| {
        let record = record.map_err(|e| TraceError::Format {
            file: file.into(),
            reason: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        Ok((line, record))
    })
}

pub(crate) fn field_error(file: &str, line: u64, field: &str, reason: String) -> TraceError {
    TraceError::Field {
        file: file.into(),
        line,
        field: field.into(),
        reason,
    }
}

/// A non-negative finite number of seconds, milliseconds, …
pub(crate) fn non_negative(
    file: &str,
    line: u64,
    field: &str,
    value: &str,
    what: &str,
) -> Result<f64, TraceError> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| field_error(file, line, field, format!("{value:?} is not {what}")))
}
