"""Rolling Forcing against the published loop (TencentARC/RollingForcing,
``pipeline/rolling_forcing_inference.py`` and ``wan/modules/causal_model.py``), block by block.

Both sides run the tiny random DiT of :mod:`evals.fidelity.wan` with the same weights, text
embedding and noise: the published ``inference_rolling_forcing`` over ``blocks`` blocks, ours one
window pass at a time. A block's latents are compared once it exits, which the published loop
records in its output; the last four blocks are left out, since the published loop finishes a
video by running its window down (passes of fewer blocks, no fresh noise), which an endless
stream never does. The published settings: steps ``[1000, 800, 600, 400, 200]`` warped at shift 5,
3 frames a block, a 1-block sink, ``context_noise`` 0.

Geometry set for the tiny frames (the published code hard-codes 1.3B at 832x480): the pipeline's
``frame_seq_length``; each attention layer's ``frame_length``, ``block_length`` and
``max_attention_size`` (21 frames); and the clean cache, allocated at 24 frames of 1560 tokens,
cut to 24 tiny frames, so it rolls as it does at full size.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

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
    fit_kv_cache,
    our_models,
    published_tiny,
    published_wrapper,
    replaying,
)
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.requests import GenerationRequest

__all__ = ["BLOCK", "MODULES", "compare", "fit_geometry", "published_args"]

STEPS = [1000, 800, 600, 400, 200]
BLOCK = 3  # latent frames
# the published loop's module, then the modules whose attention functions are bound
MODULES = ("pipeline.rolling_forcing_inference", "wan.modules.causal_model", "wan.modules.model")
PROMPT = "a red fox runs through snow"


def compare(checkout_path: Path, blocks: int = 16, seed: int = 0) -> dict:
    """Run both loops for ``blocks`` blocks; each compared block's max differences."""
    if blocks < 12:
        raise ValueError(f"blocks must be >= 12 to pass the 7th clean pass, got {blocks}")
    prompts = FixedPrompts(seed)
    noise = torch.randn(
        (1, blocks * BLOCK, *LATENT), generator=torch.Generator().manual_seed(seed + 1)
    )
    tape = NoiseTape(seed + 2)
    with (
        checkout(checkout_path, MODULES, WAN_STUBS) as (inference, causal_model, model),
        torch.no_grad(),
    ):
        theirs_model = published_tiny(causal_model.CausalWanModel, seed)
        with float32_attention_everywhere(causal_model, model):
            theirs = _published_output(inference, causal_model, theirs_model, prompts, noise, tape)
        models = our_models(theirs_model, prompts)
    ours = _our_blocks(models, noise, tape, blocks - 4)
    rows = [
        {"block": b, **difference(ours[b], theirs[:, :, BLOCK * b : BLOCK * (b + 1)])}
        for b in range(len(ours))
    ]
    return {
        "pipeline": "rolling_forcing",
        "commit": commit_of(Path(checkout_path)),
        "blocks": rows,
        "all_equal": all(row["equal"] for row in rows),
    }


def _published_output(inference, causal_model, model, prompts, noise, tape) -> torch.Tensor:
    """The published loop's latents ``[1, C, F, h, w]``."""
    vae = SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: latents)
    with quiet():
        pipeline = inference.CausalInferencePipeline(
            published_args(),
            "cpu",
            generator=published_wrapper(inference, model),
            text_encoder=prompts.published(),
            vae=vae,
        )
    heads = model.num_heads
    fit_geometry(pipeline, causal_model, FRAME_TOKENS, heads, model.dim // heads)
    with tape.recording(), quiet():
        _, latents = pipeline.inference_rolling_forcing(noise, [PROMPT], return_latents=True)
    return latents.permute(0, 2, 1, 3, 4)


def published_args() -> SimpleNamespace:
    """The settings the published loop reads (``configs/rolling_forcing_dmd.yaml``)."""
    return SimpleNamespace(
        denoising_step_list=STEPS,
        warp_denoising_step=True,
        num_frame_per_block=BLOCK,
        independent_first_frame=False,
        context_noise=0,
        model_kwargs={},
    )


def fit_geometry(
    pipeline: torch.nn.Module,
    causal_model: ModuleType,
    frame_tokens: int,
    heads: int,
    head_dim: int,
) -> None:
    """Set the sizes the published pipeline and attention layers hard-code for the 1.3B at
    832x480 to those of a model of ``heads`` x ``head_dim`` with ``frame_tokens`` a latent
    frame (at full size, the values they already hold): the pipeline's frame length and
    layer count, each attention layer's frame, block and attention lengths (21 frames), and
    the clean cache (24 frames), which then rolls as at full size."""
    pipeline.frame_seq_length = frame_tokens
    pipeline.num_transformer_blocks = len(pipeline.generator.model.blocks)
    for layer in pipeline.generator.model.modules():
        if isinstance(layer, causal_model.CausalWanSelfAttention):
            layer.frame_length = frame_tokens
            layer.block_length = BLOCK * frame_tokens
            layer.max_attention_size = 21 * frame_tokens
    fit_kv_cache(pipeline, "kv_cache_clean", heads, head_dim, tokens=24 * frame_tokens)


def _our_blocks(models, noise, tape: NoiseTape, blocks: int) -> list[torch.Tensor]:
    """Our pipeline's first ``blocks`` exiting blocks, on the published loop's noise."""
    pipe = RollingForcingPipeline(models, KVCacheManager(), 64 << 20, block_size=FRAME_TOKENS)
    state = pipe.open(GenerationRequest(PROMPT, seed=0, height=SIZE[0], width=SIZE[1]))
    replay = _Replay(noise, tape)
    out = []
    with replaying(pipe, replay.draw), torch.no_grad():
        while len(out) < blocks:
            replay.begin_pass(state.cache.window_blocks, pipe.config.window_blocks)
            exited = pipe.window_step(state)
            if exited is not None:
                out.append(exited.float())
    pipe.close(state)
    return out


class _Replay:
    """The published loop's noise, handed to our pipeline in the order it asks.

    A pass that takes a fresh block first asks for its noise: the published ``noise`` tensor's
    slice for that block. After the pass it asks for the re-noise of the blocks staying in the
    window: the published loop drew one full-window tensor per such block, and each block's
    noise is its own slice of its own draw.
    """

    def __init__(self, noise: torch.Tensor, tape: NoiseTape) -> None:
        self.noise = noise.permute(0, 2, 1, 3, 4)  # [1, C, F, h, w]
        self.draws = iter(tape.draws)
        self.entered = 0
        self.fresh = False
        self.window = 0  # blocks in the published window of this pass

    def begin_pass(self, blocks: int, window_blocks: int) -> None:
        self.fresh = blocks < window_blocks
        self.window = blocks + self.fresh

    def draw(self, frames: int) -> torch.Tensor:
        if self.fresh:
            self.fresh = False
            start, self.entered = BLOCK * self.entered, self.entered + 1
            return self.noise[:, :, start : start + BLOCK]
        renoised = frames // BLOCK
        first = self.window - renoised  # 1 when the oldest block has just exited
        parts = []
        for index in range(first, first + renoised):
            full = next(self.draws).unsqueeze(0).permute(0, 2, 1, 3, 4)
            parts.append(full[:, :, BLOCK * index : BLOCK * (index + 1)])
        return torch.cat(parts, dim=2)
