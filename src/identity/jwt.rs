//! Verified JWT callers (`Authorization: Bearer <token>`), with `jwt-compact`.
//!
//! The algorithm is pinned by the key, never taken from the token: an HMAC
//! secret (`JWT_SECRET`) verifies HS256 only; each key of a JWKS (`JWT_JWKS`)
//! verifies only its own algorithm (RS256, ES256 or EdDSA) and is chosen by
//! `kid`. `alg: none`, a token whose `alg` differs from its key's, an unknown
//! `kid`, and headers that carry or point at keys (`jwk`, `jku`, `x5u`, `x5c`)
//! are all rejected. `exp` is required unless configured otherwise, `nbf` is
//! honoured, issuer and audience are checked when configured. The current time
//! is passed in: jwt-compact's clock feature panics in workerd.
//!
//! HS256 is verified here. An asymmetric signature (RS256, ES256, EdDSA) is not:
//! [`JwtConfig::verify`] pins the algorithm to the key and hands the executor a
//! [`SignatureCheck`] (the key as a public JWK, the signed bytes, the signature)
//! for the runtime's WebCrypto, native in workerd; [`JwtConfig::complete`] takes
//! its verdict and checks the claims. The wasm carries no RSA, P-256 or Ed25519
//! arithmetic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, UntrustedToken, ValidationError};
use serde_json::{Map, Value};

use crate::json::Obj;
use crate::json::Q;

/// When a token is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtMode {
    Off,
    /// A valid token names the caller; without one, the user-id header or the IP does. A token
    /// that is present but invalid is refused.
    Optional,
    /// No valid token → 401.
    Required,
}

enum Key {
    Hs256(Hs256Key),
    /// A public key verified by the executor: its algorithm (`RS256`, `ES256` or `EdDSA`), its `kid`,
    /// and the key as a JWK holding only its public members, ready for WebCrypto's `importKey`.
    Public {
        alg: &'static str,
        kid: String,
        jwk: String,
        signature_len: Option<usize>,
    },
}

impl Key {
    fn alg(&self) -> &'static str {
        match self {
            Key::Hs256(_) => "HS256",
            Key::Public { alg, .. } => alg,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.alg()) // never the key material
    }
}

/// An asymmetric signature for the executor to check with WebCrypto: `signature` over `data` with
/// the key `kid` (imported from `jwk`, whose algorithm is `alg`). Its verdict goes to
/// [`JwtConfig::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureCheck {
    pub alg: &'static str,
    pub kid: String,
    pub jwk: String,
    /// The signing input: the token up to its last `.`.
    pub data: String,
    pub signature: Vec<u8>,
}

/// What [`JwtConfig::verify`] can say without the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    Verified(Verified),
    Refused(JwtError),
    /// Everything but the signature checks out: the executor must check it.
    Signature(SignatureCheck),
}

#[derive(Debug)]
pub struct JwtConfig {
    pub mode: JwtMode,
    secret: Option<Key>,
    keys: Vec<(String, Key)>,
    /// Tokens whose signature this isolate has verified, with their validity window: a client
    /// sends the same token many times, and an RS256 check costs far more than a lookup.
    verified: RefCell<HashMap<String, Known>>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: i64,
    pub subject_claim: String,
    pub tier_claim: String,
    pub require_exp: bool,
}

impl PartialEq for JwtConfig {
    fn eq(&self, other: &Self) -> bool {
        // Compared in tests only by what is observable; key material is not compared.
        self.mode == other.mode && self.issuer == other.issuer && self.audience == other.audience
    }
}

/// A verified token's caller and the times its claims allow (epoch seconds, leeway applied).
#[derive(Clone, Debug)]
struct Known {
    verified: Verified,
    valid_from: i64,
    valid_until: i64,
}

/// How many verified tokens an isolate remembers; beyond it the cache starts over.
pub(crate) const VERIFIED_TOKENS: usize = 10_000;
/// Longer tokens are verified every time rather than remembered.
const MAX_CACHED_TOKEN: usize = 4096;

/// A caller proven by a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub subject: String,
    pub tier: Option<String>,
}

/// Why a token was refused; the text goes to the client (it reveals nothing secret).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtError {
    Missing,
    Malformed,
    AlgorithmNotAccepted,
    UnknownKey,
    EmbeddedKey,
    /// The header lists `crit` extensions, none of which the gateway implements.
    CriticalExtension,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExpiry,
    WrongIssuer,
    WrongAudience,
    MissingSubject,
}

impl JwtError {
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Missing => "a bearer token is required",
            JwtError::Malformed => "the token is malformed",
            JwtError::AlgorithmNotAccepted => "the token's algorithm is not accepted for its key",
            JwtError::UnknownKey => "the token's key id (kid) is unknown",
            JwtError::EmbeddedKey => {
                "tokens that carry or point at their own key (jwk, jku, x5u, x5c) are not accepted"
            }
            JwtError::CriticalExtension => "the token lists critical header extensions (crit) that are not supported",
            JwtError::BadSignature => "the token's signature is invalid",
            JwtError::Expired => "the token has expired",
            JwtError::NotYetValid => "the token is not valid yet (nbf)",
            JwtError::MissingExpiry => "the token has no expiry (exp)",
            JwtError::WrongIssuer => "the token's issuer is not accepted",
            JwtError::WrongAudience => "the token's audience is not accepted",
            JwtError::MissingSubject => "the token has no subject",
        }
    }
}

/// Members of a token's header the gateway refuses: ones that carry or point at a key (the key is
/// the configuration's, never the token's), and `crit` (RFC 7515 §4.1.11: extensions the recipient
/// must understand; the gateway implements none, so any `crit`, even `null` or `[]`, refuses it).
fn refused_header_member(raw: &str) -> Option<JwtError> {
    let encoded = raw.split('.').next()?;
    let decoded = <base64ct::Base64UrlUnpadded as base64ct::Encoding>::decode_vec(encoded).ok()?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&decoded) else { return None };
    if ["jwk", "jku", "x5u", "x5c"].iter().any(|m| header.contains_key(*m)) {
        Some(JwtError::EmbeddedKey)
    } else if header.contains_key("crit") {
        Some(JwtError::CriticalExtension)
    } else {
        None
    }
}

/// Settings as read from the environment (see [`JwtConfig::new`]); `Default` gives the documented
/// defaults with no keys.
pub struct JwtSettings<'a> {
    pub mode: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub jwks: Option<&'a str>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: u64,
    pub subject_claim: String,
    pub tier_claim: String,
    pub require_exp: bool,
}

impl Default for JwtSettings<'_> {
    fn default() -> Self {
        JwtSettings {
            mode: None,
            secret: None,
            jwks: None,
            issuer: None,
            audience: None,
            leeway_s: 30,
            subject_claim: "sub".into(),
            tier_claim: "tier".into(),
            require_exp: true,
        }
    }
}

impl JwtConfig {
    /// Validates the settings; errors name the variable.
    pub fn new(s: JwtSettings<'_>) -> Result<JwtConfig, (&'static str, String)> {
        let secret = match s.secret {
            None => None,
            Some(secret) if secret.len() < 32 => {
                return Err(("JWT_SECRET", "must be at least 32 bytes (HS256 needs a 256-bit key)".into()))
            }
            Some(secret) => Some(Key::Hs256(Hs256Key::new(secret.as_bytes()))),
        };
        let keys = match s.jwks {
            None => Vec::new(),
            Some(doc) => parse_jwks(doc).map_err(|m| ("JWT_JWKS", m))?,
        };
        let has_keys = secret.is_some() || !keys.is_empty();
        let mode = match s.mode.map(str::to_ascii_lowercase).as_deref() {
            None if has_keys => JwtMode::Optional,
            None | Some("off") => JwtMode::Off,
            Some("optional") => JwtMode::Optional,
            Some("required") => JwtMode::Required,
            Some(other) => {
                return Err(("JWT_MODE", format!("must be \"off\", \"optional\" or \"required\", got {}", Q(&other))))
            }
        };
        if mode != JwtMode::Off && !has_keys {
            return Err(("JWT_MODE", "needs JWT_SECRET or JWT_JWKS to verify tokens".into()));
        }
        if s.leeway_s > 300 {
            return Err(("JWT_LEEWAY_SECONDS", format!("must be from 0 to 300, got {}", s.leeway_s)));
        }
        for (var, claim) in [("JWT_SUBJECT_CLAIM", &s.subject_claim), ("JWT_TIER_CLAIM", &s.tier_claim)] {
            if claim.is_empty() || claim.len() > 64 {
                return Err((var, "must be a claim name of 1 to 64 characters".into()));
            }
        }
        Ok(JwtConfig {
            mode,
            secret,
            keys,
            verified: RefCell::new(HashMap::new()),
            issuer: s.issuer,
            audience: s.audience,
            leeway_s: s.leeway_s as i64,
            subject_claim: s.subject_claim,
            tier_claim: s.tier_claim,
            require_exp: s.require_exp,
        })
    }

    /// Checks `token` at `now_s` (epoch seconds): verified or refused here (HS256, or a token this
    /// isolate has verified before, checked only against its time claims: the signature covers the
    /// exact bytes looked up), or a signature for the executor to check.
    pub fn verify(&self, token: &str, now_s: i64) -> Verification {
        if let Some(known) = self.verified.borrow().get(token) {
            return if now_s >= known.valid_until {
                Verification::Refused(JwtError::Expired)
            } else if now_s < known.valid_from {
                Verification::Refused(JwtError::NotYetValid)
            } else {
                Verification::Verified(known.verified.clone())
            };
        }
        match self.verify_token(token, now_s) {
            Ok(Verification::Verified(v)) => Verification::Verified(v),
            Ok(other) => other,
            Err(e) => Verification::Refused(e),
        }
    }

    /// The executor's verdict on a [`SignatureCheck`] of `token`: the caller, once the claims check out.
    pub fn complete(&self, token: &str, now_s: i64, signature_valid: bool) -> Result<Verified, JwtError> {
        if !signature_valid {
            return Err(JwtError::BadSignature);
        }
        let parsed = UntrustedToken::new(token).map_err(|_| JwtError::Malformed)?;
        let claims = parsed.deserialize_claims_unchecked::<Map<String, Value>>().map_err(|_| JwtError::Malformed)?;
        self.accept(token, &claims, now_s)
    }

    /// Checks the claims and remembers the token.
    fn accept(&self, token: &str, claims: &Claims<Map<String, Value>>, now_s: i64) -> Result<Verified, JwtError> {
        let (verified, valid_from, valid_until) = self.check_claims(claims, now_s)?;
        if token.len() <= MAX_CACHED_TOKEN {
            let mut cache = self.verified.borrow_mut();
            if cache.len() >= VERIFIED_TOKENS {
                cache.retain(|_, k| k.valid_until > now_s);
                if cache.len() >= VERIFIED_TOKENS {
                    cache.clear();
                }
            }
            cache.insert(token.to_string(), Known { verified: verified.clone(), valid_from, valid_until });
        }
        Ok(verified)
    }

    fn verify_token(&self, raw: &str, now_s: i64) -> Result<Verification, JwtError> {
        let token = UntrustedToken::new(raw).map_err(|_| JwtError::Malformed)?;
        if let Some(e) = refused_header_member(raw) {
            return Err(e);
        }
        let header = token.header();
        let key = match &header.key_id {
            Some(kid) => self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key).ok_or(JwtError::UnknownKey)?,
            None => match (&self.secret, self.keys.as_slice()) {
                (Some(secret), _) => secret,
                (None, [(_, only)]) => only,
                _ => return Err(JwtError::UnknownKey),
            },
        };
        if token.algorithm() != key.alg() {
            return Err(JwtError::AlgorithmNotAccepted);
        }
        match key {
            Key::Hs256(k) => {
                let claims = Hs256
                    .validator::<Map<String, Value>>(k)
                    .validate(&token)
                    .map_err(|e| match e {
                        ValidationError::AlgorithmMismatch { .. } => JwtError::AlgorithmNotAccepted,
                        ValidationError::InvalidSignature
                        | ValidationError::InvalidSignatureLen { .. }
                        | ValidationError::MalformedSignature(_) => JwtError::BadSignature,
                        _ => JwtError::Malformed,
                    })?
                    .into_parts()
                    .1;
                self.accept(raw, &claims, now_s).map(Verification::Verified)
            }
            Key::Public { alg, kid, jwk, signature_len } => {
                let signature = token.signature_bytes();
                if signature_len.is_some_and(|n| n != signature.len()) || signature.is_empty() {
                    return Err(JwtError::BadSignature);
                }
                // The claims must at least parse before the executor spends a WebCrypto call on them.
                token.deserialize_claims_unchecked::<Map<String, Value>>().map_err(|_| JwtError::Malformed)?;
                let data = raw.rsplit_once('.').map_or("", |(data, _)| data).to_string();
                Ok(Verification::Signature(SignatureCheck {
                    alg,
                    kid: kid.clone(),
                    jwk: jwk.clone(),
                    data,
                    signature: signature.to_vec(),
                }))
            }
        }
    }

    /// The caller, and the window (from, until) in which the token's time claims accept it.
    fn check_claims(&self, claims: &Claims<Map<String, Value>>, now_s: i64) -> Result<(Verified, i64, i64), JwtError> {
        match claims.expiration {
            Some(exp) if exp.timestamp() + self.leeway_s <= now_s => return Err(JwtError::Expired),
            None if self.require_exp => return Err(JwtError::MissingExpiry),
            _ => {}
        }
        if claims.not_before.is_some_and(|nbf| nbf.timestamp() - self.leeway_s > now_s) {
            return Err(JwtError::NotYetValid);
        }
        let custom = &claims.custom;
        if let Some(issuer) = &self.issuer {
            if custom.get("iss").and_then(Value::as_str) != Some(issuer) {
                return Err(JwtError::WrongIssuer);
            }
        }
        if let Some(audience) = &self.audience {
            let ok = match custom.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        let subject = match custom.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(JwtError::MissingSubject),
        };
        let tier = custom.get(&self.tier_claim).and_then(Value::as_str).map(str::to_string);
        let valid_from = claims.not_before.map_or(i64::MIN, |nbf| nbf.timestamp() - self.leeway_s);
        let valid_until = claims.expiration.map_or(i64::MAX, |exp| exp.timestamp() + self.leeway_s);
        Ok((Verified { subject, tier }, valid_from, valid_until))
    }
}

/// The keys of a JWKS document, read from a JSON tree rather than through derived deserializers and
/// jwt-compact's `JsonWebKey` (their flattened, tagged forms cost the wasm 12 KB gzipped).
fn parse_jwks(doc: &str) -> Result<Vec<(String, Key)>, String> {
    let jwks: Value =
        serde_json::from_str(doc).map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let entries = match jwks.get("keys") {
        Some(Value::Array(keys)) if jwks.is_object() => keys,
        _ => return Err("not a JWKS document ({\"keys\": [...]}): no `keys` array".into()),
    };
    if entries.is_empty() {
        return Err("has no keys".into());
    }
    let mut out: Vec<(String, Key)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let text = |name: &str| entry.get(name).and_then(Value::as_str);
        let kid = text("kid").ok_or_else(|| format!("key #{} has no kid", i + 1))?.to_string();
        if out.iter().any(|(k, _)| *k == kid) {
            return Err(format!("kid {} appears twice", Q(&kid)));
        }
        if text("use").is_some_and(|u| u != "sig") {
            return Err(format!("key {} is not a signing key (use {})", Q(&kid), Q(text("use").unwrap_or(""))));
        }
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            let v = text(name).ok_or_else(|| format!("key {}: `{name}` is missing", Q(&kid)))?;
            <base64ct::Base64UrlUnpadded as base64ct::Encoding>::decode_vec(v)
                .map_err(|_| format!("key {}: `{name}` is not base64url", Q(&kid)))
        };
        let private = ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|m| entry.get(*m).is_some());
        let (alg, jwk, signature_len) = match (text("kty"), text("crv")) {
            (Some("oct"), _) => {
                return Err(format!("key {}: symmetric keys belong in JWT_SECRET, not in a public JWKS", Q(&kid)))
            }
            _ if private => {
                return Err(format!(
                    "key {} holds private parts; a JWKS for verification has public keys only",
                    Q(&kid)
                ))
            }
            (Some("RSA"), _) => {
                let n = bytes("n")?;
                let e = bytes("e")?;
                let modulus = n.strip_prefix(&[0u8][..]).unwrap_or(&n);
                if modulus.len() < 256 {
                    return Err(format!("key {}: RSA keys must have at least 2048 bits", Q(&kid)));
                }
                if modulus.len() > 1024 || e.is_empty() || e.len() > 8 {
                    return Err(format!("key {}: not a usable RSA public key", Q(&kid)));
                }
                let jwk = Obj::new().str("kty", "RSA").str("n", &b64(modulus)).str("e", &b64(&e));
                ("RS256", jwk.finish(), Some(modulus.len()))
            }
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(format!("key {}: a P-256 key has 32-byte x and y", Q(&kid)));
                }
                let jwk = Obj::new().str("kty", "EC").str("crv", "P-256").str("x", &b64(&x)).str("y", &b64(&y));
                ("ES256", jwk.finish(), Some(64))
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err(format!("key {}: an Ed25519 key is 32 bytes", Q(&kid)));
                }
                ("EdDSA", Obj::new().str("kty", "OKP").str("crv", "Ed25519").str("x", &b64(&x)).finish(), Some(64))
            }
            _ => return Err(format!("key {}: only RSA, EC P-256 and OKP Ed25519 keys are supported", Q(&kid))),
        };
        if let Some(a) = text("alg") {
            if a != alg {
                return Err(format!("key {}: alg {} does not fit its key type ({alg})", Q(&kid), Q(a)));
            }
        }
        out.push((kid.clone(), Key::Public { alg, kid, jwk, signature_len }));
    }
    Ok(out)
}

fn b64(bytes: &[u8]) -> String {
    <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(bytes)
}
