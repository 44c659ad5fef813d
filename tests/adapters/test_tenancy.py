"""The namespace rules (adapters/tenancy.py): what a name means to a tenant, what it sees,
where its upload goes. api/auth.py adds only who may do what (tests/api/test_auth.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from loraplex.adapters.errors import AdapterExistsError
from loraplex.adapters.tenancy import AdapterId, display_name, resolve, shown, upload_id

NAMES = {"support", "acme/support", "acme/private", "globex/notes"}


@dataclass(frozen=True)
class Card:
    name: str

    @property
    def id(self) -> AdapterId:
        return AdapterId.parse(self.name)


CARDS = {name: Card(name) for name in NAMES}


@pytest.mark.parametrize(
    ("tenant", "any_tenant", "name", "found"),
    [
        ("acme", False, "support", "acme/support"),  # its own shadows the public one
        ("acme", False, "private", "acme/private"),
        ("globex", False, "support", "support"),
        ("globex", False, "private", None),  # another tenant's: unknown
        ("globex", False, "acme/private", None),
        ("ops", True, "acme/private", "acme/private"),  # an admin reaches any tenant
        ("ops", True, "private", None),
        ("acme", False, "../etc", None),
    ],
)
def test_resolve_finds_the_card_once(tenant, any_tenant, name, found) -> None:
    lookups: list[str] = []

    def find(qualified: str) -> Card | None:
        lookups.append(qualified)
        return CARDS.get(qualified)

    card = resolve(name, tenant, find, any_tenant)
    assert (card.name if card else None) == found
    assert len(lookups) <= 2  # its own, then the public one


def test_shown_leaves_out_the_shadowed_public_namesake() -> None:
    idents = [AdapterId.parse(name) for name in NAMES]
    assert sorted(n for _, n in shown(idents, "acme")) == ["private", "support"]
    assert [i.qualified for i, n in shown(idents, "acme") if n == "support"] == ["acme/support"]
    assert sorted(n for _, n in shown(idents, "globex")) == ["notes", "support"]
    everything = sorted(n for _, n in shown(idents, "ops", any_tenant=True))
    assert everything == ["acme/private", "acme/support", "globex/notes", "support"]
    assert display_name(AdapterId.parse("acme/x"), "acme") == "x"


def test_uploads_go_to_the_tenant_unless_public() -> None:
    def has(qualified: str) -> bool:
        return qualified in NAMES

    assert upload_id("fresh", "acme", False, has).qualified == "acme/fresh"
    assert upload_id("fresh", "ops", True, has).qualified == "fresh"
    with pytest.raises(AdapterExistsError, match="a public adapter is named 'support'"):
        upload_id("support", "globex", False, has)
