//! The corpus, and paths spelled by the `path_tokens` decoder, through the
//! whole server on a loopback socket (`build_app` behind `serve`, hyper on
//! both ends): the in-process stack the other targets use must answer as the
//! real one does.

use std::panic::AssertUnwindSafe;

use pointlock_fuzz::loopback::Loopback;
use pointlock_fuzz::{
    check_amount_over_http, check_idempotency_key_over_http, check_path_over_http, corpus, gen,
};

#[test]
fn the_corpus_through_the_whole_server() {
    let server = Loopback::new();
    for (_, raw) in corpus("path", 40) {
        check_path_over_http(&server, &raw);
    }
    for (i, (_, body)) in (1..).zip(corpus("amount", 35)) {
        check_amount_over_http(&server, &body, 1_000 + i);
    }
    for (i, (_, key)) in (1..).zip(corpus("idempotency_key", 15)) {
        check_idempotency_key_over_http(&server, &key, 2_000 + i);
    }
}

#[test]
fn full_stack_path_tokens() {
    // Asserted unwind-safe: a panic fails the target; the server still answers
    // the inputs bolero replays after it.
    let server = AssertUnwindSafe(Loopback::new());
    bolero::check!(name = "full_stack_path_tokens")
        .for_each(|input: &[u8]| check_path_over_http(&server, &gen::path(input)));
}
