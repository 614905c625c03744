"""LongLive against the published interactive loop (NVlabs/LongLive branch ``v1.0``,
``pipeline/interactive_causal_inference.py`` and ``wan/modules/causal_model.py``), chunk by chunk,
through the rolling window, a prompt switch and its KV-recache.

Both sides run the tiny random DiT of :mod:`evals.fidelity.wan` with the same weights, text
embeddings and noise: the published ``inference`` with ``switch_frame_indices``, ours a chunk at
a time with ``switch_prompt`` before the chunk the published loop switches at. The published
settings (``configs/longlive_interactive_inference.yaml``): steps ``[1000, 750, 500, 250]``
warped at shift 5, 3 frames a chunk, a 12-frame attention window with a 3-frame sink,
``context_noise`` 0, and ``global_sink`` true (the config's) or false.

Geometry set for the tiny frames: the pipeline's ``frame_seq_length`` (its cache and attention
sizes follow from it).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from framestream.evals.fidelity.published import (
    checkout,
    commit_of,
    float32_attention_everywhere,
    quiet,
)
from framestream.evals.fidelity.wan import (
    FRAME_TOKENS,
    LATENT,
    SIZE,
    WAN_STUBS,
    FixedPrompts,
    NoiseTape,
    difference,
    our_models,
    published_tiny,
    published_wrapper,
    replaying,
)
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.requests import GenerationRequest

__all__ = ["CHUNK", "MODULES", "WINDOW", "compare", "published_args"]

STEPS = [1000, 750, 500, 250]
CHUNK = 3  # latent frames
WINDOW = {"local_attn_size": 12, "sink_size": 3}  # latent frames attended, of which the sink
# the published loop's module, then the modules whose attention functions are bound
MODULES = ("pipeline.interactive_causal_inference", "wan.modules.causal_model", "wan.modules.model")
PROMPTS = ("a red fox runs through snow", "a yellow bird sits on a branch")


def compare(
    checkout_path: Path, chunks: int = 10, switch_chunk: int = 5, seed: int = 0
) -> list[dict]:
    """Both loops for ``chunks`` chunks with a switch at ``switch_chunk``, once with
    ``global_sink`` true and once false; each chunk's max differences."""
    if not 4 < switch_chunk < chunks:  # past the window (sink + 9 frames) before the switch
        raise ValueError(f"switch_chunk must be in (4, {chunks}), got {switch_chunk}")
    return [
        _compare(Path(checkout_path), chunks, switch_chunk, seed, global_sink)
        for global_sink in (True, False)
    ]


def published_args(global_sink: bool = True) -> SimpleNamespace:
    """The settings the published loop reads (``configs/longlive_interactive_inference.yaml``)."""
    return SimpleNamespace(
        denoising_step_list=STEPS,
        warp_denoising_step=True,
        num_frame_per_block=CHUNK,
        model_kwargs=SimpleNamespace(**WINDOW, timestep_shift=5.0),
        global_sink=global_sink,
        context_noise=0,
    )


def _compare(path: Path, chunks: int, switch_chunk: int, seed: int, global_sink: bool) -> dict:
    prompts = FixedPrompts(seed)
    noise = torch.randn(
        (1, chunks * CHUNK, *LATENT), generator=torch.Generator().manual_seed(seed + 1)
    )
    tape = NoiseTape(seed + 2)
    with checkout(path, MODULES, WAN_STUBS) as (interactive, causal_model, model), torch.no_grad():
        theirs_model = published_tiny(causal_model.CausalWanModel, seed, **WINDOW)
        with float32_attention_everywhere(causal_model, model):
            theirs = _published_output(
                interactive, theirs_model, prompts, noise, tape, switch_chunk, global_sink
            )
        models = our_models(theirs_model, prompts)
    ours = _our_chunks(models, noise, tape, chunks, switch_chunk, global_sink)
    rows = [
        {"chunk": c, **difference(ours[c], theirs[:, :, CHUNK * c : CHUNK * (c + 1)])}
        for c in range(chunks)
    ]
    return {
        "pipeline": "longlive",
        "commit": commit_of(path),
        "global_sink": global_sink,
        "switch_chunk": switch_chunk,
        "chunks": rows,
        "all_equal": all(row["equal"] for row in rows),
    }


def _published_output(
    interactive, model, prompts, noise, tape, switch_chunk: int, global_sink: bool
) -> torch.Tensor:
    """The published interactive loop's latents ``[1, C, F, h, w]``."""
    vae = SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: latents)
    with quiet():
        pipeline = interactive.InteractiveCausalInferencePipeline(
            published_args(global_sink),
            "cpu",
            generator=published_wrapper(interactive, model, **WINDOW),
            text_encoder=prompts.published(),
            vae=vae,
        )
    pipeline.frame_seq_length = FRAME_TOKENS
    pipeline.num_transformer_blocks = len(model.blocks)
    with tape.recording(), quiet():
        _, latents = pipeline.inference(
            noise,
            text_prompts_list=[[PROMPTS[0]], [PROMPTS[1]]],
            switch_frame_indices=[switch_chunk * CHUNK],
            return_latents=True,
        )
    return latents.permute(0, 2, 1, 3, 4)


def _our_chunks(
    models, noise, tape: NoiseTape, chunks: int, switch_chunk: int, global_sink: bool
) -> list[torch.Tensor]:
    """Our pipeline's chunks on the published loop's noise: a chunk's first draw is its slice
    of ``noise``, each later one the published loop's next ``randn_like``."""
    config = LongLiveConfig(global_sink=global_sink)
    pipe = LongLivePipeline(models, KVCacheManager(), 64 << 20, config, block_size=FRAME_TOKENS)
    state = pipe.open(GenerationRequest(PROMPTS[0], seed=0, height=SIZE[0], width=SIZE[1]))
    draws = iter(tape.draws)
    starts = iter(noise.permute(0, 2, 1, 3, 4).split(CHUNK, dim=2))
    calls = 0

    def source(frames: int) -> torch.Tensor:
        nonlocal calls
        first = calls % len(STEPS) == 0  # the chunk's start, then one draw a later step
        calls += 1
        return next(starts) if first else next(draws).unsqueeze(0).permute(0, 2, 1, 3, 4)

    out = []
    with replaying(pipe, source), torch.no_grad():
        for chunk in range(chunks):
            if chunk == switch_chunk:
                pipe.switch_prompt(state, PROMPTS[1])
            out.append(pipe.denoise(state).float())
    pipe.close(state)
    return out
