//! Topics and subscription patterns, and the index that matches one
//! against the other.
//!
//! A topic is dot-separated tokens (`task.code_generation.completed`). A
//! pattern may use `*` for exactly one token and `>` (last) for one or more
//! tokens, as in NATS: `task.*.completed`, `workflow.>`.

use std::collections::HashMap;

/// The longest topic or pattern accepted.
pub const MAX_LEN: usize = 255;
/// The most tokens in a topic or pattern.
pub const MAX_TOKENS: usize = 32;

/// Whether `b` may stand in a token: a letter, a digit, `_`, `-` or `:`.
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')
}

fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not have empty tokens (two dots in a row, or a dot at an end)".into());
    }
    if !t.bytes().all(token_byte)
        && let Some(c) = t.chars().find(|&c| !(c.is_ascii() && token_byte(c as u8)))
    {
        return Err(format!(
            "tokens may hold only letters, digits, '_', '-' and ':' (found {c:?})"
        ));
    }
    Ok(())
}

/// The tokens of a topic or pattern, once its length and token count are
/// checked; nothing is collected (every publish checks its topic).
fn split(s: &str) -> Result<std::str::Split<'_, char>, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_LEN {
        return Err(format!("must be at most {MAX_LEN} characters"));
    }
    if s.bytes().filter(|&b| b == b'.').count() >= MAX_TOKENS {
        return Err(format!("must have at most {MAX_TOKENS} tokens"));
    }
    Ok(s.split('.'))
}

/// Checks a topic to publish on: no wildcards.
pub fn check_topic(topic: &str) -> Result<(), String> {
    // Every publish checks its topic: one pass over the bytes answers for
    // any good one; a bad one is looked at again to say why.
    if plain_topic(topic.as_bytes()) {
        return Ok(());
    }
    explain_topic(topic)
}

/// Whether `t` is a good topic: dot-separated tokens of allowed bytes,
/// none empty, within the limits. (`*` and `>` are not allowed bytes.)
fn plain_topic(t: &[u8]) -> bool {
    if t.is_empty() || t.len() > MAX_LEN {
        return false;
    }
    let (mut dots, mut after_dot) = (0, true);
    for &b in t {
        if b == b'.' {
            if after_dot {
                return false;
            }
            dots += 1;
            after_dot = true;
        } else if token_byte(b) {
            after_dot = false;
        } else {
            return false;
        }
    }
    !after_dot && dots < MAX_TOKENS
}

/// Why `topic` is refused (`Ok` if it is not).
fn explain_topic(topic: &str) -> Result<(), String> {
    for t in split(topic)? {
        if t == "*" || t == ">" {
            return Err("a topic to publish on cannot hold wildcards".into());
        }
        check_token(t)?;
    }
    Ok(())
}

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Exact(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens; only last.
    Rest,
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses a pattern; the error says why it is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Vec<&str> = split(text)?.collect();
        let last = raw.len() - 1;
        let mut tokens = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            tokens.push(match t {
                "*" => Token::One,
                ">" if i == last => Token::Rest,
                ">" => return Err("'>' may only be the last token".into()),
                t => {
                    check_token(t)?;
                    Token::Exact(t.into())
                }
            });
        }
        Ok(Self {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for tok in &self.tokens {
            match tok {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Exact(e) => {
                    if parts.next() != Some(e) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic `other` matches is also matched by `self`: a
    /// grant of `self` allows a subscription to `other`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut theirs = other.tokens.iter();
        for mine in &self.tokens {
            let Some(t) = theirs.next() else {
                return false;
            };
            match (mine, t) {
                (Token::Rest, _) => return true,
                (Token::One, Token::Exact(_) | Token::One) => {}
                (Token::Exact(a), Token::Exact(b)) if a == b => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }

    /// Whether some topic matches both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (mut a, mut b) = (self.tokens.iter(), other.tokens.iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(Token::Rest), Some(_)) | (Some(_), Some(Token::Rest)) => return true,
                (Some(Token::Exact(x)), Some(Token::Exact(y))) if x != y => return false,
                (Some(_), Some(_)) => {}
                _ => return false,
            }
        }
    }
}

/// Maps patterns to keys and finds every key whose pattern matches a topic
/// by walking one path of a token trie per topic token, so the cost
/// depends on the topic's length and the matches, not on how many
/// patterns there are.
#[derive(Debug)]
pub struct PatternIndex<K> {
    root: Node<K>,
    len: usize,
}

#[derive(Debug)]
struct Node<K> {
    exact: HashMap<Box<str>, Node<K>>,
    one: Option<Box<Node<K>>>,
    /// Keys of patterns that end here with `>`.
    rest: Vec<K>,
    /// Keys of patterns that end here.
    here: Vec<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            one: None,
            rest: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.one.is_none() && self.rest.is_empty() && self.here.is_empty()
    }
}

impl<K> Default for PatternIndex<K> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Copy + PartialEq> PatternIndex<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (pattern, key) entries there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key` under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, key: K) {
        let mut node = &mut self.root;
        for tok in &pattern.tokens {
            match tok {
                Token::Exact(t) => node = node.exact.entry(t.clone()).or_default(),
                Token::One => node = node.one.get_or_insert_with(Default::default),
                Token::Rest => {
                    node.rest.push(key);
                    self.len += 1;
                    return;
                }
            }
        }
        node.here.push(key);
        self.len += 1;
    }

    /// Removes `key` from under `pattern`; whether it was there.
    pub fn remove(&mut self, pattern: &Pattern, key: K) -> bool {
        let removed = remove(&mut self.root, &pattern.tokens, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Appends to `out` the key of every pattern matching `topic` (a key
    /// under two matching patterns appears twice).
    pub fn matches(&self, topic: &str, out: &mut Vec<K>) {
        let tokens: Vec<&str> = topic.split('.').collect();
        walk(&self.root, &tokens, out);
    }
}

fn remove<K: PartialEq>(node: &mut Node<K>, tokens: &[Token], key: K) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return take(&mut node.here, key);
    };
    match first {
        Token::Rest => take(&mut node.rest, key),
        Token::Exact(t) => {
            let Some(child) = node.exact.get_mut(t) else {
                return false;
            };
            let removed = remove(child, rest, key);
            if child.is_empty() {
                node.exact.remove(t);
            }
            removed
        }
        Token::One => {
            let Some(child) = node.one.as_deref_mut() else {
                return false;
            };
            let removed = remove(child, rest, key);
            if child.is_empty() {
                node.one = None;
            }
            removed
        }
    }
}

fn take<K: PartialEq>(keys: &mut Vec<K>, key: K) -> bool {
    match keys.iter().position(|k| *k == key) {
        Some(i) => {
            keys.swap_remove(i);
            true
        }
        None => false,
    }
}

fn walk<K: Copy>(node: &Node<K>, tokens: &[&str], out: &mut Vec<K>) {
    let Some((first, rest)) = tokens.split_first() else {
        out.extend_from_slice(&node.here);
        return;
    };
    out.extend_from_slice(&node.rest);
    if let Some(child) = node.exact.get(*first) {
        walk(child, rest, out);
    }
    if let Some(child) = &node.one {
        walk(child, rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASES: &[(&str, &str, bool)] = &[
        ("task.created", "task.created", true),
        ("task.created", "task.updated", false),
        ("task.*", "task.created", true),
        ("task.*", "task.a.b", false),
        ("task.*", "task", false),
        ("task.*.completed", "task.codegen.completed", true),
        ("task.*.completed", "task.codegen.failed", false),
        ("task.>", "task.created", true),
        ("task.>", "task.a.b.c", true),
        ("task.>", "task", false),
        (">", "anything.at.all", true),
        (">", "one", true),
        ("*", "one", true),
        ("*", "one.two", false),
        ("*.*.completed", "task.x.completed", true),
        ("workflow.>", "workflow.stage_completed", true),
        ("system.alerts", "system.alert", false),
        ("a.*.>", "a.b.c", true),
        ("a.*.>", "a.b", false),
    ];

    #[test]
    fn covers_and_overlaps() {
        // (grant, subscription, covers, overlaps)
        const PAIRS: &[(&str, &str, bool, bool)] = &[
            (">", "a.b", true, true),
            (">", ">", true, true),
            ("a.>", "a.b.c", true, true),
            ("a.>", "a.>", true, true),
            ("a.>", "a", false, false),
            ("a.>", ">", false, true),
            ("a.*", "a.b", true, true),
            ("a.*", "a.*", true, true),
            ("a.*", "a.>", false, true),
            ("a.b", "a.*", false, true),
            ("a.b", "a.c", false, false),
            ("a.*.c", "a.b.c", true, true),
            ("a.*.c", "a.b.d", false, false),
            ("inbox.*", "inbox.me", true, true),
            ("inbox.me", "*.me", false, true),
            ("inbox.me", "task.>", false, false),
            ("*", "a.b", false, false),
        ];
        for (grant, sub, covers, overlaps) in PAIRS {
            let (g, s) = (
                Pattern::parse(grant).expect("grant"),
                Pattern::parse(sub).expect("sub"),
            );
            assert_eq!(g.covers(&s), *covers, "{grant} covers {sub}");
            assert_eq!(g.overlaps(&s), *overlaps, "{grant} overlaps {sub}");
            assert_eq!(s.overlaps(&g), *overlaps, "{sub} overlaps {grant}");
        }
    }

    #[test]
    fn pattern_and_index_agree_on_every_case() {
        for (i, (pattern, topic, want)) in CASES.iter().enumerate() {
            let p = Pattern::parse(pattern).expect("pattern");
            assert_eq!(p.matches(topic), *want, "{pattern} vs {topic}");
            let mut idx = PatternIndex::new();
            idx.insert(&p, i);
            let mut out = Vec::new();
            idx.matches(topic, &mut out);
            assert_eq!(!out.is_empty(), *want, "index: {pattern} vs {topic}");
        }
    }

    #[test]
    fn index_holds_many_and_removes() {
        let mut idx = PatternIndex::new();
        let pats: Vec<Pattern> = [
            "task.>",
            "task.*.completed",
            "task.codegen.completed",
            "workflow.>",
        ]
        .iter()
        .map(|p| Pattern::parse(p).expect("pattern"))
        .collect();
        for (i, p) in pats.iter().enumerate() {
            idx.insert(p, i);
        }
        let mut out = Vec::new();
        idx.matches("task.codegen.completed", &mut out);
        out.sort_unstable();
        assert_eq!(out, [0, 1, 2]);
        assert!(idx.remove(&pats[1], 1));
        assert!(!idx.remove(&pats[1], 1));
        out.clear();
        idx.matches("task.codegen.completed", &mut out);
        out.sort_unstable();
        assert_eq!(out, [0, 2]);
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn refuses_bad_topics_and_patterns() {
        for bad in ["", "a..b", ".a", "a.", "a b", "a.>.b", "a/b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["a.*", "a.>", "", "x y"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic("task.code-gen_1.completed").is_ok());
    }

    #[test]
    fn a_topic_is_refused_for_the_same_reasons_as_a_pattern() {
        let long = "a".repeat(MAX_LEN + 1);
        let many = vec!["a"; MAX_TOKENS + 1].join(".");
        let most = vec!["a"; MAX_TOKENS].join(".");
        for bad in [
            "", "a..b", ".a", "a.", "a b", "a/b", "tâche.x", &long, &many,
        ] {
            let topic = check_topic(bad).expect_err(bad);
            let pattern = Pattern::parse(bad).expect_err(bad);
            assert_eq!(topic, pattern, "{bad:?}");
        }
        assert_eq!(
            check_topic("tâche.x").expect_err("non-ASCII"),
            "tokens may hold only letters, digits, '_', '-' and ':' (found 'â')"
        );
        assert!(check_topic(&most).is_ok());
        assert!(check_topic(&"a".repeat(MAX_LEN)).is_ok());
    }

    /// The one pass answers as the full check does, for every string of
    /// up to five characters drawn from good and bad ones, and at the
    /// limits.
    #[test]
    fn the_quick_check_agrees_with_the_full_one() {
        let alphabet = ["a", "Z", "0", "_", "-", ":", ".", "*", ">", " ", "/", "é"];
        let mut topics = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            topics.extend(last.iter().cloned());
        }
        for n in [MAX_LEN - 1, MAX_LEN, MAX_LEN + 1] {
            topics.push("a".repeat(n));
        }
        for n in [MAX_TOKENS - 1, MAX_TOKENS, MAX_TOKENS + 1] {
            topics.push(vec!["a"; n].join("."));
        }
        let mut good = 0;
        for t in &topics {
            let quick = plain_topic(t.as_bytes());
            assert_eq!(quick, explain_topic(t).is_ok(), "{t:?}");
            good += usize::from(quick);
        }
        assert!(good > 1_000 && good < topics.len() / 2, "{good}");
    }
}
