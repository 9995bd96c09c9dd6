use super::*;

fn key(n: u8) -> MasterKey {
    MasterKey::from_bytes([n; 32])
}

#[test]
fn values_round_trip_and_are_bound_to_their_row() {
    let ring = Keyring::single(key(1));
    let c = crypt::seal(ring.current(), "db-password", 3, b"hunter2").expect("seal");
    assert_eq!(c.master_key_id, ring.current().id());
    assert!(!c.value.windows(7).any(|w| w == b"hunter2"));
    assert_eq!(
        crypt::open(&ring, "db-password", 3, &c)
            .expect("open")
            .as_slice(),
        b"hunter2"
    );
    // Moved to another secret or version: does not decrypt.
    assert!(matches!(
        crypt::open(&ring, "other", 3, &c),
        Err(VaultError::Corrupt(_))
    ));
    assert!(matches!(
        crypt::open(&ring, "db-password", 4, &c),
        Err(VaultError::Corrupt(_))
    ));
    // A changed byte anywhere: does not decrypt.
    let mut bad = c.clone();
    bad.value[0] ^= 1;
    assert!(matches!(
        crypt::open(&ring, "db-password", 3, &bad),
        Err(VaultError::Corrupt(_))
    ));
    let mut bad = c.clone();
    bad.wrapped_key[0] ^= 1;
    assert!(matches!(
        crypt::open(&ring, "db-password", 3, &bad),
        Err(VaultError::Corrupt(_))
    ));
    // Another master key: refused as locked, not garbage.
    let other = Keyring::single(key(2));
    assert!(matches!(
        crypt::open(&other, "db-password", 3, &c),
        Err(VaultError::Locked(_))
    ));
}

#[test]
fn rewrapping_changes_the_wrapping_only() {
    let old = key(1);
    let old_id = old.id().to_owned();
    let c = crypt::seal(&old, "s", 1, b"value").expect("seal");
    let both = Keyring::parse(&format!(
        "# new first\n{}\n\n{}\n",
        base64_of(&[2; 32]),
        base64_of(&[1; 32])
    ))
    .expect("ring");
    assert_eq!(both.ids().len(), 2);
    assert_eq!(both.ids()[1], old_id);
    let r = crypt::rewrap(&both, "s", 1, &c).expect("rewrap");
    assert_eq!(r.master_key_id, both.current().id());
    assert_eq!(r.value, c.value);
    assert_ne!(r.wrapped_key, c.wrapped_key);
    let new_only = Keyring::single(key(2));
    assert_eq!(
        crypt::open(&new_only, "s", 1, &r).expect("open").as_slice(),
        b"value"
    );
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn key_checks_tell_keys_apart() {
    let (blob, nonce) = crypt::key_check(&key(1)).expect("check");
    assert!(crypt::check_matches(&key(1), &blob, &nonce));
    assert!(!crypt::check_matches(&key(2), &blob, &nonce));
}

#[test]
fn key_rings_are_parsed_strictly() {
    assert!(Keyring::parse("").is_err());
    assert!(Keyring::parse("# only a comment\n").is_err());
    let e = Keyring::parse("not base64 !!").expect_err("garbage");
    assert!(e.contains("line 1"), "{e}");
    let e = Keyring::parse(&base64_of(&[1; 16])).expect_err("short");
    assert!(e.contains("16 bytes"), "{e}");
    let line = MasterKey::generate_line().expect("line");
    let ring = Keyring::parse(&format!("{line}\n{line}\n")).expect("dup");
    assert_eq!(ring.ids().len(), 1, "a repeated key counts once");
    assert_eq!(ring.current().id().len(), 16);
    assert!(
        !format!("{ring:?}").contains(&line),
        "no key material in Debug"
    );
    let inline = KeySource::Inline(format!("{},{}", base64_of(&[3; 32]), base64_of(&[4; 32])));
    assert_eq!(inline.load().expect("inline").ids().len(), 2);
    assert!(!format!("{inline:?}").contains(&base64_of(&[3; 32])));
}

#[test]
fn policies_grant_admins_listed_agents_and_roles() {
    let p = ReadPolicy {
        agents: vec!["billing".into()],
        roles: vec!["operator".into()],
    };
    let r = |id, role, agent| Reader { id, role, agent };
    assert!(p.allows(r("root", "admin", false)));
    assert!(p.allows(r("billing", "agent", true)));
    assert!(!p.allows(r("search", "agent", true)));
    assert!(p.allows(r("ci", "operator", false)));
    assert!(!p.allows(r("dash", "observer", false)));
    // An operator key named like an agent is not that agent.
    let q = ReadPolicy {
        agents: vec!["billing".into()],
        roles: vec![],
    };
    assert!(!q.allows(r("billing", "operator", false)));
    let mut errs = FieldErrors::new();
    ReadPolicy {
        agents: vec!["".into()],
        roles: vec!["wizard".into()],
    }
    .check(&mut errs);
    let errs = errs.finish().expect_err("bad");
    assert_eq!(errs.len(), 2);
}
