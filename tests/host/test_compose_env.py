"""Every ENTE_* variable the compose file hands to Museum must name a real key
of the rendered museum.yaml under upstream's rule (viper's key replacer):
ENTE_ + the key path in capitals, with both '.' and '-' replaced by '_'.
The article's dashed names (ENTE_S3_B2-EU-CEN_KEY, ...) are silently ignored
by current Museum images; the check must catch them."""

from __future__ import annotations

import re

import yaml

COMPOSE = "/usr/local/docker-ente/docker-compose.yml"
MUSEUM = "/usr/local/docker-ente/museum.yaml"


def key_paths(node, prefix: tuple = ()) -> set[str]:
    """Dotted paths of every leaf (lists count as leaves) of a YAML mapping."""
    out = set()
    if isinstance(node, dict):
        for key, value in node.items():
            out |= key_paths(value, prefix + (str(key),))
    elif prefix:
        out.add(".".join(prefix))
    return out


def env_name(path: str) -> str:
    return "ENTE_" + re.sub(r"[.-]", "_", path.upper())


def unmapped(env_names, museum_doc) -> list[str]:
    known = {env_name(p) for p in key_paths(museum_doc)}
    return sorted(n for n in env_names if n.startswith("ENTE_") and n not in known)


def museum_env(compose_text: str) -> dict:
    doc = yaml.safe_load(compose_text)
    return doc["services"]["ente-museum"]["environment"]


def test_every_ente_variable_maps_to_a_museum_key(rendered):
    env = museum_env(rendered.text(COMPOSE))
    museum = yaml.safe_load(rendered.text(MUSEUM))
    names = [n for n in env if n.startswith("ENTE_")]
    assert len(names) >= 14
    assert unmapped(names, museum) == []
    # and the ones the article needs are all there
    for path in ("internal.hardcoded-ott.emails", "key.encryption", "key.hash", "jwt.secret",
                 "db.password", "s3.b2-eu-cen.key", "s3.wasabi-eu-central-2-v3.secret",
                 "s3.scw-eu-fr-v3.key"):
        assert env_name(path) in names, path


def test_no_dash_in_any_variable_name(rendered):
    env_text = rendered.text("/usr/local/docker-ente/.env")
    names = re.findall(r"^([^#=\s]+)=", env_text, re.M)
    assert names and all(re.fullmatch(r"[A-Z0-9_]+", n) for n in names), names
    for name in museum_env(rendered.text(COMPOSE)):
        assert re.fullmatch(r"[A-Z0-9_]+", name), name


def test_the_articles_dashed_names_fail_the_check(rendered):
    museum = yaml.safe_load(rendered.text(MUSEUM))
    article = ["ENTE_INTERNAL_HARDCODED-OTT_EMAILS", "ENTE_S3_B2-EU-CEN_KEY",
               "ENTE_S3_WASABI-EU-CENTRAL-2-V3_SECRET", "ENTE_KEY_HASH"]
    assert unmapped(article, museum) == sorted(article[:3])
    # the same, going through the rendered compose file with one name dashed
    broken = rendered.text(COMPOSE).replace("ENTE_S3_B2_EU_CEN_KEY:", "ENTE_S3_B2-EU-CEN_KEY:")
    assert unmapped(museum_env(broken), museum) == ["ENTE_S3_B2-EU-CEN_KEY"]


def test_a_key_missing_from_museum_yaml_fails_the_check(rendered):
    museum = yaml.safe_load(rendered.text(MUSEUM))
    del museum["jwt"]
    assert unmapped(museum_env(rendered.text(COMPOSE)), museum) == ["ENTE_JWT_SECRET"]


def test_rule_examples():
    assert env_name("db.user") == "ENTE_DB_USER"                       # the article's example
    assert env_name("internal.hardcoded-ott.emails") == "ENTE_INTERNAL_HARDCODED_OTT_EMAILS"
    assert env_name("s3.b2-eu-cen.key") == "ENTE_S3_B2_EU_CEN_KEY"
