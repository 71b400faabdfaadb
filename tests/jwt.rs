//! JWT verification with real keys (tests/keys, made with Node's crypto): every
//! accepted algorithm, and every way a token must be refused.

mod common;

use std::fs;

use edge_ratelimit::{JwtConfig, JwtError, JwtMode, JwtSettings, Verification, Verified};
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmExt, Claims, Header};
use serde_json::{json, Map, Value};

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes";
const NOW: i64 = 1_800_000_000;

fn config(mode: Option<&str>, issuer: Option<&str>, audience: Option<&str>) -> JwtConfig {
    let jwks = fs::read_to_string("tests/keys/jwks.json").unwrap();
    JwtConfig::new(JwtSettings {
        mode,
        secret: Some(SECRET),
        jwks: Some(&jwks),
        issuer: issuer.map(str::to_string),
        audience: audience.map(str::to_string),
        leeway_s: 30,
        subject_claim: "sub".into(),
        tier_claim: "tier".into(),
        require_exp: true,
    })
    .unwrap()
}

fn claims(extra: Value) -> Claims<Map<String, Value>> {
    let mut map = json!({ "sub": "alice", "tier": "premium", "exp": NOW + 600 }).as_object().unwrap().clone();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    Claims::new(map)
}

fn private_jwk(name: &str) -> String {
    fs::read_to_string(format!("tests/keys/{name}.private.jwk.json")).unwrap()
}

fn hs256(extra: Value) -> String {
    Hs256.token(&Header::empty(), &claims(extra), &Hs256Key::new(SECRET)).unwrap()
}

fn rs256(kid: &str, extra: Value) -> String {
    let text = private_jwk("rsa-1");
    let jwk: JsonWebKey<'_> = serde_json::from_str(&text).unwrap();
    let key = RsaPrivateKey::try_from(&jwk).unwrap();
    Rsa::rs256().token(&Header::empty().with_key_id(kid), &claims(extra), &key).unwrap()
}

fn es256(extra: Value) -> String {
    let text = private_jwk("ec-1");
    let jwk: JsonWebKey<'_> = serde_json::from_str(&text).unwrap();
    let key = <Es256 as Algorithm>::SigningKey::try_from(&jwk).unwrap();
    Es256.token(&Header::empty().with_key_id("ec-1"), &claims(extra), &key).unwrap()
}

fn eddsa(extra: Value) -> String {
    let text = private_jwk("ed-1");
    let jwk: JsonWebKey<'_> = serde_json::from_str(&text).unwrap();
    let key = <Ed25519 as Algorithm>::SigningKey::try_from(&jwk).unwrap();
    Ed25519.token(&Header::empty().with_key_id("ed-1"), &claims(extra), &key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with a hand-written header, HMAC-signed with `key`.
fn forged(header: Value, key: &[u8]) -> String {
    let body = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(json!({"sub": "mallory", "exp": NOW + 600}).to_string().as_bytes())
    );
    format!("{body}.{}", b64(&hmac_sign::sign(key, body.as_bytes())))
}

mod hmac_sign {
    //! HMAC-SHA256 for forging test tokens (RFC 2104 over sha2).
    use sha2::{Digest, Sha256};

    pub fn sign(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
        let inner = Sha256::digest(&inner);
        let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner.iter().copied()).collect();
        Sha256::digest(&outer).to_vec()
    }
}

/// The gateway's verdict on `token`, with the executor's part (WebCrypto) played by jwt-compact.
fn verify(c: &JwtConfig, token: &str, now: i64) -> Result<Verified, JwtError> {
    match c.verify(token, now) {
        Verification::Verified(v) => Ok(v),
        Verification::Refused(e) => Err(e),
        Verification::Signature(check) => c.complete(token, now, common::webcrypto(&check).expect("a usable key")),
    }
}

fn alice(tier: &str) -> Result<Verified, JwtError> {
    Ok(Verified { subject: "alice".into(), tier: Some(tier.into()) })
}

#[test]
fn every_accepted_algorithm_verifies() {
    let c = config(None, None, None);
    assert_eq!(c.mode, JwtMode::Optional, "keys configured and no mode: optional");
    assert_eq!(verify(&c, &hs256(json!({})), NOW), alice("premium"));
    assert_eq!(verify(&c, &rs256("rsa-1", json!({})), NOW), alice("premium"));
    assert_eq!(verify(&c, &es256(json!({})), NOW), alice("premium"));
    assert_eq!(verify(&c, &eddsa(json!({})), NOW), alice("premium"));
}

#[test]
fn hand_signed_hs256_matches_the_library() {
    // The forging helper is only trustworthy if a well-formed token it makes verifies.
    let c = config(None, None, None);
    let token = forged(json!({"alg": "HS256", "typ": "JWT"}), SECRET.as_bytes());
    assert_eq!(verify(&c, &token, NOW), Ok(Verified { subject: "mallory".into(), tier: None }));
}

#[test]
fn time_claims() {
    let c = config(None, None, None);
    assert_eq!(verify(&c, &hs256(json!({"exp": NOW - 31})), NOW), Err(JwtError::Expired));
    assert!(verify(&c, &hs256(json!({"exp": NOW - 29})), NOW).is_ok(), "within the leeway");
    assert_eq!(verify(&c, &hs256(json!({"exp": null})), NOW), Err(JwtError::MissingExpiry));
    assert_eq!(verify(&c, &hs256(json!({"nbf": NOW + 31})), NOW), Err(JwtError::NotYetValid));
    assert!(verify(&c, &hs256(json!({"nbf": NOW + 29})), NOW).is_ok());
}

#[test]
fn issuer_audience_and_subject() {
    let c = config(None, Some("https://auth.example"), Some("api"));
    assert_eq!(verify(&c, &hs256(json!({})), NOW), Err(JwtError::WrongIssuer));
    assert_eq!(verify(&c, &hs256(json!({"iss": "https://auth.example"})), NOW), Err(JwtError::WrongAudience));
    let ok = hs256(json!({"iss": "https://auth.example", "aud": ["web", "api"]}));
    assert!(verify(&c, &ok, NOW).is_ok());
    let c = config(None, None, None);
    assert_eq!(verify(&c, &hs256(json!({"sub": null})), NOW), Err(JwtError::MissingSubject));
    assert_eq!(verify(&c, &hs256(json!({"sub": "  "})), NOW), Err(JwtError::MissingSubject));
    assert_eq!(
        verify(&c, &hs256(json!({"sub": 42, "tier": null})), NOW),
        Ok(Verified { subject: "42".into(), tier: None })
    );
}

#[test]
fn the_algorithm_is_pinned_by_the_key() {
    let c = config(None, None, None);
    // alg: none, unsigned.
    let none =
        format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(json!({"sub":"m","exp":NOW+600}).to_string().as_bytes()));
    assert_eq!(verify(&c, &none, NOW), Err(JwtError::AlgorithmNotAccepted));
    // HS256 "signed" with the RSA public key, naming the RSA key: the classic confusion attack.
    let jwks: Value = serde_json::from_str(&fs::read_to_string("tests/keys/jwks.json").unwrap()).unwrap();
    let rsa_public = jwks["keys"][0].to_string();
    let confused = forged(json!({"alg": "HS256", "kid": "rsa-1"}), rsa_public.as_bytes());
    assert_eq!(verify(&c, &confused, NOW), Err(JwtError::AlgorithmNotAccepted));
    // The same without a kid goes to the HMAC secret, where the signature is wrong.
    let confused = forged(json!({"alg": "HS256"}), rsa_public.as_bytes());
    assert_eq!(verify(&c, &confused, NOW), Err(JwtError::BadSignature));
    // RS256 claimed for the EC key.
    let wrong = rs256("ec-1", json!({}));
    assert_eq!(verify(&c, &wrong, NOW), Err(JwtError::AlgorithmNotAccepted));
}

#[test]
fn unknown_kids_and_embedded_keys_are_refused() {
    let c = config(None, None, None);
    assert_eq!(verify(&c, &rs256("rsa-2", json!({})), NOW), Err(JwtError::UnknownKey));
    for header in [
        json!({"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}}),
        json!({"alg": "HS256", "jku": "https://evil.example/jwks"}),
        json!({"alg": "HS256", "x5u": "https://evil.example/cert"}),
        json!({"alg": "HS256", "x5c": ["MIIB"]}),
    ] {
        assert_eq!(verify(&c, &forged(header.clone(), SECRET.as_bytes()), NOW), Err(JwtError::EmbeddedKey), "{header}");
    }
}

/// Issue 10, item 8: RFC 7515 §4.1.11 — a token whose header lists `crit` extensions the recipient
/// does not implement must be rejected; the gateway implements none.
#[test]
fn critical_header_extensions_are_refused() {
    let c = config(None, None, None);
    for crit in
        [json!(["exp"]), json!(["b64"]), json!(["http://example.com/ext"]), json!([]), json!("exp"), json!(null)]
    {
        let token = forged(json!({"alg": "HS256", "crit": crit, "exp": NOW + 600, "b64": true}), SECRET.as_bytes());
        assert_eq!(verify(&c, &token, NOW), Err(JwtError::CriticalExtension), "crit {crit}");
    }
    let token = forged(json!({"alg": "HS256", "b64": true}), SECRET.as_bytes());
    assert!(verify(&c, &token, NOW).is_ok(), "an unknown header member that is not critical is ignored");
}

#[test]
fn tampering_and_garbage_are_refused() {
    let c = config(None, None, None);
    let token = hs256(json!({}));
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = b64(json!({"sub": "mallory", "exp": NOW + 600}).to_string().as_bytes());
    assert_eq!(verify(&c, &parts.join("."), NOW), Err(JwtError::BadSignature));
    for garbage in ["", "a", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30.%%%"] {
        assert!(verify(&c, garbage, NOW).is_err(), "{garbage:?}");
    }
}

#[test]
fn configuration_is_validated() {
    let base = |mode: Option<&'static str>, secret: Option<&'static str>, jwks: Option<&'static str>| {
        JwtConfig::new(JwtSettings { mode, secret, jwks, ..JwtSettings::default() })
    };
    assert_eq!(base(None, None, None).unwrap().mode, JwtMode::Off);
    assert_eq!(base(Some("required"), None, None).unwrap_err().0, "JWT_MODE");
    assert_eq!(base(Some("sometimes"), Some(SECRET), None).unwrap_err().0, "JWT_MODE");
    assert_eq!(base(None, Some("short"), None).unwrap_err().0, "JWT_SECRET");
    for (jwks, expected) in [
        ("{}", "not a JWKS document"),
        (r#"{"keys":[]}"#, "has no keys"),
        (r#"{"keys":[{"kty":"oct","k":"AAAA","kid":"s"}]}"#, "symmetric keys belong in JWT_SECRET"),
        (r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#, "has no kid"),
        (r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"tiny"}]}"#, "at least 2048 bits"),
    ] {
        let e = base(None, None, Some(jwks)).unwrap_err();
        assert_eq!(e.0, "JWT_JWKS");
        assert!(e.1.contains(expected), "{jwks}: {}", e.1);
    }
}

#[test]
fn a_remembered_token_still_expires_and_matures() {
    let c = config(None, None, None);
    let token = rs256("rsa-1", json!({"nbf": NOW + 100, "exp": NOW + 600}));
    assert_eq!(verify(&c, &token, NOW), Err(JwtError::NotYetValid), "not remembered while refused");
    assert_eq!(verify(&c, &token, NOW + 100), alice("premium"));
    // Remembered now: the same answers as a full check, at every time.
    assert_eq!(verify(&c, &token, NOW + 69), Err(JwtError::NotYetValid));
    assert_eq!(verify(&c, &token, NOW + 70), alice("premium"), "nbf - 30 s leeway");
    assert_eq!(verify(&c, &token, NOW + 629), alice("premium"));
    assert_eq!(verify(&c, &token, NOW + 630), Err(JwtError::Expired), "exp + 30 s leeway");
    // One changed byte is another token, checked in full.
    let mut tampered = token.into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(verify(&c, std::str::from_utf8(&tampered).unwrap(), NOW + 200), Err(JwtError::BadSignature));
}

/// Asymmetric signatures go to the executor's WebCrypto with the key pinned here: the check names the
/// token's own key and algorithm, carries only public key members, and a refusal is never remembered.
#[test]
fn asymmetric_signatures_are_handed_to_the_executor_and_only_a_yes_is_remembered() {
    let c = config(None, None, None);
    let token = es256(json!({}));
    let Verification::Signature(check) = c.verify(&token, NOW) else { panic!("ES256 is the executor's to check") };
    assert_eq!((check.alg, check.kid.as_str()), ("ES256", "ec-1"));
    assert_eq!(check.data, token.rsplit_once('.').unwrap().0, "the signing input is header.payload");
    let jwk: Value = serde_json::from_str(&check.jwk).unwrap();
    assert_eq!(jwk.as_object().unwrap().keys().collect::<Vec<_>>(), ["crv", "kty", "x", "y"], "public members only");
    assert_eq!(c.complete(&token, NOW, false), Err(JwtError::BadSignature));
    assert!(matches!(c.verify(&token, NOW), Verification::Signature(_)), "a refused signature is asked again");
    assert_eq!(c.complete(&token, NOW, true), alice("premium"));
    assert_eq!(
        c.verify(&token, NOW),
        Verification::Verified(Verified { subject: "alice".into(), tier: Some("premium".into()) })
    );
    // The claims are checked after the signature, by the gateway.
    let expired = rs256("rsa-1", json!({"exp": NOW - 100}));
    assert!(matches!(c.verify(&expired, NOW), Verification::Signature(_)));
    assert_eq!(c.complete(&expired, NOW, true), Err(JwtError::Expired));
    // A signature of the wrong length never reaches WebCrypto.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[2] = "AAAA";
    assert_eq!(c.verify(&parts.join("."), NOW), Verification::Refused(JwtError::BadSignature));
}

#[test]
fn a_jwks_with_private_parts_is_refused() {
    let private = format!("{{\"keys\":[{}]}}", private_jwk("ec-1"));
    let e = JwtConfig::new(JwtSettings { jwks: Some(&private), ..JwtSettings::default() }).unwrap_err();
    assert_eq!(e.0, "JWT_JWKS");
    assert!(e.1.contains("public keys only"), "{}", e.1);
}
