"""Streaming decode and encode with the Wan2.1 VAE (diffusers' ``AutoencoderKLWan``),
caller-owned state.

diffusers decodes a whole video in one call and keeps the causal-convolution feature cache on
the module (``self._feat_map``), so one instance can serve only one stream at a time, and it
loops over latent frames. This wrapper decodes a whole chunk per pass
(:func:`~models.vae_causal.decode_frames`) with the history held in a :class:`DecodeState` that
the session owns. Any number of streams can share one set of weights and be decoded
interleaved, chunk by chunk, and the frames are the same as a whole-video decode of the
concatenated latents::

    latent frames    z0 | z1 z2 | z3 z4 z5 | ...     (any chunking)
    output frames     1 |  4  4 |  4  4  4 | ...     first latent frame -> 1 frame, later -> 4
    3-latent chunks  [z0 z1 z2] -> 9 frames, [z3 z4 z5] -> 12 frames, ...

Latents come in the generator's normalised space and are de-normalised here
(``z * latents_std + latents_mean``, per channel, from the diffusers config) before decoding.

Encoding streams the same way, with an :class:`EncodeState` per stream (a restyle session's
input): the causal encoder takes a stream's first ``1 + 4k`` frames, then ``4k`` at a time
(:func:`~models.vae_causal.encode_frames`), and the posterior means of any chunking equal a
whole-clip ``encode``'s, normalised (``(mean - latents_mean) / latents_std``)::

    input frames      9 | 12 | 12 | ...      (a LongLive / Rolling Forcing chunk's frames)
    latent frames     3 |  3 |  3 | ...      first frame -> 1, then 4 frames -> 1

On CUDA every convolution runs channels-last (weights ``channels_last_3d`` / ``channels_last``,
latents ``channels_last_3d``, so every activation, history frame and per-frame 2D view stays
NDHWC, cuDNN's layout). Without it the decoder went channels-last anyway from the mid block's
attention on (its reshape back to frames is NHWC, and cuDNN and the elementwise ops keep a
layout), so the gain is small: the temporal up-sampling's interleave no longer falls back to
NCHW (docs/perf-notes.md, change 5). Other devices keep the default layout, bit for bit.

Weights load from a local diffusers-layout folder (``vae/config.json`` plus weights, or that
folder itself) or from the original ``Wan2.1_VAE.pth``, whose keys are renamed with diffusers'
own ``convert_wan_vae_to_diffusers``. Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file
from torch import nn

from framestream.models.vae_causal import History, check_wan21_layout, decode_frames, encode_frames

__all__ = ["DecodeState", "EncodeState", "WanVAE", "from_uint8", "tiny_wan_vae", "to_uint8"]

_ORIGINAL_SUFFIXES = (".pth", ".pt", ".safetensors")
# local files only; without accelerate installed diffusers would warn about low_cpu_mem_usage
_LOCAL = {"local_files_only": True, "low_cpu_mem_usage": False}


@dataclass(slots=True)
class DecodeState:
    """One stream's causal-decoder state; owned by the session, never by the model.

    Create it with :meth:`WanVAE.new_decode_state`; reset a stream by creating a new one.
    """

    history: History = field(default_factory=list)
    """Per temporal convolution of the decoder, its last input frames (see
    :data:`~models.vae_causal.History`); empty before the stream's first frame."""
    latent_shape: tuple[int, int, int] | None = field(default=None)
    """``(B, h, w)`` of the latents this state was started with; later chunks must match."""


@dataclass(slots=True)
class EncodeState:
    """One stream's causal-encoder state; owned by the session, never by the model.

    Create it with :meth:`WanVAE.new_encode_state`; reset a stream by creating a new one.
    """

    history: History = field(default_factory=list)
    """Per temporal convolution (and temporal down-sampling) of the encoder, its last input
    frames; empty before the stream's first frame."""
    frame_shape: tuple[int, int, int] | None = field(default=None)
    """``(B, H, W)`` of the frames this state was started with; later chunks must match."""


class WanVAE(nn.Module):
    """Shared Wan VAE weights with per-stream streaming decode and encode.

    The convolution weights' memory layout follows the device: channels-last on the device
    types in :attr:`channels_last_devices`, the default layout elsewhere, set at construction
    and after every ``.to()`` / ``.cuda()`` / ``.float()`` (as ``nn.RNNBase`` re-flattens its
    weights after a move). Values are never changed, only strides.

    Args:
        vae: a diffusers ``AutoencoderKLWan`` (Wan2.1 layout, or any smaller config of it).
    """

    channels_last_devices: tuple[str, ...] = ("cuda",)
    """Device types whose convolutions run channels-last (cuDNN's fastest layout)."""

    def __init__(self, vae: AutoencoderKLWan) -> None:
        super().__init__()
        check_wan21_layout(vae)
        self.vae = vae
        z_dim = vae.config.z_dim
        device = vae.post_quant_conv.weight.device
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device)
        # fp32 [1, z_dim, 1, 1, 1]; not saved (they live in the diffusers config)
        self.register_buffer("latents_mean", mean.view(1, z_dim, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, z_dim, 1, 1, 1), persistent=False)
        self._lay_out()

    def _apply(self, fn, recurse=True):  # every .to(), .cuda(), .half(), ... ends here
        super()._apply(fn, recurse)
        self._lay_out()
        return self

    @property
    def memory_format(self) -> torch.memory_format:
        """``channels_last_3d`` where the weights sit on a channels-last device, else
        ``contiguous_format``: the layout of the decoder's 5D activations."""
        device = self.vae.post_quant_conv.weight.device
        if device.type in self.channels_last_devices:
            return torch.channels_last_3d
        return torch.contiguous_format

    def _lay_out(self) -> None:
        """Give every convolution weight the layout of :attr:`memory_format` (same values)."""
        channels_last = self.memory_format == torch.channels_last_3d
        for module in self.vae.modules():
            if isinstance(module, nn.Conv3d | nn.Conv2d):
                layout = torch.contiguous_format
                if channels_last:
                    is_3d = isinstance(module, nn.Conv3d)
                    layout = torch.channels_last_3d if is_3d else torch.channels_last
                module.weight.data = module.weight.data.contiguous(memory_format=layout)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> WanVAE:
        """Load from local files only.

        Args:
            path: one of
                * a diffusers model folder (``<root>/vae``, holding ``config.json``),
                * a diffusers pipeline folder holding ``vae/config.json``,
                * the original ``Wan2.1_VAE.pth`` (or ``.pt`` / ``.safetensors`` with the
                  original key names), which always has the Wan2.1 geometry (the diffusers
                  default config).
            dtype: parameter dtype, for example ``torch.bfloat16`` on an accelerator.
            device: where the weights go.

        Raises:
            FileNotFoundError: ``path`` does not exist or holds no VAE config; the message
                names the path.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Wan VAE path does not exist: {str(path)!r}")
        if path.is_file():
            if path.suffix not in _ORIGINAL_SUFFIXES:
                raise ValueError(
                    f"Wan VAE file {str(path)!r} is not a checkpoint; expected one of "
                    f"{_ORIGINAL_SUFFIXES} or a diffusers folder"
                )
            vae = _load_original(path)
        elif (path / "config.json").is_file():
            vae = AutoencoderKLWan.from_pretrained(path, **_LOCAL, torch_dtype=dtype)
        elif (path / "vae" / "config.json").is_file():
            vae = AutoencoderKLWan.from_pretrained(
                path, subfolder="vae", **_LOCAL, torch_dtype=dtype
            )
        else:
            raise FileNotFoundError(
                f"no Wan VAE config in {str(path)!r}: expected config.json or vae/config.json"
            )
        if vae.dtype != dtype:  # the original checkpoint loads in its stored dtype
            vae = vae.to(dtype=dtype)
        return cls(vae.eval().to(device=device))

    # ------------------------------------------------------------------ geometry

    @property
    def z_dim(self) -> int:
        """Latent channels (16 for Wan2.1)."""
        return self.vae.config.z_dim

    @property
    def spatial_stride(self) -> int:
        """Output pixels per latent pixel along H and W (8 for Wan2.1)."""
        return self.vae.config.scale_factor_spatial

    @property
    def temporal_stride(self) -> int:
        """Output frames per latent frame after the first (4 for Wan2.1)."""
        return self.vae.config.scale_factor_temporal

    # ------------------------------------------------------------------ decode

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Map generator latents to VAE latents: ``z * latents_std + latents_mean`` per channel.

        Args:
            latents: ``[B, z_dim, T, h, w]`` in the generator's normalised space.

        Returns:
            ``[B, z_dim, T, h, w]`` fp32 latents ready for the VAE decoder.
        """
        return latents.float() * self.latents_std.float() + self.latents_mean.float()

    def new_decode_state(self) -> DecodeState:
        """A fresh state for one stream (nothing decoded yet)."""
        return DecodeState()

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Decode the next latent frames of one stream, continuing its causal cache.

        Args:
            latents: ``[B, z_dim, T, h, w]`` generator (normalised) latents, ``T >= 1``.
            state: the stream's :class:`DecodeState`; updated in place.

        Returns:
            ``[B, 3, T_out, h * 8, w * 8]`` frames in ``[-1, 1]`` in the VAE's dtype, with
            ``T_out = 1 + 4 * (T - 1)`` for the stream's first chunk and ``4 * T`` afterwards.
            :func:`to_uint8` turns them into displayable frames.
        """
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(
                f"latents must be [B, {self.z_dim}, T, h, w], got {tuple(latents.shape)}"
            )
        shape = (latents.shape[0], latents.shape[3], latents.shape[4])
        if state.latent_shape is None:
            state.latent_shape = shape
        elif state.latent_shape != shape:
            raise ValueError(
                f"latents (B, h, w) = {shape} do not match the stream's {state.latent_shape}"
            )
        dtype = self.vae.post_quant_conv.weight.dtype
        x = self.denormalize(latents).to(dtype).contiguous(memory_format=self.memory_format)
        x = self.vae.post_quant_conv(x)
        return decode_frames(self.vae.decoder, x, state.history).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ encode

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Map VAE latents to generator latents: ``(z - latents_mean) / latents_std``; the
        inverse of :meth:`denormalize`, in fp32."""
        return (latents.float() - self.latents_mean.float()) / self.latents_std.float()

    def new_encode_state(self) -> EncodeState:
        """A fresh encoder state for one stream (nothing encoded yet)."""
        return EncodeState()

    @torch.no_grad()
    def encode_chunk(self, frames: torch.Tensor, state: EncodeState) -> torch.Tensor:
        """Encode the next frames of one stream, continuing its causal cache.

        Args:
            frames: ``[B, 3, T, H, W]`` in ``[-1, 1]`` (:func:`from_uint8` of pixels), ``H`` and
                ``W`` multiples of 8; ``T = 1 + 4k`` for the stream's first chunk, then ``4k``.
            state: the stream's :class:`EncodeState`; updated in place.

        Returns:
            ``[B, z_dim, T', H / 8, W / 8]`` fp32 posterior means in the generator's normalised
            space, ``T' = 1 + (T - 1) / 4`` for the first chunk and ``T / 4`` afterwards.
        """
        stride = self.spatial_stride
        if (
            frames.ndim != 5
            or frames.shape[1] != 3
            or frames.shape[3] % stride
            or (frames.shape[4] % stride)
        ):
            raise ValueError(
                f"frames must be [B, 3, T, H, W] with H and W multiples of {stride}, got "
                f"{tuple(frames.shape)}"
            )
        shape = (frames.shape[0], frames.shape[3], frames.shape[4])
        if state.frame_shape is None:
            state.frame_shape = shape
        elif state.frame_shape != shape:
            raise ValueError(
                f"frames (B, H, W) = {shape} do not match the stream's {state.frame_shape}"
            )
        dtype = self.vae.quant_conv.weight.dtype
        x = frames.to(dtype).contiguous(memory_format=self.memory_format)
        moments = self.vae.quant_conv(encode_frames(self.vae, x, state.history))
        return self.normalize(moments[:, : self.z_dim])


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Turn displayable frames into encoder input; the inverse of :func:`to_uint8`.

    Args:
        pixels: uint8 ``[B, T, H, W, 3]`` (RGB, channels last).

    Returns:
        fp32 ``[B, 3, T, H, W]`` in ``[-1, 1]``, on the same device.
    """
    return pixels.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Convert decoded frames to displayable pixels.

    Args:
        video: ``[B, 3, T, H, W]`` in ``[-1, 1]`` (as returned by :meth:`WanVAE.decode_chunk`).

    Returns:
        uint8 ``[B, T, H, W, 3]`` (RGB, channels last), on the same device.
    """
    pixels = ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1)


def tiny_wan_vae(seed: int = 0, base_dim: int = 8) -> WanVAE:
    """A small Wan VAE with seeded random weights, for tests, CPU runs and toy-world training.

    Same architecture and strides as Wan2.1 (z_dim 16, spatial 8, temporal 4), one residual
    block per level; ``base_dim`` 8 is ~0.2 M parameters. The global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=base_dim,
            z_dim=16,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    return WanVAE(vae.eval())


def _load_original(path: Path) -> AutoencoderKLWan:
    """Load an original-layout Wan2.1 VAE checkpoint through diffusers' key conversion."""
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    state = convert_wan_vae_to_diffusers(state)
    with torch.device("meta"):
        vae = AutoencoderKLWan()
    vae.load_state_dict(state, strict=True, assign=True)
    return vae
