//! pg-otp-dispatcher: delivers pg_otp_auth's outbox through SMS/WhatsApp providers.

mod captcha;
mod config;
mod dispatch;
mod errors;
mod metrics;
mod provider;
mod store;
mod tls;
mod webhook;

use axum::routing::get;
use clap::Parser;
use metrics::Metrics;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn main() -> ExitCode {
    let args = config::Args::parse();
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pg-otp-dispatcher: {e}");
            return ExitCode::from(2);
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("OTP_LOG").unwrap_or_else(|_| "info".into());
    match args.log_format {
        config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
        config::LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: config::Config) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(addr) = cfg.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let health_window = (cfg.poll * 3).max(Duration::from_secs(30));
        let (m1, m2) = (metrics.clone(), metrics.clone());
        let app = axum::Router::new()
            .route("/metrics", get(move || async move { m1.render() }))
            .route(
                "/health",
                get(move || async move {
                    if m2.healthy(health_window) {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "database unreachable",
                        )
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        tracing::info!(%addr, "metrics and health endpoints listening");
    }
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        let _ = stop_tx.send(true);
    });
    tracing::info!(
        provider = cfg.provider.name(),
        concurrency = cfg.concurrency,
        "dispatcher started"
    );
    dispatch::run(cfg, metrics, stop_rx).await?;
    tracing::info!("dispatcher stopped");
    Ok(())
}
