"""The portal's configuration (portal:, plans:), its languages and its catalogs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from privatai.config import PortalConfig, default_plans, load_config, parse_config
from privatai.errors import ConfigError
from privatai.portal.i18n import CATALOG_DIR, load_catalogs, localize, negotiate

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [{"name": "local", "kind": "embedded", "models": ["m"]}]


def config(**extra: Any) -> Any:
    return parse_config({"backends": BACKENDS, **extra})


def test_the_shipped_backends_yaml_spells_out_the_defaults() -> None:
    shipped = load_config(ROOT / "backends.yaml")
    assert shipped.plans == default_plans()
    assert shipped.portal.vat_note == PortalConfig().vat_note
    assert shipped.portal.enabled and shipped.portal.public_url is None


def test_default_plans_are_the_seeds_pro_and_enterprise() -> None:
    pro, enterprise = config().plans
    assert (pro.name, pro.title, pro.highlight, pro.contact) == ("pro", "Pro", True, False)
    assert (enterprise.name, enterprise.title, enterprise.contact) == ("enterprise", "Enterprise", True)
    assert localize(enterprise.price, "de") == "Individuell"
    assert [localize(f, "de") for f in enterprise.features] == [
        "Alles aus Pro", "Mehrere Plätze / Team-Zugang", "Dedizierte Infrastruktur",
        "Individuelle Modell-Anpassung", "Prioritäts-Support"]


def test_legal_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "backends.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"backends": BACKENDS}))
    assert load_config(path).portal.legal_dir == str(tmp_path / "etc" / "legal")
    path.write_text(yaml.safe_dump({"backends": BACKENDS, "portal": {"legal_dir": "/srv/legal"}}))
    assert load_config(path).portal.legal_dir == "/srv/legal"


@pytest.mark.parametrize(("extra", "where", "reason"), [
    ({"plans": [{"name": "Pro", "price": "1"}]}, "plans[0].name", "lower case"),
    ({"plans": [{"name": "pro"}]}, "plans[0].price", "missing required field"),
    ({"plans": [{"name": "pro", "price": "1"}, {"name": "pro", "price": "2"}]}, "plans[1].name", "duplicate"),
    ({"plans": [{"name": "pro", "price": {"fr": "1 €"}}]}, "plans[0].price", "'fr'"),
    ({"plans": [{"name": "pro", "price": {}}]}, "plans[0].price", "length >= 1"),
    ({"plans": [{"name": "pro", "price": "1", "features": [3]}]}, "plans[0].features[0]", "got `int`"),
    ({"plans": [{"name": "pro", "price": "1", "colour": "red"}]}, "plans[0].colour", "unknown field"),
    ({"portal": {"public_url": "https://api.example.de/v1"}}, "portal.public_url", "no path"),
    ({"portal": {"public_url": "api.example.de"}}, "portal.public_url", "origin"),
    ({"portal": {"contact_email": "kontakt"}}, "portal.contact_email", "e-mail"),
    ({"portal": {"contact_email": "a@b.de\" onclick=\"x"}}, "portal.contact_email", "e-mail"),
])
def test_bad_portal_and_plan_settings_name_the_key(extra: dict[str, Any], where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**extra)
    assert caught.value.path == where and reason in caught.value.reason


def test_good_settings_pass() -> None:
    portal = config(portal={"public_url": "https://api.example.de:8443", "contact_email": "kontakt@example.de",
                            "vat_note": "inkl. MwSt."}).portal
    assert portal.public_url == "https://api.example.de:8443"
    assert config(plans=[]).plans == []


@pytest.mark.parametrize(("header", "expected"), [
    (None, "de"), ("", "de"), ("*", "de"), ("fr-FR", "de"),
    ("en", "en"), ("en-US,en;q=0.9", "en"), ("de-AT", "de"),
    ("en-US,en;q=0.9,de;q=0.8", "en"), ("de;q=0.8, en;q=0.9", "en"),
    ("fr, en;q=0.5, de;q=0.3", "en"), ("fr, de;q=0.5, en;q=0.3", "de"),
    ("en;q=0, de;q=0.1", "de"), ("en;q=oops", "de"), ("EN-gb", "en"),
    ("de, en", "de"), ("en, de", "en"),
])
def test_accept_language(header: str | None, expected: str) -> None:
    assert negotiate(header) == expected


def test_operator_text_falls_back_to_the_other_language() -> None:
    assert localize("Pro", "en") == "Pro"
    assert localize({"de": "Preis", "en": "Price"}, "en") == "Price"
    assert localize({"de": "nur Deutsch"}, "en") == "nur Deutsch"
    assert localize({"en": "English only"}, "de") == "English only"


def test_catalogs_have_the_same_keys_and_a_gap_stops_the_app(tmp_path: Path) -> None:
    catalogs = load_catalogs()
    assert catalogs["de"].nav.pricing == "Preise" and catalogs["en"].nav.pricing == "Pricing"
    for lang in ("de", "en"):
        (tmp_path / f"{lang}.yaml").write_text((CATALOG_DIR / f"{lang}.yaml").read_text(encoding="utf-8"),
                                               encoding="utf-8")
    english = yaml.safe_load((tmp_path / "en.yaml").read_text(encoding="utf-8"))
    del english["nav"]["pricing"]
    english["docs"]["errors"].pop()
    (tmp_path / "en.yaml").write_text(yaml.safe_dump(english, allow_unicode=True), encoding="utf-8")
    with pytest.raises(RuntimeError) as caught:
        load_catalogs(tmp_path)
    assert ".nav.pricing" in str(caught.value) and ".docs.errors[7]" in str(caught.value)
