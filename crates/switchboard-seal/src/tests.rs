use super::*;

fn meta(from: &str, to: &str) -> Metadata {
    Metadata {
        id: "m-1".into(),
        from: from.into(),
        to: to.into(),
        kind: Kind::Request,
        correlation_id: "c-1".into(),
        sent_at_ms: 1_700_000_000_000,
    }
}

fn pair() -> (AgentKeys, AgentKeys) {
    (
        AgentKeys::generate("alice").expect("keys"),
        AgentKeys::generate("bob").expect("keys"),
    )
}

#[test]
fn a_sealed_message_opens_for_its_recipient_only() {
    let (alice, bob) = pair();
    let sealed = SealedMessage::seal(&alice, bob.public(), meta("alice", "bob"), b"secret plans")
        .expect("seal");
    assert!(!sealed.ciphertext.contains("secret"));
    let opened = sealed.open(&bob, alice.public()).expect("open");
    assert_eq!(opened, b"secret plans");

    // Survives JSON both ways.
    let json = serde_json::to_string(&sealed).expect("json");
    let back: SealedMessage = serde_json::from_str(&json).expect("parse");
    assert_eq!(
        back.open(&bob, alice.public()).expect("open"),
        b"secret plans"
    );

    // Alice cannot open what she sent to Bob; Carol, with Bob's name but
    // other keys, cannot either.
    let e = sealed
        .open(&alice, alice.public())
        .expect_err("not for alice");
    assert_eq!(e.code(), "WRONG_RECIPIENT");
    let carol = AgentKeys::generate("bob").expect("keys");
    let e = sealed.open(&carol, alice.public()).expect_err("other key");
    assert_eq!(e.code(), "WRONG_RECIPIENT");
}

#[test]
fn any_change_breaks_the_signature() {
    let (alice, bob) = pair();
    let sealed =
        SealedMessage::seal(&alice, bob.public(), meta("alice", "bob"), b"pay 10").expect("seal");
    let mut ct = unb64("ciphertext", &sealed.ciphertext).expect("b64");
    ct[0] ^= 1;
    type Change = Box<dyn Fn(&mut SealedMessage)>;
    let changes: Vec<(&str, Change)> = vec![
        ("ciphertext", Box::new(move |m| m.ciphertext = b64(&ct))),
        ("id", Box::new(|m| m.id = "m-2".into())),
        ("kind", Box::new(|m| m.kind = Kind::Reply)),
        (
            "correlation_id",
            Box::new(|m| m.correlation_id = "c-9".into()),
        ),
        ("sent_at", Box::new(|m| m.sent_at += 1)),
        ("from", Box::new(|m| m.from = "mallory".into())),
    ];
    for (what, change) in changes {
        let mut m = sealed.clone();
        change(&mut m);
        let e = m.open(&bob, alice.public()).expect_err(what);
        assert_eq!(e.code(), "SIGNATURE_INVALID", "{what}: {e}");
    }
    // Signed by someone else's key than the one it names.
    let mallory = AgentKeys::generate("alice").expect("keys");
    let e = sealed
        .open(&bob, mallory.public())
        .expect_err("other sender key");
    assert_eq!(e.code(), "KEY_UNKNOWN");
    // Claimed by Mallory with her own key and signature over a copied
    // ciphertext: the metadata names her key, so Bob checks her key, and
    // the ciphertext (bound to Alice's metadata) does not decrypt.
    let forged =
        SealedMessage::seal(&mallory, bob.public(), meta("alice", "bob"), b"x").expect("seal");
    let mut m = sealed.clone();
    m.sender_key = forged.sender_key.clone();
    m.signature = forged.signature.clone();
    let e = m.open(&bob, mallory.public()).expect_err("spliced");
    assert_eq!(e.code(), "SIGNATURE_INVALID");
}

#[test]
fn malformed_and_unknown_envelopes_are_named() {
    let (alice, bob) = pair();
    let sealed =
        SealedMessage::seal(&alice, bob.public(), meta("alice", "bob"), b"x").expect("seal");
    let mut m = sealed.clone();
    m.v = 2;
    assert_eq!(m.check_form().expect_err("v").code(), "SEALED_UNSUPPORTED");
    let mut m = sealed.clone();
    m.suite = "P-256".into();
    assert_eq!(
        m.check_form().expect_err("suite").code(),
        "SEALED_UNSUPPORTED"
    );
    let mut m = sealed.clone();
    m.enc = "!!".into();
    match m.check_form().expect_err("enc") {
        SealError::Malformed { field, .. } => assert_eq!(field, "enc"),
        e => panic!("{e:?}"),
    }
    let mut m = sealed.clone();
    m.signature = b64(&[0u8; 10]);
    match m.check_form().expect_err("sig") {
        SealError::Malformed { field, .. } => assert_eq!(field, "signature"),
        e => panic!("{e:?}"),
    }
    let mut m = sealed;
    m.to = String::new();
    match m.check_form().expect_err("to") {
        SealError::Malformed { field, .. } => assert_eq!(field, "to"),
        e => panic!("{e:?}"),
    }
    // Sealing with keys of another agent than `from` is refused.
    let e =
        SealedMessage::seal(&alice, bob.public(), meta("bob", "alice"), b"x").expect_err("from");
    assert_eq!(e.code(), "SEALED_MALFORMED");
}

#[test]
fn the_replay_guard_refuses_repeats_and_stale_messages() {
    let mut g = ReplayGuard::new(1_000);
    g.check("a", "1", 10_000, 10_000).expect("first");
    assert_eq!(
        g.check("a", "1", 10_000, 10_001).expect_err("again").code(),
        "MESSAGE_REPLAYED"
    );
    g.check("b", "1", 10_000, 10_001)
        .expect("other sender, same id");
    assert_eq!(
        g.check("a", "2", 8_000, 10_000).expect_err("old").code(),
        "MESSAGE_EXPIRED"
    );
    assert_eq!(
        g.check("a", "3", 12_000, 10_000)
            .expect_err("future")
            .code(),
        "MESSAGE_EXPIRED"
    );
    // Past the window the id is forgotten, and a copy is refused by its time.
    g.check("a", "4", 20_000, 20_000).expect("later");
    assert_eq!(g.len(), 1);
    assert_eq!(
        g.check("a", "1", 10_000, 20_000)
            .expect_err("old copy")
            .code(),
        "MESSAGE_EXPIRED"
    );
}

#[test]
fn a_full_replay_guard_forgets_the_oldest_and_refuses_what_it_forgot() {
    let mut g = ReplayGuard::with_capacity(60_000, 2);
    g.check("a", "1", 1_000, 1_000).expect("1");
    g.check("a", "2", 2_000, 2_000).expect("2");
    g.check("a", "3", 3_000, 3_000).expect("3");
    assert_eq!(g.len(), 2);
    // Id 1 is forgotten, but its copy is refused by time, as is anything
    // sent as early.
    assert_eq!(
        g.check("a", "1", 1_000, 3_500)
            .expect_err("forgotten")
            .code(),
        "MESSAGE_EXPIRED"
    );
    assert_eq!(
        g.check("b", "9", 900, 3_500).expect_err("as old").code(),
        "MESSAGE_EXPIRED"
    );
    assert_eq!(
        g.check("a", "2", 2_000, 3_500).expect_err("kept").code(),
        "MESSAGE_REPLAYED"
    );
    g.check("b", "4", 2_500, 3_500)
        .expect("newer than the forgotten");
}

#[test]
fn key_files_round_trip_and_catch_a_mismatch() {
    let keys = AgentKeys::generate("agent-7").expect("keys");
    let file = keys.to_file();
    assert!(
        !format!("{file:?}").contains(&file.signing_key),
        "no private key in Debug"
    );
    assert!(!format!("{keys:?}").contains(&file.signing_key));
    let json = serde_json::to_string(&file).expect("json");
    let back = AgentKeys::from_file(&serde_json::from_str(&json).expect("parse")).expect("load");
    assert_eq!(back.fingerprint(), keys.fingerprint());
    assert_eq!(back.public(), keys.public());
    let other = AgentKeys::generate("agent-7").expect("keys").to_file();
    let mut mixed = file.clone();
    mixed.encryption_key = other.encryption_key;
    assert!(AgentKeys::from_file(&mixed).is_err());
    let p = PublicKeys::from_b64(&file.public_signing_key, &file.public_encryption_key)
        .expect("public");
    assert_eq!(p.fingerprint(), file.fingerprint);
    assert!(p.fingerprint().starts_with("SHA256:"));
    assert!(PublicKeys::from_b64("abc", &file.public_encryption_key).is_err());
}

#[test]
fn proof_of_possession_needs_both_private_keys() {
    let keys = AgentKeys::generate("a").expect("keys");
    let nonce = [7u8; 32];
    let ch = seal_challenge(keys.public(), "a", "ch-1", &nonce).expect("seal");
    assert_eq!(open_challenge(&keys, "ch-1", &ch).expect("open"), nonce);
    // Another agent's keys cannot read it, nor can the same keys under
    // another challenge id.
    let other = AgentKeys::generate("a").expect("keys");
    assert!(open_challenge(&other, "ch-1", &ch).is_err());
    assert!(open_challenge(&keys, "ch-2", &ch).is_err());
    let statement = registration_statement("a", "ch-1", &nonce, keys.public());
    let sig = b64(&keys.sign(&statement));
    keys.public()
        .check_signature("proof", &statement, &sig)
        .expect("verifies");
    let e = other
        .public()
        .check_signature("proof", &statement, &sig)
        .expect_err("other key");
    assert_eq!(e.code(), "PROOF_INVALID");
    let changed = registration_statement("a", "ch-1", &[8u8; 32], keys.public());
    assert!(
        keys.public()
            .check_signature("proof", &changed, &sig)
            .is_err()
    );
}
