//! `switchboard send` and `switchboard request`: direct messages and
//! request-response.

use anyhow::Context;
use clap::Args;
use switchboard_client::Client;
use switchboard_client::sealed::Channel;
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
    /// Seal the message end to end: encrypted to the recipient's keys and
    /// signed with the sender's (`--key-file`); `--data` is then any text.
    #[arg(
        long,
        requires = "key_file",
        requires = "to",
        conflicts_with = "to_type"
    )]
    encrypt: bool,
    /// The sending agent's key file (`switchboard keys generate`).
    #[arg(long, short = 'k', requires = "encrypt")]
    key_file: Option<std::path::PathBuf>,
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
        sealed: None,
        correlation_id: args.correlation_id,
        timeout_ms: args.timeout_ms,
    })
}

/// The sealed form of `send`/`request`: the channel of the key file's
/// agent, the recipient and the plaintext.
fn sealed_parts(
    client: Client,
    args: &MessageArgs,
) -> anyhow::Result<Option<(Channel, String, Vec<u8>)>> {
    if !args.encrypt {
        return Ok(None);
    }
    let (Some(file), Some(to)) = (&args.key_file, &args.to) else {
        anyhow::bail!("--encrypt needs --key-file and --to");
    };
    let ch = crate::keys::channel(client, file)?;
    let text = args.data.clone().unwrap_or_default();
    Ok(Some((ch, to.clone(), text.into_bytes())))
}

pub(crate) async fn send(client: Client, json: bool, args: MessageArgs) -> anyhow::Result<()> {
    let sent = match sealed_parts(client.clone(), &args)? {
        Some((ch, to, text)) => ch.send(&to, &text).await?,
        None => client.send_message(&body(args)?).await?,
    };
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
    if let Some((ch, to, text)) = sealed_parts(client.clone(), &args)? {
        let reply = ch
            .request(&to, &text, args.timeout_ms.unwrap_or(10_000))
            .await?;
        if json {
            return crate::keys::print_opened(&reply, None, true);
        }
        println!("{}", String::from_utf8_lossy(&reply.plaintext).trim_end());
        return Ok(());
    }
    let reply = client.request(&body(args)?).await?;
    if json {
        return output::json(&reply);
    }
    output::json(&reply.reply.data.unwrap_or_default())
}
