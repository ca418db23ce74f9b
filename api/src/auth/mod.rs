//! Authentication: JWT bearer tokens (RFC 8725 rules), and the caller's
//! identity they carry.
//!
//! Only asymmetric algorithms are allowed (EdDSA, ES256, RS256), and each
//! key verifies only its own algorithm, so a token cannot pick how it is
//! checked (no `none`, no HMAC keyed with a public key). `exp`, `iss`,
//! `aud`, `sub` and `role` are required, and `tenant` too for the tenant
//! role; `nbf` is honoured, with a small leeway on both.
//!
//! The server's own key is an Ed25519 key it creates in its data dir on
//! first start (mode 0600). More keys come from a JWKS file (an external
//! OIDC issuer's keys, configured offline); tokens name their key by `kid`,
//! so keys rotate by adding the new one before retiring the old.

pub mod layer;
pub mod limit;
pub mod policy;
pub mod revocation;

use std::fmt;
use std::path::{Path, PathBuf};

use finpool_domain::{Name, TenantId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use thiserror::Error;

/// Who may be issued tokens, and what `iss` / `aud` they carry.
pub const ISSUER: &str = "finpool";
pub const AUDIENCE: &str = "finpool-api";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// The file in the data dir holding the signing key (PKCS#8 DER).
pub const KEY_FILE: &str = "jwt-signing-key.pk8";

/// The longest a token may live, per role: a leaked token stops working
/// within a day at worst, and privileged ones sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLifetimes {
    pub tenant: std::time::Duration,
    pub operator: std::time::Duration,
    pub regulator: std::time::Duration,
}

impl Default for TokenLifetimes {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            tenant: std::time::Duration::from_secs(24 * HOUR),
            operator: std::time::Duration::from_secs(12 * HOUR),
            regulator: std::time::Duration::from_secs(12 * HOUR),
        }
    }
}

/// The file in the data dir where `finpool up` records its lifetimes, so
/// that `finpool token issue` refuses what the server would.
pub const LIFETIMES_FILE: &str = "token-lifetimes.json";

impl TokenLifetimes {
    /// Records these lifetimes in `dir` (mode 0600), replacing any before.
    pub fn save(&self, dir: &Path) -> Result<(), AuthError> {
        let text = serde_json::json!({
            "tenant_seconds": self.tenant.as_secs(),
            "operator_seconds": self.operator.as_secs(),
            "regulator_seconds": self.regulator.as_secs(),
        })
        .to_string();
        let path = dir.join(LIFETIMES_FILE);
        let temp = dir.join(format!("{LIFETIMES_FILE}.tmp"));
        let _ = std::fs::remove_file(&temp);
        write_private(&temp, text.as_bytes())
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| AuthError::Key(format!("writing {}: {e}", path.display())))
    }

    /// The lifetimes a server on `dir` recorded; the defaults if none has.
    pub fn load(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join(LIFETIMES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(AuthError::Key(format!("reading {}: {e}", path.display()))),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
        let seconds = |name: &str| {
            value[name]
                .as_u64()
                .map(std::time::Duration::from_secs)
                .ok_or_else(|| AuthError::Key(format!("{}: {name} missing", path.display())))
        };
        Ok(Self {
            tenant: seconds("tenant_seconds")?,
            operator: seconds("operator_seconds")?,
            regulator: seconds("regulator_seconds")?,
        })
    }

    pub fn max_for(&self, role: Role) -> std::time::Duration {
        match role {
            Role::Tenant => self.tenant,
            Role::Operator => self.operator,
            Role::Regulator => self.regulator,
        }
    }

    /// Refuses a `ttl` longer than the role's maximum, naming both.
    pub fn check_ttl(&self, role: Role, ttl: std::time::Duration) -> Result<(), String> {
        let max = self.max_for(role);
        if ttl.is_zero() {
            return Err("ttl: must be positive".into());
        }
        if ttl > max {
            return Err(format!(
                "ttl: {} is longer than the server's maximum of {} for {role} tokens",
                humantime::format_duration(ttl),
                humantime::format_duration(max),
            ));
        }
        Ok(())
    }
}

/// The three kinds of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A brokerage, bound to one tenant id.
    Tenant,
    /// A platform operator.
    Operator,
    /// A regulator: reads everything, changes nothing.
    Regulator,
}

impl Role {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "tenant" => Some(Self::Tenant),
            "operator" => Some(Self::Operator),
            "regulator" => Some(Self::Regulator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Operator => "operator",
            Self::Regulator => "regulator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    /// Set exactly for the tenant role.
    pub tenant: Option<TenantId>,
    /// The token's `iat` (else its `nbf`): what a subject's not-before
    /// revocation compares against.
    pub issued_at: Option<u64>,
    /// The token's `exp`: a stream opened with it ends then.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// Whether the token has expired at `now` (unix seconds), leeway
    /// included.
    pub fn expired_at(&self, now: u64) -> bool {
        self.expires_at
            .is_some_and(|exp| now > exp.saturating_add(LEEWAY_SECONDS))
    }

    /// Whether the caller may see `tenant`'s data.
    pub fn can_see(&self, tenant: &TenantId) -> bool {
        match self.role {
            Role::Tenant => self.tenant.as_ref() == Some(tenant),
            Role::Operator | Role::Regulator => true,
        }
    }
}

/// The claims finpool tokens carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("revoked: {0}")]
    Revoked(String),
    #[error("signing key: {0}")]
    Key(String),
}

/// The server's Ed25519 signing key.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the key from `dir`, creating it (mode 0600) if missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(pkcs8) => Self::from_pkcs8(pkcs8),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| AuthError::Key("could not generate a key".into()))?;
                write_private(&path, doc.as_ref())
                    .map_err(|e| AuthError::Key(format!("writing {}: {e}", path.display())))?;
                Self::from_pkcs8(doc.as_ref().to_vec())
            }
            Err(e) => Err(AuthError::Key(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Reads an existing key from `dir`.
    pub fn load(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join(KEY_FILE);
        let pkcs8 = std::fs::read(&path).map_err(|e| {
            AuthError::Key(format!(
                "reading {}: {e} (start the server once with this --data-dir to create it)",
                path.display()
            ))
        })?;
        Self::from_pkcs8(pkcs8)
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| AuthError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex(&sha2::Sha256::digest(&public)[..8]);
        Ok(Self { pkcs8, public, kid })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a token for `role` (and `tenant`), valid for `ttl` from `now`.
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        tenant: Option<&TenantId>,
        ttl: std::time::Duration,
        now_seconds: u64,
    ) -> Result<String, AuthError> {
        if (role == Role::Tenant) != tenant.is_some() {
            return Err(AuthError::Invalid(
                "a tenant token names exactly one tenant; other roles name none".into(),
            ));
        }
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: subject.into(),
            iat: Some(now_seconds),
            nbf: Some(now_seconds),
            exp: now_seconds + ttl.as_secs(),
            role: role.as_str().into(),
            tenant: tenant.map(|t| t.to_string()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| AuthError::Key(e.to_string()))
    }

    pub fn verifier(&self) -> Verifier {
        Verifier {
            keys: vec![VerifyingKey {
                kid: self.kid.clone(),
                key: DecodingKey::from_ed_der(&self.public),
                algorithm: Algorithm::EdDSA,
                issuer: ISSUER.into(),
            }],
            verified: Default::default(),
            lifetimes: TokenLifetimes::default(),
        }
    }
}

/// The algorithms any key may use.
pub const ALLOWED_ALGORITHMS: &[Algorithm] =
    &[Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

#[derive(Clone)]
struct VerifyingKey {
    kid: String,
    key: DecodingKey,
    /// The one algorithm this key verifies.
    algorithm: Algorithm,
    /// The `iss` tokens signed with it must carry.
    issuer: String,
}

/// Checks bearer tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    /// Tokens already verified, by their exact text, with their principal
    /// and expiry: a client sends the same token on every call, and a
    /// signature check costs more than the rest of a small request. A hit
    /// still checks the expiry; an entry is only made for a token that
    /// passed every check.
    verified: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Principal, u64)>>>,
    /// Tokens living longer than these are refused, whoever signed them.
    lifetimes: TokenLifetimes,
}

/// Verified tokens kept at most (the cache is emptied when full).
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Verifier {
    /// Refuses tokens that live longer than `lifetimes` allow.
    pub fn with_lifetimes(mut self, lifetimes: TokenLifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    pub fn lifetimes(&self) -> TokenLifetimes {
        self.lifetimes
    }

    /// Adds the keys of a JWKS document (RFC 7517) whose tokens carry
    /// `issuer`. Every key needs a `kid` and an allowed algorithm (its
    /// `alg`, or the one its key type implies); symmetric keys are refused.
    pub fn add_jwks(&mut self, jwks: &str, issuer: &str) -> Result<usize, AuthError> {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks)
            .map_err(|e| AuthError::Key(format!("JWKS: not a key set: {e}")))?;
        if issuer.is_empty() {
            return Err(AuthError::Key("JWKS: the issuer is empty".into()));
        }
        for (i, jwk) in set.keys.iter().enumerate() {
            use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
            let field = |what: &str| format!("JWKS keys[{i}]: {what}");
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| AuthError::Key(field("no kid")))?;
            let implied = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => {
                    return Err(AuthError::Key(field(
                        "key type not allowed (EdDSA, ES256 or RS256 keys only)",
                    )));
                }
            };
            let algorithm = match jwk.common.key_algorithm {
                None => implied,
                Some(a) => Algorithm::try_from(a)
                    .ok()
                    .filter(|a| *a == implied)
                    .ok_or_else(|| {
                        AuthError::Key(field(&format!(
                            "alg {a} does not fit the key or is not allowed"
                        )))
                    })?,
            };
            if self.keys.iter().any(|k| k.kid == kid) {
                return Err(AuthError::Key(field(&format!(
                    "kid {kid:?} is already in use"
                ))));
            }
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Key(field(&e.to_string())))?;
            self.keys.push(VerifyingKey {
                kid,
                key,
                algorithm,
                issuer: issuer.to_owned(),
            });
        }
        Ok(set.keys.len())
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        {
            let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((principal, exp)) = cache.get(token)
                && now <= exp.saturating_add(LEEWAY_SECONDS)
            {
                return Ok(principal.clone());
            }
        }
        let (principal, exp) = self.verify_uncached(token)?;
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(token.to_owned(), (principal.clone(), exp));
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))?;
        if header.alg != key.algorithm || !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not the one key {kid:?} uses",
                header.alg
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[key.issuer.as_str()]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let role = Role::parse(&claims.role)
            .ok_or_else(|| AuthError::Invalid(format!("unknown role {:?}", claims.role)))?;
        let tenant = match (role, claims.tenant.as_deref()) {
            (Role::Tenant, Some(t)) => {
                Some(Name::parse("tenant", t).map_err(|e| AuthError::Invalid(e.to_string()))?)
            }
            (Role::Tenant, None) => {
                return Err(AuthError::Invalid(
                    "a tenant token must name its tenant".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(AuthError::Invalid(format!(
                    "a {role} token must not name a tenant"
                )));
            }
            (_, None) => None,
        };
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        // Lifetime from issue (or from now, for a token that does not say
        // when it was issued) to expiry.
        let now = jsonwebtoken::get_current_timestamp();
        let issued_at = claims.iat.or(claims.nbf);
        if issued_at.is_some_and(|iat| iat > now + LEEWAY_SECONDS) {
            return Err(AuthError::Invalid("issued in the future (iat)".into()));
        }
        let lifetime = claims.exp.saturating_sub(issued_at.unwrap_or(now).min(now));
        let max = self.lifetimes.max_for(role).as_secs();
        if lifetime > max + LEEWAY_SECONDS {
            return Err(AuthError::Invalid(format!(
                "the token lives {lifetime} s; this server accepts {role} tokens of at most {max} s"
            )));
        }
        Ok((
            Principal {
                subject: claims.sub,
                role,
                tenant,
                issued_at,
                expires_at: Some(claims.exp),
            },
            claims.exp,
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a secret file readable by its owner only.
/// Writes a private file whole or not at all: into a temporary file (0600)
/// first, then renamed into place, so that a reader never sees half a
/// key (`token issue` run while `finpool up` starts).
pub(crate) fn write_private(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKey::load_or_create(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = SigningKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.kid(), b.kid());
    }

    #[test]
    fn issued_tokens_verify_with_role_and_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        let t = Name::parse("t", "alpha").unwrap();
        let token = key
            .issue(
                "alice",
                Role::Tenant,
                Some(&t),
                Duration::from_secs(60),
                now(),
            )
            .unwrap();
        let p = key.verifier().verify(&token).unwrap();
        assert_eq!(p.role, Role::Tenant);
        assert_eq!(p.tenant, Some(t));
        assert!(
            key.issue("x", Role::Tenant, None, Duration::from_secs(60), now())
                .is_err()
        );
    }

    #[test]
    fn a_principal_knows_when_its_token_expires() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        let t = Name::parse("t", "alpha").unwrap();
        let t0 = now();
        let token = key
            .issue("a", Role::Tenant, Some(&t), Duration::from_secs(60), t0)
            .unwrap();
        let p = key.verifier().verify(&token).unwrap();
        assert_eq!(p.expires_at, Some(t0 + 60));
        assert!(!p.expired_at(t0 + 60 + LEEWAY_SECONDS));
        assert!(p.expired_at(t0 + 61 + LEEWAY_SECONDS));
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        let old = key
            .issue(
                "op",
                Role::Operator,
                None,
                Duration::from_secs(10),
                now() - 3600,
            )
            .unwrap();
        assert!(key.verifier().verify(&old).is_err());
        let other_dir = tempfile::tempdir().unwrap();
        let other = SigningKey::load_or_create(other_dir.path()).unwrap();
        let foreign = other
            .issue("op", Role::Operator, None, Duration::from_secs(60), now())
            .unwrap();
        assert!(key.verifier().verify(&foreign).is_err());
    }
}
