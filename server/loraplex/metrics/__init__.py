"""Every Prometheus metric loraplex exports, defined once (``definitions.py``), in one dedicated
registry; the recorders that update them (``record.py``), their bounded and private labels
(``labels.py``) and the ``/metrics`` scrape (``scrape.py``). ``from loraplex import metrics``
gives the definitions and the recorders.

A dedicated ``CollectorRegistry`` (not prometheus_client's global one) means that tests which
build several apps in one process never hit "Duplicated timeseries", and that ``/metrics`` shows
only what we define here plus the process collectors.

Two families live here:

* the Gateway API Inference Extension's model-server protocol, under the names its endpoint
  picker reads for vLLM (``vllm:*``), so a loraplex pod routes with no gateway configuration;
  ``vllm:num_requests_*`` count sequences (one prompt x one sample), which is what vLLM counts
  too (its engine fans ``n > 1`` and prompt lists out into one engine request each) and what
  takes batch slots and KV blocks, the load the picker balances;
* loraplex's own (``loraplex_*``).

Who updates what:

* the engine's output processor: outcomes, tokens, TTFT, inter-token, queue and end-to-end
  latency (:func:`record_first_token`, :func:`record_token_gap`, :func:`record_finished`);
* the engine loop: step duration, batch size, preemptions (:func:`record_step`); adapter tiers:
  loads, evictions, hits and misses (:func:`record_adapter_load`, ...);
* the API's error handlers: every 429, by tenant (:func:`record_rate_limited`);
* the grammar service: compile time and cache lookups of constraints
  (:func:`record_grammar_compile`, :func:`record_grammar_cache`);
* ``/metrics`` copies the engine's gauges from ``engine.stats()`` on every scrape
  (``scrape.py``), so the engine thread never has to touch them.

Adapter labels hold qualified names (``tenant/name`` for a tenant's own) and the rate-limit
counter tenants: a scrape without a key renders them through ``PrivateLabels`` (opaque, stable;
``labels.py``, applied in ``scrape.py``), so only a ``metrics`` or ``admin`` key reads them
plain. A new label that names an adapter or a tenant must use one of the keys
``PrivateLabels.relabel`` knows.
"""

from loraplex.metrics.definitions import *  # noqa: F403
from loraplex.metrics.definitions import __all__ as _definitions
from loraplex.metrics.record import *  # noqa: F403
from loraplex.metrics.record import __all__ as _recorders

__all__ = [*_definitions, *_recorders]
