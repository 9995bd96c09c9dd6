//! Sealed (end-to-end encrypted, signed) messages between agents over the
//! real hub: the round trip, proof of possession, every refusal, key
//! rotation and revocation, plaintext kept out of the store and the logs,
//! and interoperation with an independent HPKE implementation (pyhpke).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_client::Client;
use switchboard_client::sealed::{Channel, SealedError};
use switchboard_seal::{AgentKeys, Kind, Metadata, SealedMessage};
use switchboard_test::{ADMIN_TOKEN, HubProcess, Spawn, http_client};

use crate::bin;

/// Registers `id` through the admin and returns a client carrying the
/// agent's own token.
async fn enrol(base: &str, id: &str) -> Client {
    let admin = http_client(ADMIN_TOKEN).expect("client");
    let resp = admin
        .post(format!("{base}/api/v1/agents/register"))
        .json(&crate::agent(id, "worker", &[]))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    let secret = body["credentials"]["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let t: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = t["access_token"].as_str().expect("token");
    Client::new(base).expect("client").with_token(token)
}

/// An agent with registered keys.
async fn keyed(base: &str, id: &str) -> (Client, Channel) {
    let client = enrol(base, id).await;
    let keys = AgentKeys::generate(id).expect("keys");
    client
        .register_keys(&keys, None)
        .await
        .expect("register keys");
    (client.clone(), Channel::new(client, keys))
}

/// Posts a sealed message as `client`; the status and the problem code.
async fn post_sealed(client: &Client, route: &str, sealed: &SealedMessage) -> (StatusCode, String) {
    let http = http_client(client.token().expect("token")).expect("http");
    let resp = http
        .post(format!("{}{route}", client.base_url().as_str().trim_end_matches('/')))
        .json(&json!({"sealed": sealed, "timeout_ms": if route.ends_with("requests") { Some(2000) } else { None }}))
        .send()
        .await
        .expect("post");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

fn code(e: &SealedError) -> String {
    e.code()
}

/// The next event on `inbox`, read from the log after `after`.
async fn next_in(client: &Client, topic: &str, after: u64) -> switchboard_wire::CloudEvent {
    let q = switchboard_client::EventQuery {
        topics: vec![topic.to_owned()],
        filter: None,
        from: switchboard_client::From::After(after),
        limit: Some(1),
    };
    switchboard_test::eventually(Duration::from_secs(10), "an event on the topic", || async {
        client
            .read_events(&q)
            .await
            .ok()
            .and_then(|p| p.events.into_iter().next())
    })
    .await
    .expect("an event")
}

#[tokio::test]
async fn a_sealed_request_is_answered_and_the_hub_never_sees_plaintext() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("hub.log");
    let data = dir.path().join("data");
    let mut hub = HubProcess::spawn_with(
        bin(),
        &data,
        &[],
        &Spawn {
            log_level: Some("debug,sqlx=debug".into()),
            stderr_to: Some(log.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("spawn");
    let base = hub.url("");
    let base = base.trim_end_matches('/');
    let (_, alice) = keyed(base, "alice").await;
    let (bob_client, bob) = keyed(base, "bob").await;

    // Bob answers requests from his inbox, upper-casing them.
    let bob = std::sync::Arc::new(bob);
    let responder = {
        let bob = bob.clone();
        let client = bob_client.clone();
        tokio::spawn(async move {
            let q = switchboard_client::EventQuery {
                topics: vec!["inbox.bob".into()],
                filter: None,
                // From the start of the log: nothing sent before the
                // stream opens is missed.
                from: switchboard_client::From::After(0),
                limit: None,
            };
            let mut stream = client.stream_events(&q, None).await.expect("stream");
            let mut opened = Vec::new();
            while let Ok(Some(e)) = stream.next().await {
                let o = bob.open(&e).await.expect("bob opens");
                if o.kind == Kind::Request {
                    let answer = String::from_utf8_lossy(&o.plaintext).to_uppercase();
                    bob.reply(&o, answer.as_bytes()).await.expect("reply");
                }
                opened.push(o);
                if opened.len() == 2 {
                    return opened;
                }
            }
            opened
        })
    };
    let marker = "zebra-plaintext-4711";
    let reply = alice
        .request("bob", format!("hello bob, {marker}").as_bytes(), 5_000)
        .await
        .expect("sealed request");
    assert_eq!(reply.from, "bob");
    assert_eq!(reply.kind, Kind::Reply);
    assert_eq!(
        String::from_utf8_lossy(&reply.plaintext),
        format!("HELLO BOB, {}", marker.to_uppercase())
    );
    let sent = alice
        .send("bob", format!("one way, {marker}").as_bytes())
        .await
        .expect("sealed message");
    assert_eq!(sent.topic, "inbox.bob");
    let opened = tokio::time::timeout(Duration::from_secs(10), responder)
        .await
        .expect("bob got both")
        .expect("join");
    assert_eq!(opened.len(), 2);
    assert_eq!(opened[0].from, "alice");
    assert_eq!(opened[1].kind, Kind::Message);
    assert_eq!(
        String::from_utf8_lossy(&opened[1].plaintext),
        format!("one way, {marker}")
    );

    // What the hub stored is the envelope: ciphertext, not the text.
    let e = next_in(&bob_client, "inbox.bob", 0).await;
    assert_eq!(e.datacontenttype, switchboard_seal::CONTENT_TYPE);
    assert_eq!(e.data.as_ref().expect("data")["from"], "alice");
    hub.signal("-TERM").await.expect("term");
    hub.wait(Duration::from_secs(30)).await.expect("exit");
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        for needle in [marker, &marker.to_uppercase()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in {}",
                path.display()
            );
        }
    }
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        log_text.contains("agent keys registered"),
        "debug log captured"
    );
    assert!(!log_text.contains(marker) && !log_text.contains(&marker.to_uppercase()));
}

#[tokio::test]
async fn keys_are_registered_only_with_proof_of_possession() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let base = hub.url("");
    let base = base.trim_end_matches('/');
    let carol = enrol(base, "carol").await;
    let _dave = enrol(base, "dave").await;
    let http = http_client(carol.token().expect("token")).expect("http");
    let url = |p: &str| format!("{base}{p}");
    let keys = AgentKeys::generate("carol").expect("keys");
    let p = keys.public();
    let offer = json!({"signing_key": p.signing_b64(), "encryption_key": p.encryption_b64()});
    let challenge = |body: Value| {
        let http = http.clone();
        let u = url("/api/v1/agents/carol/keys/challenge");
        async move {
            let r = http.post(u).json(&body).send().await.expect("challenge");
            (r.status(), r.json::<Value>().await.expect("json"))
        }
    };
    let register = |body: Value| {
        let http = http.clone();
        let u = url("/api/v1/agents/carol/keys");
        async move {
            let r = http.post(u).json(&body).send().await.expect("register");
            (r.status(), r.json::<Value>().await.expect("json"))
        }
    };
    let open_nonce = |c: &Value, keys: &AgentKeys| {
        switchboard_seal::open_challenge(
            keys,
            c["challenge_id"].as_str().expect("id"),
            &switchboard_seal::Challenge {
                enc: c["enc"].as_str().expect("enc").into(),
                ciphertext: c["ciphertext"].as_str().expect("ct").into(),
            },
        )
    };
    let signed = |c: &Value, nonce: &[u8], by: &AgentKeys, of: &AgentKeys| {
        let statement = switchboard_seal::registration_statement(
            "carol",
            c["challenge_id"].as_str().expect("id"),
            nonce,
            of.public(),
        );
        switchboard_seal::b64(&by.sign(&statement))
    };

    // Malformed keys are named.
    let (s, body) =
        challenge(json!({"signing_key": "abc", "encryption_key": p.encryption_b64()})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "signing_key");
    // Another agent's keys: refused.
    let r = http
        .post(url("/api/v1/agents/dave/keys/challenge"))
        .json(&offer)
        .send()
        .await
        .expect("other");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A nonce the agent did not read (it signs a guess): refused, and the
    // challenge is spent.
    let (s, c) = challenge(offer.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let guess = signed(&c, &[0u8; 32], &keys, &keys);
    let attempt = json!({"challenge_id": c["challenge_id"], "signing_key": p.signing_b64(),
                         "encryption_key": p.encryption_b64(), "signature": guess});
    let (s, body) = register(attempt).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "PROOF_INVALID");
    // Another key pair cannot read the nonce at all.
    let other = AgentKeys::generate("carol").expect("keys");
    let (_, c) = challenge(offer.clone()).await;
    assert!(open_nonce(&c, &other).is_err());
    // Signed by a key other than the offered one: refused.
    let nonce = open_nonce(&c, &keys).expect("nonce");
    let (s, body) = register(
        json!({"challenge_id": c["challenge_id"], "signing_key": p.signing_b64(),
        "encryption_key": p.encryption_b64(), "signature": signed(&c, &nonce, &other, &keys)}),
    )
    .await;
    assert_eq!(
        (s, body["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("PROOF_INVALID"))
    );
    // The right proof: registered and current.
    let (_, c) = challenge(offer.clone()).await;
    let nonce = open_nonce(&c, &keys).expect("nonce");
    let good = json!({"challenge_id": c["challenge_id"], "signing_key": p.signing_b64(),
        "encryption_key": p.encryption_b64(), "signature": signed(&c, &nonce, &keys, &keys)});
    let (s, body) = register(good.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "current");
    assert_eq!(body["fingerprint"], keys.fingerprint());
    // A challenge answers once.
    let (s, body) = register(good).await;
    assert_eq!(
        (s, body["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("PROOF_INVALID"))
    );

    // New keys while some are current: a rotation, which the current key
    // must sign.
    let next = AgentKeys::generate("carol").expect("keys");
    let np = next.public();
    let offer2 = json!({"signing_key": np.signing_b64(), "encryption_key": np.encryption_b64()});
    let (_, c) = challenge(offer2.clone()).await;
    let nonce = open_nonce(&c, &next).expect("nonce");
    let base_body = json!({"challenge_id": c["challenge_id"], "signing_key": np.signing_b64(),
        "encryption_key": np.encryption_b64(), "signature": signed(&c, &nonce, &next, &next)});
    let (s, body) = register(base_body.clone()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("rotation_signature")
    );
    let (_, c) = challenge(offer2.clone()).await;
    let nonce = open_nonce(&c, &next).expect("nonce");
    let mut rotation = json!({"challenge_id": c["challenge_id"], "signing_key": np.signing_b64(),
        "encryption_key": np.encryption_b64(), "signature": signed(&c, &nonce, &next, &next),
        "rotation_signature": signed(&c, &nonce, &other, &next)});
    // Signed by a key that is not the current one: refused.
    let (s, body) = register(rotation.clone()).await;
    assert_eq!(
        (s, body["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("PROOF_INVALID"))
    );
    let (_, c) = challenge(offer2).await;
    let nonce = open_nonce(&c, &next).expect("nonce");
    rotation["challenge_id"] = c["challenge_id"].clone();
    rotation["signature"] = json!(signed(&c, &nonce, &next, &next));
    rotation["rotation_signature"] = json!(signed(&c, &nonce, &keys, &next));
    let (s, body) = register(rotation).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["signed_by"], keys.fingerprint());
    let dir = carol.agent_keys("carol").await.expect("keys");
    assert_eq!(dir.keys.len(), 2);
    assert_eq!(dir.keys[0].status, "rotated");
    assert_eq!(
        dir.current.expect("current").fingerprint,
        next.fingerprint()
    );

    // A rotated-out pair never comes back.
    let e = carol
        .register_keys(&keys, Some(&next))
        .await
        .expect_err("old keys");
    assert_eq!(code(&e), "PROOF_INVALID");
    assert!(e.to_string().contains("never comes back"), "{e}");
}

#[tokio::test]
async fn altered_misaddressed_replayed_and_stale_messages_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let base = hub.url("");
    let base = base.trim_end_matches('/');
    let (alice_client, alice) = keyed(base, "alice").await;
    let (bob_client, bob) = keyed(base, "bob").await;
    let (_, carol) = keyed(base, "carol").await;

    let fresh = || async {
        alice
            .seal("bob", Kind::Message, None, b"transfer 10")
            .await
            .expect("seal")
    };

    // The untouched message goes through.
    let good = fresh().await;
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &good)
            .await
            .0,
        StatusCode::ACCEPTED
    );

    // Altered ciphertext or metadata: the signature no longer verifies.
    let mut m = fresh().await;
    let mut ct = switchboard_seal::unb64("ciphertext", &m.ciphertext).expect("b64");
    ct[3] ^= 0x40;
    m.ciphertext = switchboard_seal::b64(&ct);
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &m).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "SIGNATURE_INVALID".into())
    );
    let mut m = fresh().await;
    m.correlation_id = "other".into();
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &m).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "SIGNATURE_INVALID".into())
    );
    // Retargeted to Carol: the message names Bob's key, not hers.
    let mut m = fresh().await;
    m.to = "carol".into();
    let (s, c) = post_sealed(&alice_client, "/api/v1/messages", &m).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(c == "SIGNATURE_INVALID" || c == "WRONG_RECIPIENT", "{c}");
    // Sealed to Carol's key but addressed to Bob: wrong recipient.
    let carol_keys = carol.keys().public().clone();
    let meta = Metadata {
        id: switchboard_seal::new_message_id().expect("id"),
        from: "alice".into(),
        to: "bob".into(),
        kind: Kind::Message,
        correlation_id: "c-1".into(),
        sent_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let m = SealedMessage::seal(alice.keys(), &carol_keys, meta.clone(), b"x").expect("seal");
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &m).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "WRONG_RECIPIENT".into())
    );
    // Sent once, then again: a replay.
    let m = fresh().await;
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &m).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &m).await,
        (StatusCode::CONFLICT, "MESSAGE_REPLAYED".into())
    );
    // Sealed ten minutes ago: outside the window.
    let old = Metadata {
        id: switchboard_seal::new_message_id().expect("id"),
        sent_at_ms: chrono::Utc::now().timestamp_millis() - 10 * 60 * 1000,
        ..meta.clone()
    };
    let bob_pub = bob.keys().public().clone();
    let m = SealedMessage::seal(alice.keys(), &bob_pub, old, b"x").expect("seal");
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &m).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "MESSAGE_EXPIRED".into())
    );
    // Alice's message sent by Bob, or by the admin: refused.
    let m = fresh().await;
    assert_eq!(
        post_sealed(&bob_client, "/api/v1/messages", &m).await.0,
        StatusCode::FORBIDDEN
    );
    let admin = Client::new(base).expect("client").with_token(ADMIN_TOKEN);
    assert_eq!(
        post_sealed(&admin, "/api/v1/messages", &m).await.0,
        StatusCode::FORBIDDEN
    );
    // A request sealed as a one-way message (or the reverse) is refused
    // naming the field.
    let req = alice
        .seal("bob", Kind::Request, None, b"q")
        .await
        .expect("seal");
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &req).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED".into())
    );
    // A forged reply published as an event: checked like any sealed message.
    let mut forged = alice
        .seal("bob", Kind::Reply, None, b"r")
        .await
        .expect("seal");
    forged.signature = switchboard_seal::b64(&[7u8; 64]);
    let http = http_client(alice_client.token().expect("token")).expect("http");
    let r = http
        .post(format!("{base}/api/v1/events"))
        .json(&json!({"topic": "reply.c-9", "type": "reply",
                      "datacontenttype": switchboard_seal::CONTENT_TYPE, "data": forged}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // At the recipient: what the hub delivered opens once; a second copy
    // is a replay; a message for Carol does not open for Bob.
    let e = next_in(&bob_client, "inbox.bob", 0).await;
    let opened = bob.open(&e).await.expect("opens");
    assert_eq!(opened.plaintext, b"transfer 10");
    assert_eq!(
        code(&bob.open(&e).await.expect_err("replay")),
        "MESSAGE_REPLAYED"
    );
    let for_carol = alice
        .seal("carol", Kind::Message, None, b"c")
        .await
        .expect("seal");
    let e = bob
        .open_sealed(&for_carol, None)
        .await
        .expect_err("not bob's");
    assert_eq!(code(&e), "WRONG_RECIPIENT");
    // Tampered after delivery (a hub that changed it): refused by Bob.
    let mut m = alice
        .seal("bob", Kind::Message, None, b"x")
        .await
        .expect("seal");
    m.sent_at += 1;
    assert_eq!(
        code(&bob.open_sealed(&m, None).await.expect_err("altered")),
        "SIGNATURE_INVALID"
    );
}

#[tokio::test]
async fn rotated_out_and_revoked_keys_sign_nothing_more() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let base = hub.url("");
    let base = base.trim_end_matches('/');
    let (alice_client, alice) = keyed(base, "alice").await;
    let (bob_client, bob) = keyed(base, "bob").await;
    // Bob asks the hub for Alice's keys on every message, so he sees a
    // revocation at once (by default within a few seconds).
    let bob = bob.with_directory_ttl(Duration::ZERO);

    // Delivered while Alice's first keys were current.
    let sent = alice
        .send("bob", b"before the rotation")
        .await
        .expect("send");
    let delivered = next_in(&bob_client, "inbox.bob", sent.offset - 1).await;
    let early = alice
        .seal("bob", Kind::Message, None, b"held back")
        .await
        .expect("seal");

    // Alice rotates.
    let new_keys = AgentKeys::generate("alice").expect("keys");
    alice_client
        .register_keys(&new_keys, Some(alice.keys()))
        .await
        .expect("rotate");
    // What the old keys signed is refused now, by the hub and by Bob.
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &early).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "KEY_ROTATED".into())
    );
    assert_eq!(
        code(&bob.open(&delivered).await.expect_err("rotated")),
        "KEY_ROTATED"
    );
    // The new keys work.
    let alice2 = Channel::new(alice_client.clone(), new_keys);
    let sent = alice2
        .send("bob", b"after the rotation")
        .await
        .expect("send");
    let e = next_in(&bob_client, "inbox.bob", sent.offset - 1).await;
    let opened = bob.open(&e).await.expect("opens");
    assert_eq!(opened.plaintext, b"after the rotation");

    // Alice's current keys are revoked (say, stolen).
    let held = alice2
        .seal("bob", Kind::Message, None, b"stolen")
        .await
        .expect("seal");
    let fp = alice2.keys().fingerprint();
    let revoked = alice_client
        .revoke_keys("alice", &fp, Some("laptop stolen".into()))
        .await
        .expect("revoke");
    assert_eq!(revoked.status, "revoked");
    assert_eq!(revoked.revoked_reason.as_deref(), Some("laptop stolen"));
    assert_eq!(
        post_sealed(&alice_client, "/api/v1/messages", &held).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "KEY_REVOKED".into())
    );
    // Bob refuses a message of the revoked keys even if it reaches him.
    assert_eq!(
        code(&bob.open_sealed(&held, None).await.expect_err("revoked")),
        "KEY_REVOKED"
    );
    // Without current keys nobody can seal to Alice; after she registers
    // new ones (no rotation signature needed now), they work.
    let e = bob.send("alice", b"hi").await.expect_err("no keys");
    assert_eq!(code(&e), "WRONG_RECIPIENT");
    let third = AgentKeys::generate("alice").expect("keys");
    alice_client
        .register_keys(&third, None)
        .await
        .expect("fresh keys");
    let d = bob_client.agent_keys("alice").await.expect("dir");
    let statuses: Vec<&str> = d.keys.iter().map(|k| k.status.as_str()).collect();
    assert_eq!(statuses, ["rotated", "revoked", "current"]);
    // Removing the agent removes its keys.
    let admin = Client::new(base).expect("client").with_token(ADMIN_TOKEN);
    admin.remove_agent("alice").await.expect("remove");
    admin
        .register_agent(
            &serde_json::from_value(crate::agent("alice", "worker", &[])).expect("body"),
        )
        .await
        .expect("re-register");
    assert!(
        admin
            .agent_keys("alice")
            .await
            .expect("dir")
            .keys
            .is_empty()
    );
}

const PYHPKE: &str = r#"
import base64, json, sys
from pyhpke import AEADId, CipherSuite, KDFId, KEMId
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

def b64d(s): return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
def b64e(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def lp(b): return len(b).to_bytes(4, "big") + b
def aad(m):
    fields = [str(m["v"]), m["suite"], m["id"], m["from"], m["to"], m["kind"],
              m["correlation_id"], str(m["sent_at"]), m["sender_key"], m["recipient_key"]]
    return b"".join(lp(f.encode()) for f in fields)
def signed(m, enc, ct):
    return b"switchboard sealed message signature v1" + lp(aad(m)) + lp(enc) + lp(ct)

suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
INFO = b"switchboard sealed message v1"
req = json.load(sys.stdin)
if req["op"] == "open":
    m = req["message"]
    enc, ct = b64d(m["enc"]), b64d(m["ciphertext"])
    Ed25519PublicKey.from_public_bytes(b64d(req["sender_signing_key"])).verify(b64d(m["signature"]), signed(m, enc, ct))
    sk = suite.kem.deserialize_private_key(b64d(req["recipient_private_key"]))
    print(suite.create_recipient_context(enc, sk, info=INFO).open(ct, aad=aad(m)).decode())
else:
    m = req["metadata"]
    pk = suite.kem.deserialize_public_key(b64d(req["recipient_public_key"]))
    enc, ctx = suite.create_sender_context(pk, info=INFO)
    ct = ctx.seal(req["plaintext"].encode(), aad=aad(m))
    sig = Ed25519PrivateKey.from_private_bytes(b64d(req["sender_private_key"])).sign(signed(m, enc, ct))
    m.update({"enc": b64e(enc), "ciphertext": b64e(ct), "signature": b64e(sig)})
    print(json.dumps(m))
"#;

async fn python(input: &Value) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PYHPKE)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (the CI venv has pyhpke and cryptography)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim_end()
        .to_owned()
}

#[tokio::test]
async fn sealed_messages_interoperate_with_pyhpke() {
    let alice = AgentKeys::generate("alice").expect("keys");
    let bob = AgentKeys::generate("bob").expect("keys");
    let bob_file = bob.to_file();
    let alice_file = alice.to_file();

    // Sealed here, opened (and its signature checked) by pyhpke and
    // pyca/cryptography.
    let meta = Metadata {
        id: "m-py-1".into(),
        from: "alice".into(),
        to: "bob".into(),
        kind: Kind::Request,
        correlation_id: "corr-py".into(),
        sent_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let sealed = SealedMessage::seal(&alice, bob.public(), meta, "héllo from Rust".as_bytes())
        .expect("seal");
    let opened = python(&json!({
        "op": "open",
        "message": sealed,
        "recipient_private_key": bob_file.encryption_key,
        "sender_signing_key": alice_file.public_signing_key,
    }))
    .await;
    assert_eq!(opened, "héllo from Rust");

    // Sealed and signed by pyhpke and pyca/cryptography, opened here.
    let made = python(&json!({
        "op": "seal",
        "plaintext": "hello from Python",
        "recipient_public_key": bob_file.public_encryption_key,
        "sender_private_key": alice_file.signing_key,
        "metadata": {
            "v": switchboard_seal::VERSION, "suite": switchboard_seal::SUITE, "id": "m-py-2",
            "from": "alice", "to": "bob", "kind": "reply", "correlation_id": "corr-py",
            "sent_at": chrono::Utc::now().timestamp_millis(),
            "sender_key": alice.fingerprint(), "recipient_key": bob.fingerprint(),
        },
    }))
    .await;
    let theirs: SealedMessage = serde_json::from_str(&made).expect("an envelope");
    let plain = theirs.open(&bob, alice.public()).expect("opens here");
    assert_eq!(plain, b"hello from Python");
    // And a change to what Python signed is caught here.
    let mut altered = theirs;
    altered.id = "m-py-3".into();
    assert_eq!(
        altered
            .open(&bob, alice.public())
            .expect_err("altered")
            .code(),
        "SIGNATURE_INVALID"
    );
}
