"""A tiny streaming decoder for Wan2.1 latents (the TAEHV layout), beside the full Wan VAE.

TAEHV (madebyollin/taehv) is a tiny autoencoder whose decoder turns Wan2.1 latents (16 channels,
8x spatial, 4x temporal compression) into frames with 2D convolutions only: time enters through
*memory blocks*, each of which reads its input frame beside its input one frame earlier, and
through *temporal grows*, 1x1 convolutions whose output channel groups become successive frames.
This module is that decoder, its weights loaded by the names and shapes of the published
``taew2_1.pth`` (a plain torch state dict; the encoder's keys in it are ignored)::

    latents [B, 16, T, h, w]           generator (normalised) latents, as the DiT emits them:
                                        the published decoder takes them with no mean/std
    3 tanh(z / 3)                       soft clamp
    conv_in 3x3 -> W0, relu
    stage s = 0, 1, 2:                  width W_s -> W_{s+1}
        3 memory blocks                 y_t = relu(c3(relu(c2(relu(c1([x_t, x_{t-1}]))))) + x_t)
        temporal grow x k_s             1x1 conv C -> k C; frame t -> frames (t, 0) .. (t, k-1)
        nearest 2x upsample
        conv 3x3, no bias
    relu, conv_out 3x3 -> 3             clamped to [0, 1], returned in [-1, 1] as WanVAE's

``k = (1, 2, 2)`` for Wan2.1: each latent frame makes 4 frames. The stream's first 3 of them are
dropped (the published decoder trims ``4 - 1`` to line up with the Wan VAE, whose first latent
frame is one frame), so the frame counts are the Wan VAE's, chunk for chunk::

    latent frames      z0 z1 z2 | z3 z4 z5 | ...
    raw frames           12     |   12     |
    emitted frames     12 - 3 = 9 | 12     |       = 1 + 4 (T - 1) first, 4 T after

and the service's frame accounting holds unchanged whichever decoder runs.

Streaming: a memory block needs only its input's last frame from before the chunk, so a chunk is
one pass over all its frames (frames batched), and :class:`TinyDecodeState` carries that frame
per block (zeros before the stream's first frame, as the published decode pads). Decoding a video
in any chunking gives the frames of decoding it whole.

Published key layout (positions in its ``decoder`` ``nn.Sequential``, 3 blocks a stage)::

    decoder.1                conv_in                 decoder.{3+6s+j}.conv.{0,2,4}  block j's c1..c3
    decoder.{7+6s}.conv      stage s's grow          decoder.{8+6s}                 stage s's conv
    decoder.22               conv_out                (0 clamp, 2/21 relu, 6+6s upsample: no weights)

A published grow weight wider than its stage's ``k`` keeps its last rows (the published loader's
rule: the last frame's channels), so a file whose first stage was trained to grow time loads too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "TAEW2_1",
    "TinyDecodeState",
    "TinyDecoderConfig",
    "TinyWanDecoder",
    "is_tiny_decoder_file",
    "load_tiny_decoder",
    "random_tiny_decoder",
    "save_tiny_decoder",
]

_SUFFIXES = (".pth", ".pt", ".safetensors")
_BLOCKS = 3  # memory blocks per stage in the published layout (its key positions assume 3)
_STAGE_KEYS = 3 + 3  # blocks, upsample, grow, conv: published positions per stage
_MARKER = "decoder.1.weight"  # conv_in; the Wan VAE names it decoder.conv1 / decoder.conv_in


@dataclass(frozen=True)
class TinyDecoderConfig:
    """Geometry of a tiny decoder; the published ``taew2_1`` is :data:`TAEW2_1`."""

    widths: tuple[int, int, int, int] = (256, 128, 64, 64)  # conv_in's, then each stage's out
    latent_channels: int = 16
    time_strides: tuple[int, int, int] = (1, 2, 2)  # frames per frame of each stage's grow
    image_channels: int = 3

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {self.widths}")
        if len(self.time_strides) != 3 or min(self.time_strides) < 1:
            raise ValueError(f"time_strides must be 3 positive ints, got {self.time_strides}")

    @property
    def temporal_stride(self) -> int:
        """Frames per latent frame (4 for Wan2.1)."""
        return math.prod(self.time_strides)


TAEW2_1 = TinyDecoderConfig()


@dataclass(slots=True)
class TinyDecodeState:
    """One stream's decoder memory; owned by the session, never by the model.

    Create it with :meth:`TinyWanDecoder.new_decode_state`; reset a stream by creating a new one.
    """

    memory: list[torch.Tensor | None]
    """Per memory block, the last frame of its input ``[B, C, H, W]``; None before the stream's
    first frame (zeros, as the published decode pads)."""
    frames_to_drop: int
    """Leading output frames the stream still drops (``temporal_stride - 1``, then 0)."""
    latent_shape: tuple[int, int, int] | None = field(default=None)
    """``(B, h, w)`` of the latents this state was started with; later chunks must match."""


class _MemoryBlock(nn.Module):
    """``relu(c3(relu(c2(relu(c1([x_t, x_{t-1}]))))) + x_t)`` over frames batched in ``x``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2 * width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(torch.cat([x, past], dim=1)))
        y = self.conv3(F.relu(self.conv2(y)))
        return F.relu(y + x)


class _Stage(nn.Module):
    def __init__(self, width: int, out_width: int, time_stride: int) -> None:
        super().__init__()
        self.time_stride = time_stride
        self.blocks = nn.ModuleList(_MemoryBlock(width) for _ in range(_BLOCKS))
        self.grow = nn.Conv2d(width, width * time_stride, 1, bias=False)
        self.conv = nn.Conv2d(width, out_width, 3, padding=1, bias=False)


class TinyWanDecoder(nn.Module):
    """Shared tiny-decoder weights with per-stream streaming decode; a drop-in for
    :class:`~models.vae.WanVAE` in the generation pipelines (``new_decode_state`` /
    ``decode_chunk``, the same strides and frame counts).

    Args:
        config: the geometry (:data:`TAEW2_1` for the published Wan2.1 decoder).
    """

    spatial_stride = 8  # three 2x upsamples

    def __init__(self, config: TinyDecoderConfig = TAEW2_1) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.conv_in = nn.Conv2d(config.latent_channels, w[0], 3, padding=1)
        self.stages = nn.ModuleList(
            _Stage(w[s], w[s + 1], config.time_strides[s]) for s in range(3)
        )
        self.conv_out = nn.Conv2d(w[3], config.image_channels, 3, padding=1)

    # ------------------------------------------------------------------ geometry

    @property
    def z_dim(self) -> int:
        """Latent channels (16 for Wan2.1)."""
        return self.config.latent_channels

    @property
    def temporal_stride(self) -> int:
        """Output frames per latent frame after the first (4 for Wan2.1)."""
        return self.config.temporal_stride

    # ------------------------------------------------------------------ decode

    def new_decode_state(self) -> TinyDecodeState:
        """A fresh state for one stream (nothing decoded yet)."""
        blocks = sum(len(stage.blocks) for stage in self.stages)
        return TinyDecodeState([None] * blocks, self.temporal_stride - 1)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state: TinyDecodeState) -> torch.Tensor:
        """Decode the next latent frames of one stream, continuing its memory.

        Args:
            latents: ``[B, z_dim, T, h, w]`` generator (normalised) latents, ``T >= 1``.
            state: the stream's :class:`TinyDecodeState`; updated in place.

        Returns:
            ``[B, 3, T_out, 8h, 8w]`` frames in ``[-1, 1]`` in the weights' dtype, with
            ``T_out = 1 + 4 (T - 1)`` for the stream's first chunk and ``4 T`` afterwards.
        """
        return self.forward(latents, state)

    def forward(self, latents: torch.Tensor, state: TinyDecodeState) -> torch.Tensor:
        """:meth:`decode_chunk` with autograd (training); same arguments and result."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim or latents.shape[2] < 1:
            raise ValueError(
                f"latents must be [B, {self.z_dim}, T >= 1, h, w], got {tuple(latents.shape)}"
            )
        b, _, t, h, w = latents.shape
        if state.latent_shape is None:
            state.latent_shape = (b, h, w)
        elif state.latent_shape != (b, h, w):
            raise ValueError(
                f"latents (B, h, w) = {(b, h, w)} do not match the stream's {state.latent_shape}"
            )
        dtype = self.conv_in.weight.dtype
        x = latents.to(dtype).transpose(1, 2).flatten(0, 1)  # [B*T, C, h, w], frames batched
        x = F.relu(self.conv_in(torch.tanh(x / 3.0) * 3.0))
        block = 0
        for stage in self.stages:
            for memory_block in stage.blocks:
                x = memory_block(x, self._past(x, b, state, block))
                block += 1
            x = stage.grow(x)
            # [B*T, k*C, H, W] -> [B*T*k, C, H, W]: channel group i is the frame's i-th child.
            # The grow is 1x1 and the upsample nearest, so growing first (on 4x fewer pixels)
            # gives the published upsample-then-grow's values exactly.
            x = x.unflatten(1, (stage.time_stride, -1)).flatten(0, 1)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = stage.conv(x)
        x = self.conv_out(F.relu(x))
        frames = x.unflatten(0, (b, -1))  # [B, T_raw, 3, H, W]
        drop = min(state.frames_to_drop, frames.shape[1])
        state.frames_to_drop -= drop
        frames = frames[:, drop:].transpose(1, 2)  # [B, 3, T_out, H, W]
        return frames.clamp(0.0, 1.0) * 2.0 - 1.0

    @staticmethod
    def _past(x: torch.Tensor, batch: int, state: TinyDecodeState, block: int) -> torch.Tensor:
        """Each frame's predecessor at this block (the stream's previous chunk for the chunk's
        first frame, zeros before the stream), and keep the chunk's last frame for the next."""
        frames = x.unflatten(0, (batch, -1))  # [B, T, C, H, W]
        held = state.memory[block]
        first = torch.zeros_like(frames[:, :1]) if held is None else held[:, None]
        state.memory[block] = frames[:, -1].detach().clone()
        return torch.cat([first, frames[:, :-1]], dim=1).flatten(0, 1)

    # ------------------------------------------------------------------ published layout

    def published_names(self) -> dict[str, str]:
        """Our parameter name -> its key in the published layout (the one rename table)."""
        names = {"conv_in.weight": "decoder.1.weight", "conv_in.bias": "decoder.1.bias"}
        for s in range(len(self.stages)):
            base = 3 + _STAGE_KEYS * s
            for j in range(_BLOCKS):
                for k, position in enumerate((0, 2, 4)):
                    for p in ("weight", "bias"):
                        names[f"stages.{s}.blocks.{j}.conv{k + 1}.{p}"] = (
                            f"decoder.{base + j}.conv.{position}.{p}"
                        )
            names[f"stages.{s}.grow.weight"] = f"decoder.{base + 4}.conv.weight"
            names[f"stages.{s}.conv.weight"] = f"decoder.{base + 5}.weight"
        end = 3 + _STAGE_KEYS * len(self.stages) + 1
        names["conv_out.weight"] = f"decoder.{end}.weight"
        names["conv_out.bias"] = f"decoder.{end}.bias"
        return names


def is_tiny_decoder_file(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint file in the published tiny-decoder layout (by its keys);
    False for folders, other suffixes, unreadable files and other layouts."""
    path = Path(path)
    if not path.is_file() or path.suffix not in _SUFFIXES:
        return False
    try:
        state = _read_state(path)
    except ValueError:
        return False
    return _MARKER in state


def load_tiny_decoder(
    path: str | Path,
    *,
    time_strides: tuple[int, int, int] = TAEW2_1.time_strides,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TinyWanDecoder:
    """Load a tiny decoder from a file in the published layout (``taew2_1.pth`` or a file
    :func:`save_tiny_decoder` wrote). The widths are read from the weights' shapes; the time
    strides are the latent space's (Wan2.1's by default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not such a checkpoint (one line naming the file and the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiny decoder file does not exist: {str(path)!r}")
    state = _read_state(path)
    if _MARKER not in state:
        raise ValueError(
            f"{path} is not a tiny-decoder (TAEHV taew2_1) checkpoint: it has no {_MARKER!r}"
        )
    config = _config_of(path, state, time_strides)
    with torch.device("meta"):
        model = TinyWanDecoder(config)
    expected = model.state_dict()
    ours = {}
    for name, key in model.published_names().items():
        if key not in state:
            raise ValueError(f"{path}: tiny-decoder key {key!r} is missing")
        tensor = state[key]
        want = expected[name].shape
        if name.endswith("grow.weight") and tensor.shape[1:] == want[1:]:
            rows = tensor.shape[0]
            if rows > want[0] and rows % want[1] == 0:
                tensor = tensor[-want[0] :]  # the published rule: keep the last frame's rows
        if tensor.shape != want:
            raise ValueError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, the tiny decoder of widths "
                f"{config.widths} expects {tuple(want)}"
            )
        ours[name] = tensor.to(dtype)
    model.load_state_dict(ours, strict=True, assign=True)
    return model.to(device).eval()


def save_tiny_decoder(model: TinyWanDecoder, path: str | Path) -> None:
    """Write ``model``'s weights in the published layout (safetensors or ``.pth`` by suffix)."""
    path = Path(path)
    state = model.state_dict()
    published = {
        key: state[name].detach().cpu().contiguous()
        for name, key in model.published_names().items()
    }
    if path.suffix == ".safetensors":
        save_file(published, path)
    else:
        torch.save(published, path)


def random_tiny_decoder(config: TinyDecoderConfig = TAEW2_1, seed: int = 0) -> TinyWanDecoder:
    """A tiny decoder with seeded random weights (speed measurements, tests); the global RNG
    is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyWanDecoder(config).eval()


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, or ``ValueError`` (one line) when it is not one."""
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"{path} is not a checkpoint file; expected one of {_SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # a pickle, zip or safetensors error: say what, in one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable checkpoint: {reason}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} is not a plain state dict of named tensors")
    return state


def _config_of(
    path: Path, state: dict[str, torch.Tensor], time_strides: tuple[int, int, int]
) -> TinyDecoderConfig:
    """The geometry of a published-layout state: conv_in, each stage's conv and conv_out."""
    convs = [_MARKER] + [f"decoder.{3 + _STAGE_KEYS * s + 5}.weight" for s in range(3)]
    convs.append(f"decoder.{3 + _STAGE_KEYS * 3 + 1}.weight")
    for key in convs:
        if key not in state or state[key].ndim != 4:
            raise ValueError(f"{path}: tiny-decoder key {key!r} is missing or not a conv weight")
    widths = tuple(int(state[key].shape[0]) for key in convs[:4])
    return TinyDecoderConfig(
        widths=widths,
        latent_channels=int(state[_MARKER].shape[1]),
        time_strides=time_strides,
        image_channels=int(state[convs[4]].shape[0]),
    )
