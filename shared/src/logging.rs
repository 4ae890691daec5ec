//! JSON log lines, one span per message with `job`, `segment` and `seq` fields.

use tracing_subscriber::EnvFilter;

/// Log JSON lines to stderr. The level comes from `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`,
/// else `info`.
pub fn init() {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| EnvFilter::new(l.to_lowercase())))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
