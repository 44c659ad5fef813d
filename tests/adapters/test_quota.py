"""The per-tenant quota rule on its own: a new adapter past the count, or bytes past the limit,
is refused naming the option; a replace that adds nothing passes; public adapters and 0 (no
limit) always pass."""

from __future__ import annotations

import pytest

from loraplex.adapters.errors import AdapterQuotaError
from loraplex.adapters.quota import TenantQuota
from loraplex.adapters.tenancy import AdapterId

STORED = {"acme/a": 100, "acme/b": 200}  # what the store holds of acme


@pytest.mark.parametrize(
    ("quota", "name", "new_bytes", "refused_by"),
    [
        (TenantQuota(max_adapters=2), "acme/c", 1, "--max-adapters-per-tenant"),
        (TenantQuota(max_adapters=2), "acme/a", 1, None),  # a replace: still two adapters
        (TenantQuota(max_adapters=3), "acme/c", 1, None),
        (TenantQuota(max_bytes=400), "acme/c", 101, "--max-adapter-mb-per-tenant"),
        (TenantQuota(max_bytes=400), "acme/c", 100, None),  # exactly at the limit
        (TenantQuota(max_bytes=400), "acme/a", 200, None),  # 100 -> 200: 400 in all
        (TenantQuota(max_bytes=250), "acme/b", 150, None),  # over already, but shrinking
        (TenantQuota(max_bytes=250), "acme/b", 250, "--max-adapter-mb-per-tenant"),
        (TenantQuota(max_adapters=1, max_bytes=1), "public", 10**9, None),  # not a tenant's
        (TenantQuota(), "acme/c", 10**12, None),  # 0: no limit
    ],
)
def test_quota_rule(quota: TenantQuota, name: str, new_bytes: int, refused_by: str | None) -> None:
    ident = AdapterId.parse(name)
    if refused_by is None:
        quota.check(ident, new_bytes, STORED)
        return
    with pytest.raises(AdapterQuotaError) as refused:
        quota.check(ident, new_bytes, STORED)
    assert refused.value.option == refused_by
    assert refused_by in str(refused.value) and "'acme'" in str(refused.value)
