"""api/auth.py without a server: the key table, role permissions, and how each caller's names
resolve (own first, then public; another tenant's never)."""

from __future__ import annotations

import pytest

from loraplex.adapters.errors import AdapterExistsError
from loraplex.api.auth import (
    ANY_TENANT,
    GENERATE,
    MANAGE,
    MERGE,
    OPEN,
    KeyTable,
    Principal,
)
from loraplex.api.errors import APIError
from loraplex.api_keys import ApiKeyEntry, key_digest

ADMIN, ACME, ACME_APP = (
    Principal("ops", "admin"),
    Principal("acme", "user"),
    Principal("acme", "inference"),
)
GLOBEX = Principal("globex", "user")
REGISTERED = {"support", "acme/support", "acme/private", "globex/support"}
has = REGISTERED.__contains__


def test_key_table_finds_the_principal_of_a_key() -> None:
    table = KeyTable(
        (
            ApiKeyEntry(key_digest("sk-acme-0001"), "acme", "user"),
            ApiKeyEntry(key_digest("sk-ops-00001"), "ops", "admin"),
        )
    )
    assert table.lookup("sk-acme-0001") == ACME
    assert table.lookup("sk-ops-00001") == ADMIN
    assert table.lookup("sk-acme-000") is None and table.lookup("") is None
    assert not KeyTable(())


@pytest.mark.parametrize(
    ("principal", "permission", "allowed"),
    [
        (ADMIN, MERGE, True),
        (ADMIN, ANY_TENANT, True),
        (ACME, MANAGE, True),
        (ACME, MERGE, False),
        (ACME, ANY_TENANT, False),
        (ACME_APP, GENERATE, True),
        (ACME_APP, MANAGE, False),
    ],
)
def test_roles(principal: Principal, permission: str, allowed: bool) -> None:
    assert principal.may(permission) is allowed
    if not allowed:
        with pytest.raises(APIError) as exc:
            principal.require(permission)
        assert exc.value.status == 403 and exc.value.type == "permission_error"


@pytest.mark.parametrize(
    ("principal", "name", "resolved"),
    [
        (ACME, "support", "acme/support"),  # its own shadows the public one
        (ACME_APP, "private", "acme/private"),
        (ACME, "acme/private", "acme/private"),
        (GLOBEX, "support", "globex/support"),
        (GLOBEX, "private", None),  # acme's: as unknown as a name nobody has
        (GLOBEX, "acme/private", None),
        (GLOBEX, "nothing", None),
        (GLOBEX, "../etc", None),
        (ADMIN, "support", "support"),  # ops has none: the public one
        (ADMIN, "acme/private", "acme/private"),
        (ADMIN, "private", None),
    ],
)
def test_resolve(principal: Principal, name: str, resolved: str | None) -> None:
    assert principal.resolve(name, has) == resolved


def test_new_adapters_go_to_the_callers_tenant() -> None:
    assert ACME.new_adapter("fresh", False, has) == "acme/fresh"
    assert ADMIN.new_adapter("fresh", True, has) == "fresh"
    assert ADMIN.new_adapter("globex/fresh", False, has) == "globex/fresh"
    assert OPEN.new_adapter("fresh", False, has) == "fresh"  # no keys: public, as before
    with pytest.raises(AdapterExistsError, match="a public adapter is named 'support'"):
        GLOBEX.new_adapter("support", False, has)
    for name, public in (("fresh", True), ("globex/fresh", False)):
        with pytest.raises(APIError) as exc:
            ACME.new_adapter(name, public, has)
        assert exc.value.status == 403


def test_cache_salts_never_cross_tenants() -> None:
    salts = {ACME.cache_salt(None), ACME.cache_salt("x"), GLOBEX.cache_salt(None)}
    assert len(salts) == 3
    assert GLOBEX.cache_salt(ACME.cache_salt(None)) not in salts
    assert ACME.cache_salt(None) == ACME_APP.cache_salt(None)  # one tenant, two keys: shared
