//! Bearer keys for the public routes: `Authorization: Bearer <key>`, compared in constant time.
//! Keys are held only as SHA-256 digests, and neither a key nor a presented token is logged.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::api::{ApiError, ErrorCode};

/// The accepted keys of one route; empty = the route is open.
#[derive(Clone, Default)]
pub struct KeySet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.digests.len())
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Equal in time independent of where the digests differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl KeySet {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a String>) -> Self {
        Self {
            digests: keys.into_iter().map(|k| digest(k.as_bytes())).collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Ok when the route is open or the request carries one of its keys; else a 401.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.is_open() {
            return Ok(());
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(token) = token else {
            return Err(unauthorized(
                "this route needs an API key: Authorization: Bearer <key>",
            ));
        };
        let d = digest(token.as_bytes());
        // Every key is compared, so the time does not say which one (if any) matched.
        let hits = self
            .digests
            .iter()
            .fold(0usize, |n, k| n + usize::from(same(k, &d)));
        if hits == 0 {
            return Err(unauthorized("the API key is not valid for this route"));
        }
        Ok(())
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorKind;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    #[test]
    fn keys_are_checked() {
        let keys = vec![
            "k-0123456789abcdef".to_string(),
            "k-second-key-00000".to_string(),
        ];
        let set = KeySet::new(&keys);
        assert!(set.check(&with("Bearer k-0123456789abcdef")).is_ok());
        assert!(set.check(&with("bearer  k-second-key-00000 ")).is_ok());
        assert_eq!(
            set.check(&with("Bearer k-0123456789abcdeF"))
                .unwrap_err()
                .kind,
            ErrorKind::Unauthorized
        );
        assert_eq!(
            set.check(&with("Basic k-0123456789abcdef"))
                .unwrap_err()
                .kind,
            ErrorKind::Unauthorized
        );
        assert_eq!(
            set.check(&HeaderMap::new()).unwrap_err().kind,
            ErrorKind::Unauthorized
        );
        assert!(KeySet::default().check(&HeaderMap::new()).is_ok());
        assert!(!format!("{set:?}").contains("0123"));
    }
}
