"""Bearer JWT and API-key auth: forged, expired and malformed tokens, scopes, models, rate limits, JWKS rotation."""

import asyncio
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from facade.app import create_app
from facade.limits.policy import Spec
from facade.limits.stores import LocalStore
from facade.auth.tokens import JwtSettings, TokenVerifier, issue_local_token
from facade.settings import Settings
from tests.fakes import FakeEmbeddingsBackend, FakeTextBackend, chunk
from tests.unit.test_embeddings import embeddings_service
from tests.unit.text_service_fixture import MODEL, running_text_service

SECRET = "s3cret-for-tests-only-0123456789abcdef"
ISS, AUD = "https://issuer.test", "hubmesh"
API_KEY = "static-key-123"


def _jwk(public_key, kid: str) -> dict:
    data = json.loads(jwt.algorithms.get_default_algorithms()[_alg_of(public_key)].to_jwk(public_key))
    return {**data, "kid": kid}


def _alg_of(public_key) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ES256"
    return "EdDSA"


KEYS = {
    "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-1": ec.generate_private_key(ec.SECP256R1()),
    "ed-1": ed25519.Ed25519PrivateKey.generate(),
}


@pytest.fixture
def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(k.public_key(), kid) for kid, k in KEYS.items()]}))
    return path


def claims(**extra):
    now = int(time.time())
    return {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 600,
            "scope": "models chat completions embeddings images", **extra}


def signed(kid="rsa-1", **extra):
    key = KEYS[kid]
    return jwt.encode(claims(**extra), key, algorithm=_alg_of(key.public_key()), headers={"kid": kid})


def hs(secret=SECRET, **extra):
    return jwt.encode(claims(**extra), secret, algorithm="HS256")


def verifier(jwks_file) -> TokenVerifier:
    return TokenVerifier([API_KEY], JwtSettings(secret=SECRET, jwks=str(jwks_file), issuer=ISS, audience=AUD, leeway_s=5))


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("kid", list(KEYS))
def test_each_asymmetric_algorithm_verifies(jwks_file, kid):
    principal = verifier(jwks_file).verify(signed(kid))
    assert principal.subject == "jwt:alice" and principal.may_use("chat")


def test_hs256_and_static_keys_verify(jwks_file):
    v = verifier(jwks_file)
    assert v.verify(hs()).subject == "jwt:alice"
    key_principal = v.verify(API_KEY)
    assert key_principal.may_use("images") and API_KEY not in key_principal.subject


def _forged_tokens():
    rsa_public_pem = KEYS["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    header_none = b64({"alg": "none", "typ": "JWT"})  # an unsigned token
    good = signed()
    return {
        "malformed": "not.a.jwt",
        "garbage": "abc",
        "bad signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "alg none": f"{header_none}.{b64(claims())}.",
        # an HS256 token whose "secret" is the RSA public key: algorithm confusion
        "alg confusion": _confused(rsa_public_pem),
        "wrong secret": hs(secret="another-secret-another-secret-12345"),
        "expired": signed(exp=now - 60),
        "not yet valid": signed(nbf=now + 600),
        "no exp": jwt.encode({k: v for k, v in claims().items() if k != "exp"}, KEYS["rsa-1"], algorithm="RS256",
                             headers={"kid": "rsa-1"}),
        "wrong issuer": signed(iss="https://evil.test"),
        "wrong audience": signed(aud="someone-else"),
        "unknown kid": jwt.encode(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                  algorithm="RS256", headers={"kid": "rsa-unknown"}),
        "no kid": jwt.encode(claims(), KEYS["rsa-1"], algorithm="RS256"),
    }


def _confused(public_pem: bytes) -> str:
    import hashlib
    import hmac

    header, payload = b64({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}), b64(claims())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.mark.parametrize("case", [
    "malformed", "garbage", "bad signature", "alg none", "alg confusion", "wrong secret", "expired", "not yet valid",
    "no exp", "wrong issuer", "wrong audience", "unknown kid", "no kid",
])
async def test_forged_expired_and_malformed_tokens_are_401(aiohttp_client, jwks_file, case):
    token = _forged_tokens()[case]
    async with running_text_service(FakeTextBackend()) as target:
        app = create_app(Settings(api_keys=(API_KEY,), jwt_secret=SECRET, jwks=str(jwks_file), jwt_issuer=ISS,
                                  jwt_audience=AUD, text_target=target, embeddings_target=target, images_target=target))
        client = await aiohttp_client(app)
        response = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401, case
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        text = await response.text()
        assert token not in text and (token[:20] not in text)
        assert json.loads(text)["error"]["type"] == "authentication_error"


def test_local_token_has_every_scope():
    v = TokenVerifier([], JwtSettings(secret=SECRET))
    principal = v.verify(issue_local_token(SECRET))
    assert all(principal.may_use(f) for f in ("models", "chat", "completions", "embeddings", "images"))


@pytest.fixture
async def app_client(aiohttp_client, jwks_file):
    backend = FakeTextBackend([chunk(["hi"], ["stop"], n_in=10, n_out=[5])])
    async with running_text_service(backend) as text, embeddings_service(FakeEmbeddingsBackend()) as emb:
        settings = Settings(api_keys=(API_KEY,), jwt_secret=SECRET, jwks=str(jwks_file), jwt_issuer=ISS,
                            jwt_audience=AUD, text_target=text, embeddings_target=emb, images_target=emb)
        yield await aiohttp_client(create_app(settings))


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


async def test_missing_scope_and_disallowed_model_are_403(app_client):
    chat_only = signed(scope="chat")
    response = await app_client.post("/v1/embeddings", json={"model": "x", "input": "y"}, headers=bearer(chat_only))
    assert response.status == 403 and (await response.json())["error"]["code"] == "insufficient_scope"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert (await app_client.post("/v1/chat/completions", json=body, headers=bearer(chat_only))).status == 200
    other_model = signed(models=["some/other-model"])
    response = await app_client.post("/v1/chat/completions", json=body, headers=bearer(other_model))
    assert response.status == 403 and (await response.json())["error"]["param"] == "model"
    listing = await (await app_client.get("/v1/models", headers=bearer(other_model))).json()
    assert listing["data"] == []
    assert (await app_client.get(f"/v1/models/{MODEL}", headers=bearer(other_model))).status == 403


async def test_requests_per_minute_limit_under_concurrency(app_client):
    token = signed(rpm=5)
    responses = await asyncio.gather(*(app_client.get("/v1/models", headers=bearer(token)) for _ in range(12)))
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) == 5 and statuses.count(429) == 7
    limited = next(r for r in responses if r.status == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await limited.json())["error"]["code"] == "rate_limit_exceeded"
    # another subject is not affected
    assert (await app_client.get("/v1/models", headers=bearer(signed(sub="bob", rpm=5)))).status == 200


async def test_tokens_per_minute_limit_counts_usage(app_client):
    token = signed(tpm=30)  # each chat call uses 10 + 5 tokens
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert (await app_client.post("/v1/chat/completions", json=body, headers=bearer(token))).status == 200
    assert (await app_client.post("/v1/chat/completions", json=body, headers=bearer(token))).status == 200
    response = await app_client.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert response.status == 429 and "Retry-After" in response.headers
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")


async def test_request_log_admits_again_as_the_window_slides():
    now = [0.0]
    store = LocalStore(clock=lambda: now[0])
    log = [Spec("a", "requests", 60, 60.0, "all models")]
    for i in range(60):
        now[0] = i * 0.5
        assert await store.hit(log, str(i)) == 0
    assert await store.hit(log, "x") == pytest.approx(30.5)  # the first request leaves the window at 60 s
    now[0] = 60.0
    assert await store.hit(log, "y") == 0


def test_jwks_rotation_accepts_a_new_kid_after_refresh(jwks_file):
    v = verifier(jwks_file)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
    with pytest.raises(Exception, match="unknown key"):
        v.verify(token)
    keys = json.loads(jwks_file.read_text())["keys"] + [_jwk(new_key.public_key(), "rsa-2")]
    jwks_file.write_text(json.dumps({"keys": keys}))
    v.keyset.refresh()  # what the periodic refresher does
    assert v.verify(token).subject == "jwt:alice"


async def test_unknown_kid_triggers_one_reload(jwks_file):
    v = verifier(jwks_file)
    v.keyset.loaded_at -= 60  # the last reload was a while ago
    new_key = ec.generate_private_key(ec.SECP256R1())
    keys = json.loads(jwks_file.read_text())["keys"] + [_jwk(new_key.public_key(), "ec-2")]
    jwks_file.write_text(json.dumps({"keys": keys}))
    token = jwt.encode(claims(), new_key, algorithm="ES256", headers={"kid": "ec-2"})
    assert (await v.authenticate(token)).subject == "jwt:alice"
