//! Logs with `tracing`, as `log_config` says: text or JSON, to stderr or to
//! `<log_dir>/<file_name>` (or both). Verbosity `v`: 0 info, 1-2 debug, 3+ trace for
//! bcs-api's own modules. No secret is ever a field or a message (secrets are `Secret`, whose
//! `Debug` is `Secret(***)`).
use crate::config::{non_empty, Config};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Keep the guards alive: dropping them flushes the logs.
///
/// Lines are written by a background thread (tracing-appender's non-blocking writer, also for
/// stderr), so a request never waits on a log write; if that queue is ever full, lines are
/// dropped rather than the data plane slowed.
pub fn init(config: &Config, format_override: Option<&str>, file_name: &str) -> anyhow::Result<Vec<WorkerGuard>> {
    let log = &config.log_config;
    let filter = filter(config, std::env::var("BCS_LOG").ok().as_deref());
    let json = format_override.or(non_empty(&log.log_format)) == Some("json");

    let mut guards = Vec::new();
    let mut stderr = || {
        let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
        guards.push(guard);
        writer
    };
    let writer = if log.logtostderr.unwrap_or(true) {
        BoxMakeWriter::new(stderr())
    } else {
        let dir = config.log_dir();
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("log_config.log_dir {}: {e}", dir.display()))?;
        let (file, g) = tracing_appender::non_blocking(tracing_appender::rolling::never(&dir, file_name));
        let also = log.alsologtostderr.unwrap_or(false).then(&mut stderr);
        guards.push(g);
        match also {
            Some(stderr) => BoxMakeWriter::new(file.and(stderr)),
            None => BoxMakeWriter::new(file),
        }
    };
    let layer = if json {
        tracing_subscriber::fmt::layer().json().with_writer(writer).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer).boxed()
    };
    tracing_subscriber::registry().with(filter).with(layer).try_init()?;
    Ok(guards)
}

/// Libraries that log credentials at trace level, capped below it whatever `BCS_LOG` asks:
/// tungstenite writes the whole handshake request, the permission subscription's
/// `Authorization: Basic` (app code and secret) included.
const NEVER_TRACED: &[&str] = &["tungstenite::handshake::client=debug"];

/// What is logged: `log_config.v` (and `access_log`), or `BCS_LOG` when set and valid.
fn filter(config: &Config, bcs_log: Option<&str>) -> EnvFilter {
    let log = &config.log_config;
    // rustls warns, per handshake, about what a client sent (an IP address as SNI, which wrk
    // and some libraries send): a client could fill the log with it. Its errors still show.
    let default = match log.v.unwrap_or(0) {
        0 => "info,rustls=error",
        1 | 2 => "info,rustls=error,bcs_admin=debug,bcs_proxy=debug,bcs_shared=debug",
        _ => "debug,bcs_admin=trace,bcs_proxy=trace,bcs_shared=trace",
    };
    let default =
        if log.access_log.unwrap_or(true) { default.to_owned() } else { format!("{default},bcs_proxy::access=off") };
    let mut filter = bcs_log.and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| EnvFilter::new(default));
    for directive in NEVER_TRACED {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    filter
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::prelude::*;

    /// Keeps the target of every event that passes the filter.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(event.metadata().target().to_owned());
        }
    }

    #[test]
    fn a_handshake_with_credentials_is_not_traced_even_when_trace_is_asked_for() {
        let config = crate::config::Config::default();
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(super::filter(&config, Some("trace"))).with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "tungstenite::handshake::client", "Request: authorization: Basic c2VjcmV0");
            tracing::debug!(target: "tungstenite::handshake::client", "handshake done");
            tracing::trace!(target: "tungstenite::protocol", "frame");
        });
        assert_eq!(*seen.0.lock().unwrap(), vec!["tungstenite::handshake::client", "tungstenite::protocol"]);
    }
}
