//! `switchboard send` and `switchboard request`: direct messages and
//! request-response.

use anyhow::Context;
use clap::Args;
use switchboard_client::Client;
use switchboard_wire::SendMessageRequest;

use crate::output;

#[derive(Args)]
pub(crate) struct MessageArgs {
    /// The recipient agent's id.
    #[arg(long, required_unless_present = "to_type", conflicts_with = "to_type")]
    to: Option<String>,
    /// Or: any live agent of this type.
    #[arg(long)]
    to_type: Option<String>,
    /// The sending agent's id.
    #[arg(long)]
    from: Option<String>,
    /// The event type.
    #[arg(long = "type")]
    message_type: Option<String>,
    /// The payload, as JSON.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// The correlation id (made when absent).
    #[arg(long)]
    correlation_id: Option<String>,
    /// Requests only: milliseconds to wait for the reply.
    #[arg(long)]
    timeout_ms: Option<u64>,
}

fn body(args: MessageArgs) -> anyhow::Result<SendMessageRequest> {
    let data = args
        .data
        .map(|d| serde_json::from_str(&d).context("--data must be JSON"))
        .transpose()?;
    Ok(SendMessageRequest {
        to: args.to,
        to_type: args.to_type,
        from: args.from,
        message_type: args.message_type,
        subject: None,
        data,
        correlation_id: args.correlation_id,
        timeout_ms: args.timeout_ms,
    })
}

pub(crate) async fn send(client: Client, json: bool, args: MessageArgs) -> anyhow::Result<()> {
    let sent = client.send_message(&body(args)?).await?;
    if json {
        return output::json(&sent);
    }
    println!(
        "sent {} to {} ({} at offset {})",
        sent.id, sent.to, sent.topic, sent.offset
    );
    Ok(())
}

pub(crate) async fn request(client: Client, json: bool, args: MessageArgs) -> anyhow::Result<()> {
    let reply = client.request(&body(args)?).await?;
    if json {
        return output::json(&reply);
    }
    output::json(&reply.reply.data.unwrap_or_default())
}
