//! `--watch`: print a view now, and again whenever it changes, until
//! Ctrl-C or the reader goes away (both exit 0, as `kubectl get -w`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::args::Output;
use crate::output;

/// How often views without an event stream (nodes, tenants) are polled.
pub const POLL: Duration = Duration::from_secs(2);

/// What a watch prints: the document (`-o json|yaml`, and what decides
/// whether anything changed) and the text for people.
pub struct View {
    pub document: serde_json::Value,
    pub text: String,
}

/// Something that may have changed the view; an error ends the watch.
pub type Changes = Pin<Box<dyn Stream<Item = anyhow::Result<()>> + Send>>;

/// A tick every [`POLL`], for views the server has no event stream for.
pub fn poll() -> Changes {
    Box::pin(futures::stream::unfold((), |()| async {
        tokio::time::sleep(POLL).await;
        Some((Ok(()), ()))
    }))
}

/// Prints `fetch()`'s view, then fetches again at each of `changes` and
/// prints the view when it differs from the last one printed. With
/// `-o json`, one compact document per line; with `-o yaml`, one `---`
/// document per change; tables are printed whole, a blank line apart.
/// Ends with Ok at Ctrl-C, when stdout's reader has gone, or when the
/// server ends the change stream.
pub async fn run<F, Fut>(output: Output, mut fetch: F, mut changes: Changes) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<View>>,
{
    // Registered now, so that a Ctrl-C from here on ends the watch cleanly.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut last: Option<serde_json::Value> = None;
    loop {
        let view = tokio::select! {
            view = fetch() => view?,
            _ = interrupt.recv() => return Ok(()),
        };
        if last.as_ref() != Some(&view.document) {
            let text = if output.is_document() {
                output::render_line(output, &view.document)
            } else if last.is_some() {
                format!("\n{}", view.text.trim_end())
            } else {
                view.text.trim_end().to_owned()
            };
            if !output::emit(&text)? {
                return Ok(());
            }
            last = Some(view.document);
        }
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            _ = interrupt.recv() => return Ok(()),
        }
    }
}
