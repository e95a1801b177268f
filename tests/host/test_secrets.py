"""Secrets: generated like upstream, stable, 0600, rotatable, never shown."""

import base64
import stat

import yaml

from entelab import secrets as secrets_mod


def test_generated_like_upstream_and_private(tmp_path):
    path = tmp_path / "s.yaml"
    s, changed = secrets_mod.load_or_create(path)
    assert changed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(s.key_encryption)) == 32
    assert len(base64.b64decode(s.key_hash)) == 64
    jwt = base64.urlsafe_b64decode(s.jwt_secret)
    assert len(jwt) == 32 and "+" not in s.jwt_secret and "/" not in s.jwt_secret
    assert len(set(s.values())) == len(s.values()), "every secret is distinct"
    assert not set(s.values()) & secrets_mod.ARTICLE_EXAMPLES


def test_stable_across_loads_and_rotatable(tmp_path):
    path = tmp_path / "s.yaml"
    first, _ = secrets_mod.load_or_create(path)
    again, changed = secrets_mod.load_or_create(path)
    assert again == first and not changed
    rotated, changed = secrets_mod.load_or_create(path, rotate=True)
    assert changed
    assert all(a != b for a, b in zip(first.values(), rotated.values(), strict=True))
    assert secrets_mod.load_or_create(path)[0] == rotated


def test_missing_value_is_generated_others_kept(tmp_path):
    path = tmp_path / "s.yaml"
    first, _ = secrets_mod.load_or_create(path)
    data = yaml.safe_load(path.read_text())
    del data["db_password"]
    path.write_text(yaml.safe_dump(data))
    second, changed = secrets_mod.load_or_create(path)
    assert changed and second.db_password != first.db_password
    assert second.jwt_secret == first.jwt_secret


def test_dry_run_writes_nothing(tmp_path):
    path = tmp_path / "s.yaml"
    secrets_mod.load_or_create(path, dry_run=True)
    assert not path.exists()


def test_never_shown(tmp_path):
    s, _ = secrets_mod.load_or_create(tmp_path / "s.yaml")
    assert s.sasl_password not in repr(s) and s.sasl_password not in str(s)
    assert secrets_mod.redact(f"pw={s.sasl_password}!", s) == "pw=<secret>!"


def test_sasl_hash_is_stable_crypt(tmp_path):
    s, _ = secrets_mod.load_or_create(tmp_path / "s.yaml")
    h = s.sasl_password_hash
    assert h == s.sasl_password_hash
    assert h.startswith(f"$6${s.sasl_salt}$") and len(h.split("$")[3]) == 86
    secrets_mod.sha512_crypt.cache_clear()
    assert secrets_mod.sha512_crypt(s.sasl_password, s.sasl_salt) == h          # stable, not cached
    assert secrets_mod.sha512_crypt(s.sasl_password + "x", s.sasl_salt) != h


def test_sasl_hash_matches_the_crypt_reference_vector():
    """The SHA-crypt specification's test vector (rounds 5000, the default)."""
    assert secrets_mod.openssl_sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdF"
        "CoEOfaS35inz1")
