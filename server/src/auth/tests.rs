use std::sync::atomic::{AtomicUsize, Ordering};

use std::convert::Infallible;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pointlock_core::UserId;
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::body::AppBody;
use crate::error::{Denial, TokenRejection};

/// base64url without padding, for the tokens no library makes (`alg: none`).
fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

const SECRET: &[u8] = b"a test secret that is long enough for HS256";
const RSA_PUBLIC: &str = include_str!("../../../tests/auth/rsa-public.pem");
const RSA_PRIVATE: &str = include_str!("../../../tests/auth/rsa-private.pem");
const EC_PUBLIC: &str = include_str!("../../../tests/auth/ec-public.pem");
const EC_PRIVATE: &str = include_str!("../../../tests/auth/ec-private.pem");
const EC_P384_PUBLIC: &str = include_str!("../../../tests/auth/ec-p384-public.pem");
const ED25519_PUBLIC: &str = include_str!("../../../tests/auth/ed25519-public.pem");

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims for user `sub`, valid for an hour.
fn claims(sub: Value) -> Value {
    json!({ "sub": sub, "exp": now() + 3_600 })
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, claims, &EncodingKey::from_secret(SECRET))
}

fn sign(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn verifier() -> JwtVerifier {
    JwtVerifier::hs256(SECRET).unwrap()
}

fn user(id: u64) -> Option<UserId> {
    Some(UserId::new(id).unwrap())
}

#[test]
fn the_bearer_token_is_one_header_of_the_bearer_scheme() {
    let headers = |values: &[&str]| {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, value.parse().unwrap());
        }
        map
    };
    assert_eq!(bearer_token(&headers(&["Bearer a.b.c"])), Ok("a.b.c"));
    assert_eq!(bearer_token(&headers(&["bearer a.b.c"])), Ok("a.b.c"));
    assert_eq!(bearer_token(&headers(&["BEARER  a.b.c"])), Ok("a.b.c"));
    assert_eq!(bearer_token(&headers(&[])), Err(TokenRejection::Missing));
    for bad in [
        &["Basic dXNlcjpwdw=="][..],
        &["Bearer"],
        &["Bearer "],
        &["Bearer a b"],
        &["Bearera.b.c"],
        &["Token a.b.c"],
        &["Bearer a.b.c", "Bearer a.b.c"],
    ] {
        assert_eq!(
            bearer_token(&headers(bad)),
            Err(TokenRejection::NotBearer),
            "{bad:?}"
        );
    }
}

#[test]
fn each_path_needs_what_the_table_says() {
    let seven = UserId::new(7).unwrap();
    for protect in [false, true] {
        for path in [
            "/point/7",
            "/point/7/histories",
            "/point/7/charge",
            "/point/7/use",
        ] {
            assert_eq!(access(path, protect), Access::User(seven), "{path}");
        }
        // Whatever the lock layer would lock for user 7 needs user 7.
        assert_eq!(access("/point/7/unknown", protect), Access::User(seven));
        for path in ["/point/abc", "/point/0/charge", "/point/", "/point/-1/use"] {
            assert_eq!(access(path, protect), Access::Authenticated, "{path}");
        }
        for path in [
            "/health",
            "/ready",
            "/openapi.json",
            "/nope",
            "/",
            "/points/7",
        ] {
            assert_eq!(access(path, protect), Access::Open, "{path}");
        }
    }
    for path in ["/metrics", "/stats"] {
        assert_eq!(access(path, false), Access::Open, "{path}");
        assert_eq!(access(path, true), Access::Admin, "{path}");
    }
    assert_eq!(
        access("/metrics/", true),
        Access::Open,
        "a 404, not /metrics"
    );
}

#[test]
fn a_principal_acts_on_its_own_user_and_an_admin_on_all() {
    let seven = UserId::new(7).unwrap();
    let eight = UserId::new(8).unwrap();
    let owner = Principal {
        user: Some(seven),
        admin: false,
    };
    let nobody = Principal {
        user: None,
        admin: false,
    };
    let admin = Principal {
        user: None,
        admin: true,
    };
    assert_eq!(owner.may(Access::User(seven)), Ok(()));
    assert_eq!(owner.may(Access::User(eight)), Err(Denial::AnotherUser));
    assert_eq!(owner.may(Access::Admin), Err(Denial::NotAdmin));
    assert_eq!(nobody.may(Access::User(seven)), Err(Denial::AnotherUser));
    for access in [Access::Open, Access::Authenticated] {
        assert_eq!(nobody.may(access), Ok(()));
    }
    for access in [Access::User(seven), Access::User(eight), Access::Admin] {
        assert_eq!(admin.may(access), Ok(()));
    }
}

#[test]
fn sub_names_the_user_as_a_string_or_a_number_and_scope_the_admin() {
    let v = verifier();
    let verify = |claims: Value| v.verify(&hs256(&claims));
    let principal = |user, admin| Ok(Principal { user, admin });
    assert_eq!(verify(claims(json!("7"))), principal(user(7), false));
    assert_eq!(verify(claims(json!(7))), principal(user(7), false));
    assert_eq!(verify(claims(json!("007"))), principal(user(7), false));
    // A sub that names no valid user acts on none (a service's name, 0, too large).
    for sub in [
        json!("backoffice"),
        json!("0"),
        json!(0),
        json!("9223372036854775808"),
    ] {
        assert_eq!(verify(claims(sub.clone())), principal(None, false), "{sub}");
    }
    let mut no_sub = claims(json!(1));
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_eq!(verify(no_sub), principal(None, false));
    // A sub of another type is a malformed token.
    for sub in [json!(true), json!(-1), json!(1.5)] {
        assert_eq!(
            verify(claims(sub.clone())),
            Err(TokenRejection::Claims),
            "{sub}"
        );
    }
    // (An object or an array is refused as malformed by jsonwebtoken's own
    // reading of sub.)
    for sub in [json!({ "id": 1 }), json!(["1"])] {
        assert_eq!(
            verify(claims(sub.clone())),
            Err(TokenRejection::Malformed),
            "{sub}"
        );
    }
    let scoped = |scope: Value| {
        let mut c = claims(json!("9"));
        c["scope"] = scope;
        verify(c)
    };
    assert_eq!(
        scoped(json!("points:admin")),
        principal(user(9), true),
        "the scope alone"
    );
    assert_eq!(
        scoped(json!("openid points:admin profile")),
        principal(user(9), true)
    );
    for not_admin in ["points:admin2", "points:read", "", "POINTS:ADMIN"] {
        assert_eq!(
            scoped(json!(not_admin)),
            principal(user(9), false),
            "{not_admin}"
        );
    }
    assert_eq!(
        scoped(json!(["points:admin"])),
        Err(TokenRejection::Claims),
        "scope is a string"
    );
}

#[test]
fn exp_is_required_and_exp_and_nbf_have_a_small_leeway() {
    let v = verifier();
    let at = |exp: Option<u64>, nbf: Option<u64>| {
        let mut c = json!({ "sub": "1" });
        if let Some(exp) = exp {
            c["exp"] = json!(exp);
        }
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        v.verify(&hs256(&c)).map(|p| p.user)
    };
    let t = now();
    assert_eq!(at(Some(t + 60), None), Ok(user(1)));
    assert_eq!(at(None, None), Err(TokenRejection::Claims), "no exp");
    assert_eq!(at(Some(t - 120), None), Err(TokenRejection::Expired));
    assert_eq!(
        at(Some(t - 5), None),
        Ok(user(1)),
        "expired 5 s ago: within the leeway"
    );
    assert_eq!(
        at(Some(t + 3_600), Some(t + 120)),
        Err(TokenRejection::NotYetValid)
    );
    assert_eq!(
        at(Some(t + 3_600), Some(t + 5)),
        Ok(user(1)),
        "valid in 5 s: within the leeway"
    );
    assert_eq!(at(Some(t + 3_600), Some(t - 60)), Ok(user(1)));
    let mut text_exp = claims(json!("1"));
    text_exp["exp"] = json!("tomorrow");
    assert_eq!(
        v.verify(&hs256(&text_exp)),
        Err(TokenRejection::Claims),
        "exp is a number"
    );
}

#[test]
fn the_algorithm_is_the_configurations_never_the_tokens() {
    let v = verifier();
    let c = claims(json!("1"));
    // Another HMAC: same secret, still refused.
    let hs384 = sign(Algorithm::HS384, &c, &EncodingKey::from_secret(SECRET));
    assert_eq!(v.verify(&hs384), Err(TokenRejection::Algorithm));
    // alg: none, no signature: the claims of a good token, by hand.
    let good = hs256(&c);
    let payload = good.split('.').nth(1).unwrap();
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(v.verify(&none), Err(TokenRejection::Malformed));
    let none_signed = format!("{}.{payload}.{}", b64(br#"{"alg":"none","typ":"JWT"}"#), {
        good.split('.').nth(2).unwrap()
    });
    assert_eq!(v.verify(&none_signed), Err(TokenRejection::Malformed));
    // The hand-made encoder is right: the good token's header, re-encoded, verifies.
    let header = b64(br#"{"typ":"JWT","alg":"HS256"}"#);
    assert_eq!(good.split('.').next(), Some(header.as_str()));
    assert_eq!(v.verify(&good).map(|p| p.user), Ok(user(1)));
}

#[test]
fn hs256_confusion_with_the_public_key_is_refused_by_an_rs256_server() {
    let rs256 = JwtVerifier::from_public_key_pem(RSA_PUBLIC.as_bytes()).unwrap();
    assert_eq!(rs256.algorithm(), Algorithm::RS256);
    let c = claims(json!("1"));
    // The attack: HS256, the server's public key (which anyone has) as the secret.
    let forged = sign(
        Algorithm::HS256,
        &c,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    );
    assert_eq!(rs256.verify(&forged), Err(TokenRejection::Algorithm));
    // Negative control: the forgery is a real one. A server that let the
    // token's alg choose (HMAC keyed with the key file's bytes) accepts it.
    let naive = JwtVerifier::hs256(RSA_PUBLIC.as_bytes()).unwrap();
    assert_eq!(naive.verify(&forged).map(|p| p.user), Ok(user(1)));
    // And the genuine RS256 token passes.
    let genuine = sign(
        Algorithm::RS256,
        &c,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    );
    assert_eq!(rs256.verify(&genuine).map(|p| p.user), Ok(user(1)));
    // The same for ES256.
    let es256 = JwtVerifier::from_public_key_pem(EC_PUBLIC.as_bytes()).unwrap();
    assert_eq!(es256.algorithm(), Algorithm::ES256);
    let forged = sign(
        Algorithm::HS256,
        &c,
        &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
    );
    assert_eq!(es256.verify(&forged), Err(TokenRejection::Algorithm));
    let genuine = sign(
        Algorithm::ES256,
        &c,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    );
    assert_eq!(es256.verify(&genuine).map(|p| p.user), Ok(user(1)));
    // An RS256 token on the ES256 server and the other way round.
    let rs = sign(
        Algorithm::RS256,
        &c,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    );
    assert_eq!(es256.verify(&rs), Err(TokenRejection::Algorithm));
    let es = sign(
        Algorithm::ES256,
        &c,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    );
    assert_eq!(rs256.verify(&es), Err(TokenRejection::Algorithm));
}

#[test]
fn a_wrong_signature_or_a_garbled_token_is_refused() {
    let v = verifier();
    let c = claims(json!("1"));
    let other = sign(
        Algorithm::HS256,
        &c,
        &EncodingKey::from_secret(b"another secret, just as long as the first"),
    );
    assert_eq!(v.verify(&other), Err(TokenRejection::Signature));
    // A token whose claims were edited after signing.
    let good = hs256(&c);
    let mut parts: Vec<&str> = good.split('.').collect();
    let edited = b64(json!({ "sub": "2", "exp": now() + 3_600 })
        .to_string()
        .as_bytes());
    parts[1] = &edited;
    assert_eq!(v.verify(&parts.join(".")), Err(TokenRejection::Signature));
    for garbage in ["", "abc", "a.b", "a.b.c", "a.b.c.d", "..", "€.€.€"] {
        assert_eq!(
            v.verify(garbage),
            Err(TokenRejection::Malformed),
            "{garbage:?}"
        );
    }
}

#[test]
fn aud_and_iss_are_checked_when_configured() {
    let with = |extra: Value| {
        let mut c = claims(json!("1"));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(&c)
    };
    let plain = verifier();
    assert_eq!(plain.verify(&with(json!({}))).map(|p| p.user), Ok(user(1)));
    assert_eq!(
        plain.verify(&with(json!({ "aud": "another-api" }))),
        Err(TokenRejection::Audience),
        "a token for an audience is refused by a server that names none"
    );
    assert_eq!(
        plain
            .verify(&with(json!({ "iss": "anyone" })))
            .map(|p| p.user),
        Ok(user(1)),
        "iss is not checked unless configured"
    );
    let strict = verifier()
        .audience("pointlock")
        .issuer("https://id.example");
    let both = json!({ "aud": "pointlock", "iss": "https://id.example" });
    assert_eq!(strict.verify(&with(both)).map(|p| p.user), Ok(user(1)));
    let list = json!({ "aud": ["x", "pointlock"], "iss": "https://id.example" });
    assert_eq!(strict.verify(&with(list)).map(|p| p.user), Ok(user(1)));
    for wrong in [
        json!({ "iss": "https://id.example" }),
        json!({ "aud": "pointlock" }),
        json!({ "aud": "other", "iss": "https://id.example" }),
        json!({ "aud": "pointlock", "iss": "https://evil.example" }),
    ] {
        assert_eq!(
            strict.verify(&with(wrong.clone())),
            Err(TokenRejection::Audience),
            "{wrong}"
        );
    }
}

#[test]
fn keys_are_checked_when_loaded() {
    let short = JwtVerifier::hs256(b"too short").unwrap_err();
    assert!(short.contains("at least 32"), "{short}");
    assert!(JwtVerifier::hs256(&[7; 32]).is_ok());
    for (pem, expected) in [
        (RSA_PRIVATE, "private key"),
        (EC_PRIVATE, "private key"),
        (EC_P384_PUBLIC, "cannot verify ES256"),
        (ED25519_PUBLIC, "not an RSA or EC"),
        ("not a key at all", "not an RSA or EC"),
    ] {
        let error = JwtVerifier::from_public_key_pem(pem.as_bytes()).unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
    let debug = format!("{:?}", verifier());
    assert!(debug.contains("HS256"), "{debug}");
    assert!(!debug.contains("secret"), "no key in Debug: {debug}");
}

#[tokio::test]
async fn a_refused_request_never_reaches_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = BearerAuth::new(verifier())
        .operations_admin_only(true)
        .layer(service_fn(move |_req: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(AppBody::default())) }
        }));
    let send = |path: &str, token: Option<String>| {
        let mut req = Request::builder().uri(path);
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        service.clone().oneshot(req.body(()).unwrap())
    };
    let owner = hs256(&claims(json!("7")));
    let mut admin_claims = claims(json!("ops"));
    admin_claims["scope"] = json!("points:admin");
    let admin = hs256(&admin_claims);
    let cases = [
        ("/point/7", None, StatusCode::UNAUTHORIZED),
        (
            "/point/7",
            Some("x.y.z".to_owned()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/point/8/charge",
            Some(owner.clone()),
            StatusCode::FORBIDDEN,
        ),
        ("/metrics", Some(owner.clone()), StatusCode::FORBIDDEN),
        ("/stats", None, StatusCode::UNAUTHORIZED),
        ("/point/abc", None, StatusCode::UNAUTHORIZED),
    ];
    for (path, token, status) in cases {
        let res = send(path, token).await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        let challenge = res.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"pointlock\""),
            "{challenge}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no refused request called in"
    );
    let passing = [
        ("/point/7/use", Some(owner.clone())),
        ("/point/8/charge", Some(admin.clone())),
        ("/metrics", Some(admin)),
        ("/point/abc", Some(owner)),
        ("/health", None),
        ("/nope", None),
    ];
    for (path, token) in passing {
        let res = send(path, token).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[test]
fn a_cached_verdict_is_current_by_jsonwebtokens_own_comparisons() {
    let entry = |exp, nbf| cache::Entry {
        principal: Principal {
            user: user(1),
            admin: false,
        },
        exp,
        nbf,
    };
    let leeway = LEEWAY_SECS;
    let t = 1_800_000_000;
    // exp: valid up to and including exp + leeway.
    assert!(entry(t, None).is_current(t + leeway, leeway));
    assert!(!entry(t, None).is_current(t + leeway + 1, leeway));
    assert!(entry(t, None).is_current(t - 1_000, leeway));
    // nbf: valid from nbf - leeway.
    assert!(entry(t + 3_600, Some(t)).is_current(t - leeway, leeway));
    assert!(!entry(t + 3_600, Some(t)).is_current(t - leeway - 1, leeway));
    // No wrap-around at the ends of time.
    assert!(entry(u64::MAX, Some(0)).is_current(u64::MAX, leeway));
    assert!(!entry(0, None).is_current(u64::MAX, leeway));
    // The same verdict as jsonwebtoken's validation (margins of a second or
    // more either side, so a clock tick during the test changes nothing).
    let uncached = verifier().cache_max(0);
    let now = now();
    for offset in [-3_600_i64, -32, -28, 0, 60] {
        let exp = now.checked_add_signed(offset).unwrap();
        let verdict = uncached.verify(&hs256(&json!({ "sub": "1", "exp": exp })));
        let current = entry(exp, None).is_current(jsonwebtoken::get_current_timestamp(), leeway);
        assert_eq!(verdict.is_ok(), current, "exp now{offset:+}");
        let nbf = now.checked_add_signed(-offset).unwrap();
        let verdict = uncached.verify(&hs256(
            &json!({ "sub": "1", "exp": now + 7_200, "nbf": nbf }),
        ));
        let current =
            entry(now + 7_200, Some(nbf)).is_current(jsonwebtoken::get_current_timestamp(), leeway);
        assert_eq!(verdict.is_ok(), current, "nbf now{:+}", -offset);
    }
}

#[test]
fn only_verified_tokens_are_remembered_and_only_while_current() {
    let v = verifier();
    let good = hs256(&claims(json!("3")));
    assert_eq!(v.cached(), 0);
    assert_eq!(v.verify(&good).map(|p| p.user), Ok(user(3)));
    assert_eq!(v.cached(), 1);
    // The second use is the cache's answer, the same.
    assert_eq!(v.verify(&good).map(|p| p.user), Ok(user(3)));
    let cache = v.cache.as_ref().unwrap();
    let t = now();
    assert_eq!(
        cache.get(&good, t, LEEWAY_SECS).map(|p| p.user),
        Some(user(3))
    );
    // Past its exp (an hour) and the leeway, the entry no longer answers.
    assert_eq!(
        cache.get(&good, t + 3_600 + LEEWAY_SECS + 2, LEEWAY_SECS),
        None
    );
    // A token that differs by one byte is another key.
    let mut edited = good.clone();
    edited.pop();
    // (A canonical last character: its two low bits are padding.)
    edited.push(if good.ends_with('A') { 'Q' } else { 'A' });
    assert_eq!(cache.get(&edited, t, LEEWAY_SECS), None);
    assert_eq!(v.verify(&edited), Err(TokenRejection::Signature));
    // Refusals are never remembered.
    let mut expired = claims(json!("3"));
    expired["exp"] = json!(t - 3_600);
    let mut early = claims(json!("3"));
    early["nbf"] = json!(t + 3_600);
    for refused in [hs256(&expired), hs256(&early), "x.y.z".to_owned()] {
        assert!(v.verify(&refused).is_err());
        assert!(v.verify(&refused).is_err(), "refused again, not remembered");
    }
    assert_eq!(v.cached(), 1);
    // Off: nothing remembered.
    let off = verifier().cache_max(0);
    assert_eq!(off.verify(&good).map(|p| p.user), Ok(user(3)));
    assert_eq!(off.cached(), 0);
}

#[test]
fn the_cache_is_bounded() {
    let v = verifier().cache_max(3);
    for sub in 1..=3 {
        v.verify(&hs256(&claims(json!(sub)))).unwrap();
    }
    assert_eq!(v.cached(), 3);
    let first = hs256(&claims(json!(1)));
    // Full: the next new token empties it first.
    v.verify(&hs256(&claims(json!(4)))).unwrap();
    assert_eq!(v.cached(), 1);
    // And every token still verifies, cached or not.
    assert_eq!(v.verify(&first).map(|p| p.user), Ok(user(1)));
    assert_eq!(v.cached(), 2);
}
