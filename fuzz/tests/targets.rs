//! The fuzz targets, as bolero tests.
//!
//! Under `cargo test` each replays its corpus (`tests/__fuzz__/<target>/corpus/`
//! and any `crashes/`) and then runs random inputs for one second, or
//! `BOLERO_RANDOM_TEST_TIME_MS` / `BOLERO_RANDOM_ITERATIONS` (scripts/test.sh
//! sets a bound). Under `cargo bolero test <target>` (nightly) libFuzzer
//! drives them with coverage guidance. See fuzz/README.md.
//!
//! Raw-byte targets (`path`, `amount`, `idempotency_key`) take their input as
//! it is, so their corpus files are readable. The structured targets
//! (`path_tokens`, `amount_model`, `idempotency_key_model`, `roundtrip`)
//! decode their bytes into inputs that random bytes alone would almost never
//! spell, with the answer the decoder's model expects.

use std::panic::AssertUnwindSafe;

use pointlock_fuzz::stack::Stack;
use pointlock_fuzz::{
    check_amount, check_idempotency_key, check_path, check_roundtrips, corpus, gen, oracle, Wallet,
};

/// A stack for one target. Asserted unwind-safe: a panic fails the target, and
/// the inputs bolero replays after it (to shrink the failure) only need the
/// stack to answer, which it still does (the lock layer releases a user whose
/// request unwound, and the memory store does not poison).
fn fresh_stack() -> AssertUnwindSafe<Stack> {
    AssertUnwindSafe(Stack::new())
}

#[test]
fn path() {
    let mut stack = fresh_stack();
    bolero::check!(name = "path").for_each(|input: &[u8]| check_path(&mut stack, input));
}

#[test]
fn path_tokens() {
    let mut stack = fresh_stack();
    bolero::check!(name = "path_tokens")
        .for_each(|input: &[u8]| check_path(&mut stack, &gen::path(input)));
}

#[test]
fn amount() {
    let mut stack = fresh_stack();
    let mut wallet = Wallet::default();
    bolero::check!(name = "amount").for_each(|input: &[u8]| {
        check_amount(&mut stack, &mut wallet, input, oracle::amount(input));
    });
}

#[test]
fn amount_model() {
    let mut stack = fresh_stack();
    let mut wallet = Wallet::default();
    bolero::check!(name = "amount_model").for_each(|input: &[u8]| {
        let (body, expected) = gen::amount_body(input);
        check_amount(&mut stack, &mut wallet, &body, Some(expected));
    });
}

#[test]
fn idempotency_key() {
    let mut stack = fresh_stack();
    bolero::check!(name = "idempotency_key")
        .for_each(|input: &[u8]| check_idempotency_key(&mut stack, input, None));
}

#[test]
fn idempotency_key_model() {
    let mut stack = fresh_stack();
    bolero::check!(name = "idempotency_key_model").for_each(|input: &[u8]| {
        let (key, valid) = gen::idempotency_key(input);
        check_idempotency_key(&mut stack, &key, Some(valid));
    });
}

#[test]
fn roundtrip() {
    bolero::check!(name = "roundtrip").for_each(check_roundtrips);
}

/// The committed corpora replayed by this crate itself, not by bolero: the
/// regression inputs keep running even if bolero's corpus layout changes.
#[test]
fn committed_corpus_replayed() {
    let mut stack = Stack::new();
    let mut wallet = Wallet::default();
    for (_, input) in corpus("path", 40) {
        check_path(&mut stack, &input);
    }
    for (_, input) in corpus("amount", 35) {
        check_amount(&mut stack, &mut wallet, &input, oracle::amount(&input));
    }
    for (_, input) in corpus("amount_model", 2) {
        let (body, expected) = gen::amount_body(&input);
        check_amount(&mut stack, &mut wallet, &body, Some(expected));
    }
    for (_, input) in corpus("idempotency_key", 15) {
        check_idempotency_key(&mut stack, &input, None);
    }
}
