//! The warnings gato logs during a run, recorded so that `summary.json` and
//! `report.html` list them next to the results they qualify.

use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Warnings logged so far by this process, in order.
static RECORDED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A tracing layer that records the text of every warning logged by gato.
///
/// `gato` installs it beside the terminal log, without the log's level
/// filter, so that `--quiet` and `RUST_LOG` do not change what is recorded.
pub struct Collector;

impl<S: Subscriber> Layer<S> for Collector {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() != Level::WARN || !metadata.target().starts_with("gato") {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut line = text.message;
        if !text.fields.is_empty() {
            line.push_str(" (");
            line.push_str(&text.fields.join(", "));
            line.push(')');
        }
        RECORDED.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

/// Returns the warnings recorded so far, in the order they were logged.
pub fn recorded() -> Vec<String> {
    RECORDED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The message of an event and its other fields as `name=value`.
#[derive(Default)]
struct Text {
    message: String,
    fields: Vec<String>,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push(format!("{}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push(format!("{}={value:?}", field.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn collector_keeps_gato_warnings_only() {
        let subscriber = tracing_subscriber::registry().with(Collector);
        let before = recorded().len();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not a warning");
            tracing::warn!(target: "other_crate", "not from gato");
            tracing::warn!(run = "sigmoid_k3", empty = 2, "{} categories are empty", 2);
            tracing::warn!(input = %"a.parquet", "no fields but this one");
        });
        let logged = recorded()[before..].to_vec();
        assert_eq!(
            logged,
            [
                "2 categories are empty (run=sigmoid_k3, empty=2)",
                "no fields but this one (input=a.parquet)",
            ]
        );
    }
}
