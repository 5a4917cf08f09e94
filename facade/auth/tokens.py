"""Bearer credential verification: static API keys and JWTs (HS256 secret, or RS256/ES256/EdDSA keys
from a JWKS file or URL, chosen by `kid`). PyJWT does the cryptography.

Rejected: malformed tokens, bad signatures, `alg: none`, algorithm confusion (each key only accepts
the algorithms of its own type), expired or not-yet-valid tokens (small leeway), tokens without
`exp`, wrong issuer or audience, unknown `kid`. Error messages never contain the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jwt

from facade.auth.hub_keys import KeyRefused, KeyRegistry, is_hub_key
from facade.auth.principal import FAMILIES, Principal
from facade.limits.policy import LimitClaims, model_limits_from

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = {"RSA": ["RS256"], "EC": ["ES256"], "OKP": ["EdDSA"]}
KNOWN_SCOPES = frozenset((*FAMILIES, "*"))
ACCEPTED_ASYMMETRIC = frozenset(a for algorithms in ASYMMETRIC_ALGORITHMS.values() for a in algorithms)


class InvalidToken(Exception):
    """The credential is not acceptable; the message is safe to show (it never holds the token)."""


class _UnknownKey(InvalidToken):
    pass


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs are checked."""

    secret: str = ""  # HS256 shared secret
    jwks: str = ""  # path or http(s) URL of a JWKS
    issuer: str = ""
    audience: str = ""
    leeway_s: float = 30.0
    # scopes of a token whose own scopes name none of hubmesh's families (HUBMESH_JWT_DEFAULT_SCOPES):
    # an identity provider's token carries "openid profile ..."; empty grants such a token nothing
    default_scopes: tuple[str, ...] = ()


def _scopes(claims: Mapping) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", claims.get("scopes", "")))
    items = raw.split() if isinstance(raw, str) else list(raw or [])
    # "chat" or "hubmesh:chat" both name the chat family
    return frozenset(item.removeprefix("hubmesh:") for item in items if isinstance(item, str))


def principal_from_claims(claims: Mapping, default_scopes: Iterable[str] = ()) -> Principal:
    """Claims -> permissions: `scope` (space-separated) or `scp`/`scopes` (list), optional `models`
    allow-list, optional limits (`rpm`, `tpm`, `tokens_per_day`, `tokens_per_month`, and per model
    `model_limits`: facade/limits/policy.py), optional `weight` (1-100) and `priority` (-10..10) in a
    service's fair share at capacity. A token whose scopes name none of
    hubmesh's families (nor "*") gets `default_scopes` instead."""
    models = claims.get("models")
    scopes = _scopes(claims)
    if not scopes & KNOWN_SCOPES:
        scopes = frozenset(s.removeprefix("hubmesh:") for s in default_scopes)
    return Principal(
        subject=f"jwt:{claims.get('sub', '')}",
        scopes=scopes,
        models=frozenset(models) if isinstance(models, list) else None,
        limits=LimitClaims(**{name: _count(claims.get(name)) for name in LIMIT_CLAIMS}),
        model_limits=_model_limits(claims.get("model_limits")),
        weight=_bounded(claims.get("weight"), 1, 100),
        priority=_bounded(claims.get("priority"), -10, 10),
    )


def _bounded(value, low: int, high: int) -> int | None:
    """An integer claim within [low, high]; anything else is absent (the default)."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


LIMIT_CLAIMS = ("rpm", "tpm", "tokens_per_day", "tokens_per_month")


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _model_limits(value) -> dict[str, LimitClaims]:
    """The `model_limits` claim; a malformed one makes the token unacceptable (never: unlimited)."""
    if value is None:
        return {}
    try:
        return model_limits_from(value, "model_limits")
    except (ValueError, TypeError) as err:
        raise InvalidToken(f"The bearer token's model_limits claim is malformed: {err}.") from None


class KeySet:
    """Public keys by `kid`, reloaded from a JWKS file or URL."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._keys: dict[str, jwt.PyJWK] = {}
        self.loaded_at = 0.0  # last successful load
        self.tried_at = 0.0  # last early reload started for an unknown kid (successful or not)

    def _read(self) -> dict:
        if self.source.startswith(("http://", "https://")):
            with urllib.request.urlopen(self.source, timeout=5) as response:
                return json.load(response)
        with open(self.source) as f:
            return json.load(f)

    def refresh(self) -> None:
        """Reloads the keys; on failure the previous keys stay in use."""
        try:
            keys = {}
            for raw in self._read().get("keys", []):
                if raw.get("kid") and raw.get("kty") in ASYMMETRIC_ALGORITHMS:
                    keys[raw["kid"]] = jwt.PyJWK(raw)
            self._keys = keys
            self.loaded_at = time.monotonic()
        except (OSError, ValueError, jwt.PyJWKError) as err:
            log.warning("could not reload JWKS from %s: %s", self.source, err.__class__.__name__)

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)


class TokenVerifier:
    """Turns a Bearer credential into a Principal, or raises InvalidToken."""

    def __init__(self, api_keys: Iterable[str] = (), jwt_settings: JwtSettings | None = None) -> None:
        # each key with its principal, made once (a key's subject is a hash of it, never the key)
        self._api_keys = [
            (k.encode(), Principal(subject="key:" + hashlib.sha256(k.encode()).hexdigest()[:12], scopes=frozenset(["*"])))
            for k in api_keys if k
        ]
        self._jwt = jwt_settings or JwtSettings()
        self.keys: KeyRegistry | None = None  # the keys the hub issues, once the app has them
        self.keyset = KeySet(self._jwt.jwks) if self._jwt.jwks else None
        if self.keyset is not None:
            self.keyset.refresh()
        if not self._api_keys and not self._jwt.secret and self.keyset is None:
            raise ValueError("configure at least one of HUBMESH_API_KEY, HUBMESH_JWT_SECRET, HUBMESH_JWKS")

    async def authenticate(self, credential: str) -> Principal:
        """A hub-issued key from `keys` (facade/auth/hub_keys.py); anything else verify(), reloading
        the JWKS once (off the event loop) when a token names an unknown `kid`."""
        if self.keys is not None and is_hub_key(credential):
            try:
                return await self.keys.authenticate(credential)
            except KeyRefused as err:
                raise InvalidToken(str(err)) from None
        try:
            return self.verify(credential)
        except _UnknownKey:
            now = time.monotonic()
            if self.keyset is None or now - max(self.keyset.loaded_at, self.keyset.tried_at) < 10:
                raise  # at most one early reload every 10 s, even while the JWKS URL is down
            self.keyset.tried_at = now  # before the reload: concurrent requests do not start their own
            await asyncio.to_thread(self.keyset.refresh)  # a new key may have been published
            return self.verify(credential)

    def verify(self, credential: str) -> Principal:
        presented = credential.encode()
        matched = None
        for key, principal in self._api_keys:  # every key compared in constant time
            if hmac.compare_digest(presented, key):
                matched = principal
        if matched is not None:
            return matched
        if credential.count(".") != 2:
            raise InvalidToken("Incorrect API key provided.")
        return principal_from_claims(self._decode(credential), self._jwt.default_scopes)

    def _decode(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise InvalidToken("The bearer token is malformed.") from err
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._jwt.secret:
            key, algorithms = self._jwt.secret, ["HS256"]
        elif self.keyset is not None and algorithm in ACCEPTED_ASYMMETRIC:
            jwk = self._key_for(self.keyset, header.get("kid"))
            assert jwk.key_type is not None, "the keyset holds only keys of ASYMMETRIC_ALGORITHMS' types"
            key, algorithms = jwk.key, ASYMMETRIC_ALGORITHMS[jwk.key_type]
        else:
            raise InvalidToken("The bearer token is signed with an algorithm this server does not accept.")
        options: jwt.types.Options = {
            "require": ["exp"], "verify_aud": bool(self._jwt.audience), "verify_iss": bool(self._jwt.issuer),
        }
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._jwt.audience or None,
                issuer=self._jwt.issuer or None,
                leeway=self._jwt.leeway_s,
                options=options,
            )
        except jwt.ExpiredSignatureError as err:
            raise InvalidToken("The bearer token has expired.") from err
        except jwt.ImmatureSignatureError as err:
            raise InvalidToken("The bearer token is not valid yet.") from err
        except jwt.MissingRequiredClaimError as err:
            raise InvalidToken(f"The bearer token lacks the '{err.claim}' claim.") from err
        except jwt.InvalidAudienceError as err:
            raise InvalidToken("The bearer token is for another audience.") from err
        except jwt.InvalidIssuerError as err:
            raise InvalidToken("The bearer token is from an unexpected issuer.") from err
        except jwt.PyJWTError as err:
            raise InvalidToken("The bearer token could not be verified.") from err

    @staticmethod
    def _key_for(keyset: KeySet, kid: str | None) -> jwt.PyJWK:
        if not kid:
            raise InvalidToken("The bearer token names no key ('kid').")
        key = keyset.get(kid)
        if key is None:
            raise _UnknownKey("The bearer token is signed with an unknown key.")
        return key


def issue_local_token(secret: str, subject: str = "local-user", ttl_s: int = 30 * 24 * 3600) -> str:
    """An HS256 token with every scope, for `make run`."""
    now = int(time.time())
    claims = {"sub": subject, "scope": " ".join(FAMILIES), "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")
