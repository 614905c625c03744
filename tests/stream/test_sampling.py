"""stream/pipelines/sampling.py: the device sampler equals transformers' logits processors and a
multinomial draw with the same noise; a session's draws depend on its seed alone; greedy is the
plain argmax; the settings are validated and read from a checkpoint folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

from framestream.stream.pipelines.sampling import (
    GREEDY,
    MAX_TOP_K,
    PUBLISHED,
    SamplerBatch,
    SampleSlot,
    SamplingParams,
    TokenPresence,
    published_sampling,
    sample,
    uniform_noise,
)

VOCAB = 1500
BANNED = torch.tensor([3, 7, 11])


def reference(logits, input_ids: list[list[int]], slots: list[SampleSlot]) -> list[int]:
    """transformers' processors, as ``generate(do_sample=True)`` chains them, then
    ``argmax(softmax / e)`` with ``e = -log u``: a multinomial draw from the same noise."""
    tokens = []
    for b, slot in enumerate(slots):
        p = slot.params
        ids = torch.tensor([input_ids[b]])
        scores = logits[b : b + 1].float().clone()
        scores[:, BANNED] = -torch.inf
        if p.repetition_penalty != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
        if p.greedy:
            tokens.append(int(scores.argmax()))
            continue
        scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
        probs = torch.softmax(scores.double(), -1)
        u = uniform_noise(
            torch.tensor([p.seed]), torch.tensor([slot.draws]), torch.arange(VOCAB)[None]
        )
        tokens.append(int((probs / -torch.log(u.double())).argmax()))
    return tokens


def presence_of(input_ids: list[list[int]]) -> tuple[TokenPresence, list[int]]:
    table = TokenPresence(len(input_ids), VOCAB, "cpu")
    rows = [table.acquire() for _ in input_ids]
    for row, ids in zip(rows, input_ids, strict=True):
        table.reset(row, np.array(ids))
    return table, rows


SETTINGS = [
    PUBLISHED,
    SamplingParams(0.9, 1.05, 50, seed=7),
    SamplingParams(0.5, 1.3, 5, seed=2**40 + 3),
    SamplingParams(1.7, 0.8, MAX_TOP_K, seed=1),
    SamplingParams(1.0, 1.0, 1, seed=9),
    GREEDY,
    SamplingParams(0.0, 1.05),  # greedy over the penalized scores
]


@pytest.mark.parametrize("draws", [0, 1, 17, 2**33 + 5])
def test_sampler_equals_transformers_processors_with_the_same_noise(draws) -> None:
    gen = torch.Generator().manual_seed(draws % 1000)
    logits = torch.randn(len(SETTINGS), VOCAB, generator=gen) * 4
    input_ids = [
        torch.randint(0, VOCAB, (int(n),), generator=gen).tolist()
        for n in torch.randint(1, 400, (len(SETTINGS),), generator=gen)
    ]
    slots_rows = presence_of(input_ids)
    table, rows = slots_rows
    slots = [
        SampleSlot(r, p, draws + i) for i, (r, p) in enumerate(zip(rows, SETTINGS, strict=True))
    ]
    got = sample(logits, table.table, SamplerBatch.build(slots, "cpu"), BANNED)
    assert got.tolist() == reference(logits, input_ids, slots)
    greedy = [SampleSlot(s.row, GREEDY, s.draws) for s in slots]
    argmax = sample(logits, table.table, SamplerBatch.build(greedy, "cpu"), BANNED)
    assert (got != argmax)[:4].any()  # the draws are draws, not the argmax


def test_a_fed_token_joins_its_row_before_the_penalty() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 5] = 1.0
    logits[:, 6] = 0.99
    table = TokenPresence(2, VOCAB, "cpu")
    rows = [table.acquire(), table.acquire()]
    slots = [SampleSlot(r, SamplingParams(0.0, 1.05), 0) for r in rows]
    batch = SamplerBatch.build(slots, "cpu")
    fed = torch.tensor([5, 0])
    assert sample(logits, table.table, batch, fed=fed).tolist() == [6, 5]
    assert table.table[rows[0], 5] and not table.table[rows[1], 5]


def test_a_session_s_draws_do_not_depend_on_its_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, VOCAB, generator=gen)
    table = TokenPresence(5, VOCAB, "cpu")
    rows = [table.acquire() for _ in range(5)]
    slots = [SampleSlot(r, SamplingParams(1.0, 1.05, 100, seed=r), 3 * r) for r in rows]
    together = sample(logits, table.table, SamplerBatch.build(slots, "cpu"))
    for b, slot in enumerate(slots):
        alone = sample(logits[b : b + 1], table.table, SamplerBatch.build([slot], "cpu"))
        assert int(alone) == int(together[b])


def test_greedy_is_the_plain_argmax_and_skips_the_draw() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, VOCAB, generator=gen).to(torch.bfloat16)
    table = TokenPresence(4, VOCAB, "cpu")
    rows = [table.acquire() for _ in range(4)]
    table.reset(rows[0], np.arange(VOCAB))  # a penalty of 1 changes nothing, present or not
    batch = SamplerBatch.build([SampleSlot(r, GREEDY, 5) for r in rows], "cpu")
    want = logits.float().index_fill(1, BANNED, -torch.inf).argmax(-1)
    assert torch.equal(sample(logits, table.table, batch, BANNED), want)
    assert torch.equal(sample(logits, table.table, batch, BANNED, draw=False), want)


def test_draws_follow_the_softmax() -> None:
    """Many draws (one per count) from fixed scores land as often as softmax says."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0] + [-30.0] * 20])
    params = SamplingParams(0.9, 1.0, 4, seed=123)
    table = TokenPresence(1, logits.shape[1], "cpu")
    row = table.acquire()
    n = 20_000
    batch = SamplerBatch.build([SampleSlot(row, params, d) for d in range(n)], "cpu")
    tokens = sample(logits.expand(n, -1), table.table, batch)
    counts = torch.bincount(tokens, minlength=logits.shape[1]).double() / n
    want = torch.softmax(logits[0, :4] / 0.9, -1)  # top 4 only
    assert counts[4:].sum() == 0
    torch.testing.assert_close(counts[:4], want.double(), atol=0.012, rtol=0)


def test_noise_is_a_function_of_seed_count_and_token() -> None:
    index = torch.arange(4096)[None]
    a = uniform_noise(torch.tensor([5]), torch.tensor([9]), index)
    assert torch.equal(a, uniform_noise(torch.tensor([5]), torch.tensor([9]), index))
    assert not torch.equal(a, uniform_noise(torch.tensor([6]), torch.tensor([9]), index))
    assert not torch.equal(a, uniform_noise(torch.tensor([5]), torch.tensor([10]), index))
    assert not torch.equal(a, uniform_noise(torch.tensor([5 + 2**32]), torch.tensor([9]), index))
    assert a.min() > 0 and a.max() < 1 and abs(float(a.mean()) - 0.5) < 0.02


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", 11.0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("inf")),
        ("top_k", 0),
        ("top_k", MAX_TOP_K + 1),
        ("top_k", 2.0),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", True),
    ],
)
def test_settings_out_of_range_name_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_published_sampling_reads_the_folder_s_top_k(tmp_path, caplog) -> None:
    assert published_sampling(None) == PUBLISHED == SamplingParams(0.9, 1.05, 50, 0)
    assert published_sampling(tmp_path) == PUBLISHED  # no generation_config.json: the default
    config = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 1e-06}
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    assert published_sampling(tmp_path) == PUBLISHED  # the call's own settings win
    config.update(top_k=20, top_p=0.8)
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    assert published_sampling(tmp_path).top_k == 20
    assert "top_p 0.8 is not applied" in caplog.text


def test_presence_rows_are_held_and_released() -> None:
    table = TokenPresence(2, 10, "cpu")
    a, b = table.acquire(), table.acquire()
    assert {a, b} == {1, 2} and table.acquire() is None
    table.reset(a, np.array([1, 1, 4, 99]))  # 99 is past the vocabulary
    assert table.table[a].nonzero().flatten().tolist() == [1, 4]
    table.release(a)
    with pytest.raises(ValueError, match="not held"):
        table.release(a)
    assert table.acquire() == a and not table.table[a].any()
