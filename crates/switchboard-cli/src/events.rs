//! `switchboard publish`, `switchboard subscribe`, `switchboard events read`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use switchboard_client::{Client, EventQuery, From};
use switchboard_wire::{CloudEvent, Payload, PublishEvent};

use crate::output;

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// The topic to publish on (not with --file).
    #[arg(required_unless_present = "file")]
    topic: Option<String>,
    /// The event's data, as JSON.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// The event type (the topic when absent).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// The event source.
    #[arg(long)]
    source: Option<String>,
    /// The event subject.
    #[arg(long)]
    subject: Option<String>,
    /// An extension attribute, NAME=VALUE (repeatable): correlationid,
    /// partitionkey, targetagent, …
    #[arg(long = "ext", value_name = "NAME=VALUE")]
    extensions: Vec<String>,
    /// A JSON file with one CloudEvent or an array of them.
    #[arg(long, short = 'f', conflicts_with_all = ["topic", "data", "event_type"])]
    file: Option<PathBuf>,
    /// Do not log the events: hand them to live subscribers only (no
    /// offset, no replay, at most once).
    #[arg(long)]
    transient: bool,
}

#[derive(Args)]
pub(crate) struct SubscribeArgs {
    /// Topic patterns: `*` is one token, `>` the rest (all topics when absent).
    patterns: Vec<String>,
    /// A payload filter as JSON: '{"priority": ["high", "critical"]}'.
    #[arg(long)]
    filter: Option<String>,
    /// Replay the log after this offset, then go live.
    #[arg(long, conflicts_with = "from_time")]
    after: Option<u64>,
    /// Replay from this RFC 3339 time, then go live.
    #[arg(long)]
    from_time: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Open sealed messages with the agent's key file (`--key-file`):
    /// each is verified and decrypted, or refused with its reason on
    /// stderr. Without patterns, the agent's inbox.
    #[arg(long, requires = "key_file")]
    decrypt: bool,
    /// The receiving agent's key file.
    #[arg(long, short = 'k', requires = "decrypt")]
    key_file: Option<std::path::PathBuf>,
    /// With --decrypt: answer each sealed request with this shell
    /// command's output (its standard input is the request's plaintext).
    #[arg(long, requires = "decrypt")]
    reply_with: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// Read the log.
    Read {
        /// Topic patterns (all topics when absent).
        patterns: Vec<String>,
        /// A payload filter as JSON.
        #[arg(long)]
        filter: Option<String>,
        /// Start after this offset.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn parse_filter(f: Option<&str>) -> anyhow::Result<Option<Map<String, Value>>> {
    f.map(|f| {
        serde_json::from_str::<Map<String, Value>>(f)
            .context("--filter must be a JSON object like '{\"priority\": [\"high\"]}'")
    })
    .transpose()
}

pub(crate) async fn publish(client: Client, json: bool, args: PublishArgs) -> anyhow::Result<()> {
    let events: Vec<PublishEvent> = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            match serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
            {
                Value::Array(items) => items
                    .into_iter()
                    .map(serde_json::from_value)
                    .collect::<Result<_, _>>()?,
                one => vec![serde_json::from_value(one)?],
            }
        }
        None => {
            let data = args
                .data
                .as_deref()
                .map(serde_json::from_str::<Payload>)
                .transpose()
                .context("--data must be JSON (quote strings: '\"text\"')")?;
            let mut extensions = Map::new();
            for kv in &args.extensions {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--ext takes NAME=VALUE, not {kv:?}");
                };
                extensions.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            vec![PublishEvent {
                topic: args.topic.clone(),
                event_type: args.event_type.clone(),
                source: args.source.clone(),
                subject: args.subject.clone(),
                data,
                extensions,
                ..Default::default()
            }]
        }
    };
    let ack = if args.transient {
        client.publish_transient(&events).await?
    } else {
        client.publish(&events).await?
    };
    if json {
        return output::json(&ack);
    }
    for p in &ack.events {
        match (p.offset, p.scheduled_for, p.delivered_to) {
            (Some(o), _, _) => println!("published {} on {} at offset {o}", p.id, p.topic),
            (None, Some(t), _) => println!(
                "scheduled {} on {} for {}",
                p.id,
                p.topic,
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            (None, None, Some(n)) => println!(
                "delivered {} on {} to {n} live subscription{} (transient, not logged)",
                p.id,
                p.topic,
                if n == 1 { "" } else { "s" }
            ),
            (None, None, None) => println!("published {} on {}", p.id, p.topic),
        }
    }
    Ok(())
}

fn print_event(e: &CloudEvent, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        let data = e.data.as_ref().map(Value::to_string).unwrap_or_default();
        println!(
            "{:>8}  {}  {}  {}  {}",
            output::offset(e.offset),
            e.time.format("%H:%M:%S%.3f"),
            e.topic,
            e.event_type,
            data
        );
    }
    Ok(())
}

/// Streams events until `--count` or Ctrl-C. When the connection drops it
/// reconnects, resuming after the last event printed, so nothing is missed.
pub(crate) async fn subscribe(
    client: Client,
    json: bool,
    args: SubscribeArgs,
) -> anyhow::Result<()> {
    let from = match (args.after, args.from_time.as_deref()) {
        (Some(o), _) => From::After(o),
        (None, Some(t)) => From::Time(
            chrono::DateTime::parse_from_rfc3339(t)
                .context("--from-time must be an RFC 3339 time like 2026-01-15T12:00:00Z")?
                .timestamp_millis(),
        ),
        (None, None) => From::Now,
    };
    let channel = match &args.key_file {
        Some(f) if args.decrypt => Some(crate::keys::channel(client.clone(), f)?),
        _ => None,
    };
    let mut topics = args.patterns.clone();
    if let (Some(ch), true) = (&channel, topics.is_empty()) {
        topics.push(format!("inbox.{}", ch.keys().agent_id()));
    }
    let query = EventQuery {
        topics,
        filter: parse_filter(args.filter.as_deref())?,
        from,
        limit: None,
    };
    let mut last: Option<u64> = None;
    let mut seen = 0u64;
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut stream = match client.stream_events(&query, last).await {
            Ok(s) => s,
            // Bad input is final; an unreachable hub is worth waiting for
            // once we have been connected.
            Err(e) if e.is_unreachable() && last.is_some() => {
                eprintln!("switchboard: hub unreachable, retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        backoff = Duration::from_millis(200);
        while let Ok(Some(e)) = stream.next().await {
            match &channel {
                Some(ch) => {
                    crate::keys::handle(ch, &e, json, args.reply_with.as_deref()).await?;
                }
                None => print_event(&e, json)?,
            }
            if let Some(o) = e.offset {
                last = Some(o);
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
        if last.is_none() {
            // Resume from where the stream stood, even if it gave nothing.
            last = match query.from {
                From::After(o) => Some(o),
                _ => None,
            };
        }
        eprintln!("switchboard: stream ended; reconnecting");
    }
}

pub(crate) async fn run(client: Client, json: bool, cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Read {
            patterns,
            filter,
            after,
            limit,
        } => {
            let page = client
                .read_events(&EventQuery {
                    topics: patterns,
                    filter: parse_filter(filter.as_deref())?,
                    from: From::After(after),
                    limit: Some(limit),
                })
                .await?;
            if json {
                return output::json(&page);
            }
            for e in &page.events {
                print_event(e, false)?;
            }
            Ok(())
        }
    }
}
