"""Reply sampling for StreamingVLM: the published sampler, per session, on the device.

The published inference samples each reply token with transformers 4.52.4's ``generate``
(``do_sample=True, temperature=0.9, repetition_penalty=1.05``), whose defaults add the
checkpoint's ``generation_config`` and otherwise ``GenerationConfig``'s: ``top_k=50``,
``top_p=1.0`` (Qwen2.5-VL checkpoints set neither; :func:`published_sampling` reads a folder's
file). Per token, over fp32 logits::

    scores[v] = scores[v] * p if scores[v] < 0 else scores[v] / p   v in the input ids (penalty)
    scores   /= temperature                                          (temperature)
    scores[scores < k-th largest] = -inf                             (top-k)
    token     ~ softmax(scores)                                      (multinomial)

Here the same, for a batch of sessions, with no host synchronisation, so it runs inside the
captured decode step (:mod:`stream.pipelines.decode_graph`):

* per-sequence settings are ``[B]`` tensors (:class:`SamplerBatch`): static buffers in a graph;
* the penalty's ids are a session's row of a device table (:class:`TokenPresence`): every id its
  cache holds (rebuilt at each prefill from the policy: what the published ``input_ids`` hold)
  and each token fed since;
* the draw is an exponential race in Gumbel form: ``argmax(scores + g)``, ``g = -log(-log u)``,
  ``u`` a counter-based hash of (session seed, the session's count of draws, token id). It
  equals ``argmax(softmax(scores) / e)`` with ``e = -log u`` exponential, a multinomial draw,
  and depends on nothing else: not on the batch the session shares, nor on a global generator,
  so a seed replays a session exactly;
* temperature 0 is greedy: the argmax of the penalized scores (with penalty 1, the plain argmax).

Top-k runs over the ``MAX_TOP_K`` best candidates, a static width (a graph needs one); top-p and
top-k off (``0``) are not offered: the published settings use neither.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GREEDY",
    "MAX_REPETITION_PENALTY",
    "MAX_SEED",
    "MAX_TEMPERATURE",
    "MAX_TOP_K",
    "PUBLISHED",
    "SampleSlot",
    "SamplerBatch",
    "SamplingParams",
    "TokenPresence",
    "gumbel_noise",
    "published_sampling",
    "sample",
    "uniform_noise",
]

logger = logging.getLogger(__name__)

MAX_TEMPERATURE = 10.0
MAX_REPETITION_PENALTY = 10.0
MAX_TOP_K = 1000  # the static candidate width of the top-k
MAX_SEED = 2**63 - 1


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one session picks its reply tokens.

    Attributes:
        temperature: 0 is greedy; else scores are divided by it before the draw (0..10).
        repetition_penalty: transformers' ``RepetitionPenaltyLogitsProcessor`` over the
            session's cached ids (> 0, at most 10; 1 is none).
        top_k: the draw is among the ``top_k`` best tokens (1..1000); unused when greedy.
        seed: the session's noise (0..2**63-1): same seed, same feed, same replies.
    """

    temperature: float = 0.0
    repetition_penalty: float = 1.0
    top_k: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        t, p = self.temperature, self.repetition_penalty
        if not (_number(t) and 0 <= t <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be a number in 0..{MAX_TEMPERATURE}, got {t!r}")
        if not (_number(p) and 0 < p <= MAX_REPETITION_PENALTY):
            raise ValueError(
                f"repetition_penalty must be a number in (0, {MAX_REPETITION_PENALTY}], got {p!r}"
            )
        for name, low, high in (("top_k", 1, MAX_TOP_K), ("seed", 0, MAX_SEED)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


GREEDY = SamplingParams()
PUBLISHED = SamplingParams(temperature=0.9, repetition_penalty=1.05, top_k=50)


def published_sampling(model_dir: str | Path | None = None) -> SamplingParams:
    """The published inference's sampler for a checkpoint folder: temperature 0.9, repetition
    penalty 1.05 (its explicit arguments) and the folder's ``generation_config.json`` top-k, else
    transformers 4.52.4's default 50. A top-p below 1 there would also apply in the published
    code; it is not offered here, so it is reported and left out."""
    config = {}
    path = Path(model_dir) / "generation_config.json" if model_dir is not None else None
    if path is not None and path.is_file():
        config = json.loads(path.read_text())
    top_k = config.get("top_k")
    top_k = PUBLISHED.top_k if top_k is None else top_k
    if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        logger.warning("%s: top_k %r is outside 1..%d; using %d", path, top_k, MAX_TOP_K, MAX_TOP_K)
        top_k = MAX_TOP_K
    top_p = config.get("top_p")
    if isinstance(top_p, int | float) and top_p < 1:
        logger.warning("%s: top_p %s is not applied (the sampler has top-k only)", path, top_p)
    return SamplingParams(PUBLISHED.temperature, PUBLISHED.repetition_penalty, top_k)


# --------------------------------------------------------------------------------------------
# Per-session state on the device
# --------------------------------------------------------------------------------------------


class TokenPresence:
    """The repetition penalty's token sets: ``bool [rows + 1, vocab]`` on the device, one row
    per session; row 0 is the null row that padding sequences read and write.

    Args:
        rows: sessions at once (the pipeline sizes it from its cache pool's capacity).
        vocab: the logits' width.
    """

    NULL_ROW = 0

    def __init__(self, rows: int, vocab: int, device: torch.device | str) -> None:
        if rows < 1 or vocab < 1:
            raise ValueError(f"rows ({rows}) and vocab ({vocab}) must be positive")
        self.table = torch.zeros(rows + 1, vocab, dtype=torch.bool, device=device)
        self._free = list(range(rows, self.NULL_ROW, -1))

    def acquire(self) -> int | None:
        """A free row, cleared, or None when every row is taken."""
        if not self._free:
            return None
        row = self._free.pop()
        self.table[row].zero_()
        return row

    def release(self, row: int) -> None:
        if row == self.NULL_ROW or row in self._free or not 0 < row < len(self.table):
            raise ValueError(f"row {row} is not held")
        self._free.append(row)

    def reset(self, row: int, ids: np.ndarray) -> None:
        """Row ``row`` holds exactly ``ids`` (ids past the vocabulary cannot be sampled, as in
        transformers, and are left out)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < self.table.shape[1])]
        self.table[row].zero_()
        self.table[row, torch.from_numpy(ids).to(self.table.device)] = True


@dataclass(frozen=True, slots=True)
class SampleSlot:
    """One sequence of a step: its session's presence row, settings and count of draws."""

    row: int
    params: SamplingParams
    draws: int  # tokens this session has drawn before: the noise's counter


PADDING = SampleSlot(TokenPresence.NULL_ROW, GREEDY, 0)


@dataclass(slots=True)
class SamplerBatch:
    """Per-sequence sampler inputs of one step, ``[B]`` each, on the device."""

    rows: torch.Tensor  # int64: presence rows
    top_k: torch.Tensor  # int64
    seed: torch.Tensor  # int64
    draws: torch.Tensor  # int64
    temperature: torch.Tensor  # float32
    penalty: torch.Tensor  # float32

    @classmethod
    def empty(cls, size: int, device: torch.device | str) -> SamplerBatch:
        """Static buffers for ``size`` sequences (a decode graph's), all padding."""
        ints = torch.zeros(4, size, dtype=torch.int64, device=device)
        floats = torch.zeros(2, size, dtype=torch.float32, device=device)
        batch = cls(*ints, *floats)
        batch.load([PADDING] * size)
        return batch

    @classmethod
    def build(cls, slots: Sequence[SampleSlot], device: torch.device | str) -> SamplerBatch:
        ints, floats = _host(slots)
        return cls(*ints.to(device), *floats.to(device))

    def load(self, slots: Sequence[SampleSlot]) -> None:
        """Fill these buffers (of ``len(slots)`` sequences) in place."""
        ints, floats = _host(slots)
        device = self.rows.device
        for dst, src in zip(
            (self.rows, self.top_k, self.seed, self.draws), ints.to(device), strict=True
        ):
            dst.copy_(src)
        self.temperature.copy_(floats[0].to(device))
        self.penalty.copy_(floats[1].to(device))


def _host(slots: Sequence[SampleSlot]) -> tuple[torch.Tensor, torch.Tensor]:
    ints = torch.tensor(
        [[s.row, s.params.top_k, s.params.seed, s.draws] for s in slots], dtype=torch.int64
    ).reshape(-1, 4)
    floats = torch.tensor(
        [[s.params.temperature, s.params.repetition_penalty] for s in slots], dtype=torch.float32
    ).reshape(-1, 2)
    return ints.T.contiguous(), floats.T.contiguous()


# --------------------------------------------------------------------------------------------
# The draw
# --------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x * m mod 2**32`` for int64 ``x`` in [0, 2**32): split in 16-bit halves, no overflow."""
    return ((x & 0xFFFF) * m + ((((x >> 16) * m) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply), on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(seed: torch.Tensor, draws: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``u`` in (0, 1), float32 ``[B, K]``: a hash of (``seed[b]``, ``draws[b]``, ``index[b, k]``).

    Args:
        seed, draws: int64 ``[B]``; the session's seed and its count of earlier draws.
        index: int64 ``[B, K]`` token ids.
    """
    key = _mix32((draws & _M32) ^ 0x9E3779B9)
    key = _mix32(key ^ (seed & _M32))
    key = _mix32(key ^ ((seed >> 32) & _M32))[:, None]
    bits = _mix32(_mix32((index & _M32) ^ key) ^ key)
    return ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel_noise(seed: torch.Tensor, draws: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``-log(-log u)``: ``argmax(scores + g)`` draws from ``softmax(scores)``."""
    return -torch.log(-torch.log(uniform_noise(seed, draws, index)))


def sample(
    logits: torch.Tensor,
    presence: torch.Tensor,
    batch: SamplerBatch,
    banned: torch.Tensor | None = None,
    fed: torch.Tensor | None = None,
    draw: bool = True,
) -> torch.Tensor:
    """The next token of each sequence, on the device, with no host synchronisation.

    Args:
        logits: ``[B, V]`` (any float dtype; scored in fp32, as transformers does).
        presence: :attr:`TokenPresence.table`, ``bool [rows, V]``.
        batch: the sequences' settings (rows into ``presence``).
        banned: int64 ids never sampled (set to -inf first).
        fed: int64 ``[B]`` tokens fed this step: added to their rows before the penalty (the
            published ``input_ids`` hold the token just fed).
        draw: False when every sequence is greedy (host knowledge: skips the top-k and noise).

    Returns:
        int64 ``[B]``.
    """
    scores = logits.float()
    if banned is not None:
        scores.index_fill_(1, banned, -torch.inf)
    if fed is not None:
        presence.index_put_((batch.rows, fed), fed.new_ones((), dtype=torch.bool))
    present = presence.index_select(0, batch.rows)
    penalty = batch.penalty[:, None]
    scores = torch.where(
        present, torch.where(scores < 0, scores * penalty, scores / penalty), scores
    )
    greedy = scores.argmax(-1)
    if not draw:
        return greedy
    temperature = batch.temperature[:, None]
    scaled = scores / torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    width = min(MAX_TOP_K, scaled.shape[-1])
    values, index = scaled.topk(width, dim=-1)  # descending
    kth = values.gather(1, (batch.top_k.clamp(1, width) - 1)[:, None])
    race = values + gumbel_noise(batch.seed, batch.draws, index)
    race = torch.where(values >= kth, race, torch.full_like(race, -torch.inf))
    sampled = index.gather(1, race.argmax(-1, keepdim=True)).squeeze(1)
    return torch.where(batch.temperature > 0, sampled, greedy)
