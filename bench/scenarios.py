"""What the serving benchmark runs: the profiles (smoke, quick, full), the adapter sets written
into the stores, the scenarios (one row each), the peers and the targets of issue 14.

Pure data, no torch: the CLI builds a profile, the runner walks it, the report reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from adapter_store import ALL_SEVEN, ATTENTION, AdapterSet
from workload import LengthRange, WorkloadSpec

MAIN, MIXED = "main", "mixed"  # the two servers: max rank 16, and max rank 64 for mixed ranks
AFFINITY = "main-affinity"  # the main server's store and options, with --adapter-affinity
MIXED_RANKS = (8, 16, 32, 64)
# The main server's store and options with its base quantized at load (--quantization
# bitsandbytes: NF4, computing in --dtype): rows nf4-base and nf4-u<n> (bench/quantized.py).
NF4 = "nf4"


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run. ``uniform``: counts of r16 all-seven adapters requested
    round-robin (targets 1-3); ``scale``: counts of r8 attention-only adapters under Zipf
    popularity (target 4, the throughput-vs-adapters plot); ``mixed``: adapters of ranks
    8/16/32/64 on all seven (a server with ``--max-lora-rank 64``); ``load``: the Poisson rates
    of the latency sweep, as fractions of the closed-loop requests/s of the first uniform row.
    ``affinity``: Zipf counts (of ``scale``) run a second time on a server started with
    ``--adapter-affinity`` (rows ``zipfN-affinity``), to show what adapter affinity changes."""

    name: str
    concurrency: int
    workload: WorkloadSpec
    rounds: int
    uniform: tuple[int, ...]
    scale: tuple[int, ...]
    mixed: int
    load: tuple[float, ...]
    zipf: float = 1.0
    max_loras: int | None = None  # default: the concurrency (every step's adapters fit)
    server_options: tuple[str, ...] = ()  # extra `loraplex serve` options of this profile
    affinity: tuple[int, ...] = ()
    quantized: bool = True  # the NF4 server's rows (issue 20)

    def __post_init__(self) -> None:
        if min(self.concurrency, self.rounds) < 1:
            raise ValueError("--concurrency and --rounds must be positive")
        if not self.uniform or min(self.uniform + self.scale) < 1 or self.mixed < 0:
            raise ValueError(f"profile {self.name}: adapter counts must be positive")
        if not set(self.affinity) <= set(self.scale):
            raise ValueError(f"profile {self.name}: --affinity counts must be Zipf counts")
        if any(f <= 0 for f in self.load):
            raise ValueError(f"profile {self.name}: load fractions must be positive")

    @property
    def slots(self) -> int:
        return self.max_loras or self.concurrency


# The stores' adapters are float16 files with power-of-two scales (lora_alpha = 2r), so float16
# slot tables hold exactly the values float32 ones would (the same outputs) in half the bytes a
# decode step streams. `--server-args '--lora-dtype auto'` measures float32 tables.
FLOAT16_TABLES = ("--lora-dtype", "float16")

PROFILES = {
    "smoke": Profile(
        "smoke", 2, WorkloadSpec(4, LengthRange(4, 12), LengthRange(2, 4)), 1,
        uniform=(16,), scale=(1, 8), mixed=4, load=(1.0,), max_loras=4,
        server_options=("--kv-cache-memory-mb", "64"), affinity=(8,),
    ),
    "quick": Profile(
        "quick", 8, WorkloadSpec(16, LengthRange(16, 48), LengthRange(8, 16)), 2,
        uniform=(16, 64), scale=(8, 1000), mixed=16, load=(0.5, 1.0),
        server_options=FLOAT16_TABLES,
    ),
    "full": Profile(
        "full", 32, WorkloadSpec(96, LengthRange(16, 128), LengthRange(32, 64)), 3,
        uniform=(16, 64), scale=(1, 8, 64, 512, 1000), mixed=16,
        load=(0.25, 0.5, 0.75, 1.0, 1.25), affinity=(64, 512, 1000),
        server_options=FLOAT16_TABLES,
    ),
    # Issue 22's side-by-side with vLLM: 32 streams, 64 requests a round, 48 tokens each,
    # r16 adapters on all seven projections, 64 slots on both servers, float32 tables.
    "vllm": Profile(
        "vllm", 32, WorkloadSpec(64, LengthRange(16, 48), LengthRange(48, 48)), 3,
        uniform=(16, 64), scale=(), mixed=0, load=(), max_loras=64, quantized=False,
    ),
}  # fmt: skip

# The rows vLLM runs too (``--vllm-python``), each as ``vllm-<row>`` on the same requests.
VLLM_ROWS = ("base", "u16", "u64")


def vllm_key(row: str) -> str:
    return f"vllm-{row}"


@dataclass(frozen=True)
class Scenario:
    """One loraplex row: which server, which adapters the requests name, how they are drawn."""

    key: str
    label: str
    server: str
    names: tuple[str, ...] = ()
    zipf: float | None = None  # None: round-robin over ``names``
    adapters: str = "-"  # what the adapters are, for the table
    family: str = ""  # the plot series of rows that differ only in the number of adapters


@dataclass(frozen=True)
class Plan:
    """A profile made concrete: the adapter sets of each store, the scenarios and the peers."""

    profile: Profile
    stores: dict[str, tuple[AdapterSet, ...]]
    scenarios: tuple[Scenario, ...]
    peer_scenario: str  # the uniform row whose requests the PEFT peers replay
    peers: tuple[str, ...] = field(default=("hf", "peft-mixed", "peft-seq", "bare"))

    def store_of(self, server: str) -> str:
        """The store a server reads: the affinity and NF4 servers share the main one."""
        return MAIN if server in (AFFINITY, NF4) else server

    def max_rank(self, server: str) -> int:
        return max(s.max_rank for s in self.stores[self.store_of(server)])

    @property
    def merged_tenant(self) -> str:
        """The adapter the main server pre-merges (``--merged-adapters``)."""
        return next(s.names[0] for s in self.scenarios if s.key == "merged")


PEERS = {
    "hf": "HF generate, static batches",
    "peft-mixed": "PEFT generate(adapter_names), static batches",
    "peft-seq": "PEFT one at a time (set_adapter)",
    "bare": "(r) bare HF decode forward",
}


def _adapters(n: int) -> str:
    return f"{n} adapter" if n == 1 else f"{n} adapters"


def plan(profile: Profile) -> Plan:
    uniform = AdapterSet("u", max(profile.uniform), (16,), ALL_SEVEN)
    tenant = AdapterSet("t", 1, (16,), ALL_SEVEN)
    scale = AdapterSet("z", max(profile.scale, default=1), (8,), ATTENTION)
    stores = {MAIN: (uniform, tenant, scale) if profile.scale else (uniform, tenant)}
    rows = [
        Scenario("base", "loraplex base model", MAIN),
        Scenario("merged", "loraplex 1 pre-merged tenant", MAIN, (tenant.names[0],),
                 adapters=f"1 merged, {tenant.describe()}"),
    ]  # fmt: skip
    for n in profile.uniform:
        names = tuple(uniform.names[:n])
        rows.append(
            Scenario(f"u{n}", f"loraplex {_adapters(n)}, round-robin", MAIN, names,
                     adapters=f"{n}, {uniform.describe()}",
                     family=f"round-robin, {uniform.describe()}")
        )  # fmt: skip
    if profile.mixed:
        mixed = AdapterSet("m", profile.mixed, MIXED_RANKS, ALL_SEVEN)
        stores[MIXED] = (mixed,)
        n = profile.mixed
        rows.append(
            Scenario(f"mixed{n}", f"loraplex {_adapters(n)}, mixed ranks", MIXED,
                     tuple(mixed.names), adapters=f"{n}, {mixed.describe()}",
                     family=f"round-robin, {mixed.describe()}")
        )  # fmt: skip
    for n in profile.scale:
        names = tuple(scale.names[:n])
        label = f"loraplex {_adapters(n)}, Zipf {profile.zipf:g}"
        family = f"Zipf {profile.zipf:g}, {scale.describe()}"
        rows.append(
            Scenario(f"zipf{n}", label, MAIN, names, profile.zipf, f"{n}, {scale.describe()}",
                     family)
        )  # fmt: skip
    for n in profile.affinity:
        names = tuple(scale.names[:n])
        rows.append(
            Scenario(f"zipf{n}-affinity", f"loraplex {_adapters(n)}, Zipf {profile.zipf:g}, "
                     "adapter affinity", AFFINITY, names, profile.zipf,
                     f"{n}, {scale.describe()}",
                     f"Zipf {profile.zipf:g}, {scale.describe()}, adapter affinity")
        )  # fmt: skip
    if profile.quantized:  # the same requests on an NF4 base: its speed and its LoRA tax
        n = profile.uniform[0]
        rows += [
            Scenario("nf4-base", "loraplex base model, NF4 base", NF4),
            Scenario(f"nf4-u{n}", f"loraplex {_adapters(n)}, round-robin, NF4 base", NF4,
                     tuple(uniform.names[:n]), adapters=f"{n}, {uniform.describe()}"),
        ]  # fmt: skip
    return Plan(profile, stores, tuple(rows), peer_scenario=f"u{profile.uniform[0]}")


def with_overrides(profile: Profile, **changes: object) -> Profile:
    """The profile with the non-None ``changes`` (command-line overrides) applied."""
    return replace(profile, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Target:
    """``tokens/s(numerator) / tokens/s(denominator) >= minimum`` (None: a reference ratio).
    With ``per_step``, the ratio is ``ITL p50(denominator) / ITL p50(numerator)`` instead:
    how much faster the numerator's decode steps are, with prefill left out."""

    label: str
    numerator: str
    denominator: str
    minimum: float | None
    per_step: bool = False


TARGETS = (
    Target("1. 16 adapters vs base", "u16", "base", 0.90),
    Target("2. 64 adapters vs base", "u64", "base", 0.85),
    Target("3a. 16 adapters vs PEFT mixed batch", "u16", "peft-mixed", 8.0),
    Target("3b. 16 adapters vs PEFT one at a time", "u16", "peft-seq", 15.0),
    Target("4. 1,000 adapters vs 8 (Zipf)", "zipf1000", "zipf8", 0.90),
    Target("5. base vs bare forward (r)", "base", "bare", 1.0),
    Target("ref. base vs (r), decode steps only (ITL p50)", "base", "bare", None, per_step=True),
    Target("6. pre-merged tenant vs base", "merged", "base", 0.95),
    Target("ref. base vs HF generate", "base", "hf", None),
    Target("ref. mixed ranks vs 16 adapters r16", "mixed16", "u16", None),
    Target("ref. affinity on vs off, Zipf 64", "zipf64-affinity", "zipf64", None),
    Target("ref. affinity on vs off, Zipf 512", "zipf512-affinity", "zipf512", None),
    Target("ref. affinity on vs off, Zipf 1,000", "zipf1000-affinity", "zipf1000", None),
    Target("ref. NF4 base vs float32 base", "nf4-base", "base", None),
    Target("ref. NF4 base vs float32, 16 adapters", "nf4-u16", "u16", None),
    Target("7a. base vs vLLM base", "base", vllm_key("base"), 1.2),
    Target("7b. 16 adapters vs vLLM", "u16", vllm_key("u16"), 2.0),
    Target("7c. 64 adapters vs vLLM", "u64", vllm_key("u64"), 1.8),
)
