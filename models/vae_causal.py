"""Chunk-parallel forward of diffusers' Wan2.1 VAE (``AutoencoderKLWan``), history held outside.

diffusers runs the causal encoder four frames at a time and the decoder one latent frame at a
time, carrying each causal convolution's last two input frames in ``feat_cache``: decoding T
latent frames is T passes through every layer, each a string of small kernels. Causality makes
that loop unnecessary. A temporal-kernel-3 causal convolution over frames ``[a, b)`` needs only
the two input frames before ``a``, so this module walks the same modules with whole chunks, one
pass per chunk, given that history::

    history = []
    decode_frames(decoder, z[:, :, :1], history)     # 1 frame
    decode_frames(decoder, z[:, :, 1:4], history)    # 12 frames, one pass through the layers
    ...                                              # == diffusers' decode of all of z

Temporal resampling follows diffusers exactly:

* decoder (``upsample3d``): the stream's first frame skips the temporal up-convolution and stays
  one frame; every later frame becomes two, the convolution seeing zeros before frame 1;
* encoder (``downsample3d``): the stream's first frame is kept; stride-2 windows over all frames
  follow, a later chunk's starting at the frame before it.

The encoder walks the same way: :func:`encode_frames` takes a stream's first ``1 + 4k`` frames, then
``4k`` at a time, each call continuing the history (a restyle stream's input, 9 frames then 12 per
chunk); :func:`encode_video` encodes a whole clip in one call (training and offline encoding). The
temporal down-sampling's history is the last frame it saw, so every later chunk's stride-2 windows
line up with a whole clip's. Everything else (norms, activations, the per-frame attention block,
spatial resampling) acts frame by frame and is called as diffusers' own modules, except where a
causal convolution reads ``silu(norm(x))``: there one buffer holds the history frames and then
``silu(norm(x))``, written in one pass (:func:`kernels.triton_vae.rms_norm_silu_into` where
:func:`kernels.fused_kernels` says so, else its torch twin), and the convolution pads H and W
itself, so no ``torch.cat`` / ``F.pad`` copies are made::

    buf [B, C, 2 + T, H, W]:   | past (zeros before the stream) | silu(norm(x)) |
    conv3d(buf, padding=(0, 1, 1)) -> [B, C', T, H, W];  history <- buf[:, :, -2:]

Only the Wan2.1 layout (``is_residual=False``, no patchify) is supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanAttentionBlock,
    WanCausalConv3d,
    WanDecoder3d,
    WanMidBlock,
    WanResample,
    WanResidualBlock,
    WanRMS_norm,
)
from torch import nn

from framestream.kernels.attention import fused_kernels
from framestream.kernels.norms import rms_norm_silu_into_ref

__all__ = ["History", "check_wan21_layout", "decode_frames", "encode_frames", "encode_video"]

_CONTEXT = 2  # input frames of history a temporal-kernel-3 causal convolution needs
# The fused kernel computes in float32; float64 (the exactness tests) stays on the torch twin.
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

History = list[torch.Tensor | None]
"""One stream's decoder history: per temporal convolution, in call order, ``None`` before the
stream's first frame, then its last ``<= 2`` input frames ``[B, C, t, h, w]``."""


class _Walk:
    """Hands out history slots in call order; the call order is fixed by the module tree.

    ``fused``: run the Triton norm kernel (:func:`kernels.fused_kernels` of the input's device).
    """

    def __init__(self, history: History, fused: bool) -> None:
        self.history = history
        self.fused = fused
        self._next = 0

    def _slot(self) -> int:
        if self._next == len(self.history):
            self.history.append(None)
        self._next += 1
        return self._next - 1

    def causal(self, conv: WanCausalConv3d, x: torch.Tensor) -> torch.Tensor:
        if conv._padding[4] == 0:  # no temporal context (1x1x1 shortcuts)
            return conv(x)
        slot = self._slot()
        buf = _causal_input(self.history[slot], x, x.dtype)
        buf[:, :, _CONTEXT:].copy_(x)
        return self._convolve(slot, conv, buf)

    def norm_silu_conv(
        self, norm: nn.Module, nonlinearity: nn.Module, conv: WanCausalConv3d, x: torch.Tensor
    ) -> torch.Tensor:
        """``self.causal(conv, nonlinearity(norm(x)))``, the norm and SiLU written in one pass
        into the convolution's input buffer where they are ``WanRMS_norm`` and SiLU."""
        if not (_is_rms_norm(norm) and type(nonlinearity) is nn.SiLU and conv._padding[4]):
            return self.causal(conv, nonlinearity(norm(x)))
        slot = self._slot()
        dtype = torch.promote_types(x.dtype, norm.gamma.dtype)  # as the module's product
        buf = _causal_input(self.history[slot], x, dtype)
        out = buf[:, :, _CONTEXT:]
        kernel_dtypes = x.dtype in _FUSED_DTYPES and dtype in _FUSED_DTYPES
        if self.fused and kernel_dtypes and _channels_last(x):
            from framestream.kernels.triton_vae import (
                rms_norm_silu_into,  # triton may be missing elsewhere
            )

            rms_norm_silu_into(x, norm.gamma, out)
        else:
            rms_norm_silu_into_ref(x, norm.gamma, out)
        return self._convolve(slot, conv, buf)

    def _convolve(self, slot: int, conv: WanCausalConv3d, buf: torch.Tensor) -> torch.Tensor:
        """``conv`` over ``buf`` from :func:`_causal_input`, H and W zero-padded by the
        convolution itself; ``buf``'s last frames become the slot's history."""
        assert conv._padding[4] == _CONTEXT, "a causal conv with temporal kernel 3"
        self.history[slot] = buf[:, :, -_CONTEXT:].detach().clone()
        padding = (0, conv._padding[2], conv._padding[0])  # (T, H, W); time's is in buf
        weight, bias = conv.weight, conv.bias
        return F.conv3d(buf, weight, bias, conv.stride, padding, conv.dilation, conv.groups)

    def upsample(self, resample: WanResample, x: torch.Tensor) -> torch.Tensor:
        if resample.mode == "upsample3d":
            slot = self._slot()
            past = self.history[slot]
            head = None
            if past is None:  # the stream's first frame passes without the temporal conv
                head, x = x[:, :, :1], x[:, :, 1:]
                past = torch.cat([torch.zeros_like(head)] * _CONTEXT, dim=2)  # head's layout
            if x.shape[2]:
                doubled = resample.time_conv(x, past)  # [B, 2C, t, h, w]
                past = _last_frames(past, x)
                x = _interleave(doubled)
                x = x if head is None else torch.cat([head, x], dim=2)
            else:
                x = head
            self.history[slot] = past
        return _per_frame(resample.resample, x)

    def residual(self, block: WanResidualBlock, x: torch.Tensor) -> torch.Tensor:
        skip = block.conv_shortcut(x)
        x = self.norm_silu_conv(block.norm1, block.nonlinearity, block.conv1, x)
        if block.dropout.p and block.dropout.training:
            x = self.causal(block.conv2, block.dropout(block.nonlinearity(block.norm2(x))))
        else:  # dropout is the identity
            x = self.norm_silu_conv(block.norm2, block.nonlinearity, block.conv2, x)
        return x + skip

    def downsample(self, resample: WanResample, x: torch.Tensor) -> torch.Tensor:
        x = _per_frame(resample.resample, x)
        if resample.mode != "downsample3d":
            return x
        slot = self._slot()
        past = self.history[slot]
        self.history[slot] = x[:, :, -1:].detach().clone()
        if past is None:  # the stream's first frame is kept; the windows start at it
            if x.shape[2] == 1:
                return x
            return torch.cat([x[:, :, :1], resample.time_conv(x)], dim=2)
        return resample.time_conv(torch.cat([past, x], dim=2))

    def mid(self, block: WanMidBlock, x: torch.Tensor) -> torch.Tensor:
        x = self.residual(block.resnets[0], x)
        for attention, resnet in zip(block.attentions, block.resnets[1:], strict=True):
            x = self.residual(resnet, attention(x))
        return x


def _is_rms_norm(norm: nn.Module) -> bool:
    """Whether ``norm`` is exactly what the fused path computes: ``WanRMS_norm`` over channels,
    scale ``sqrt(C)``, no bias."""
    return (
        type(norm) is WanRMS_norm
        and norm.channel_first
        and isinstance(norm.bias, float)
        and norm.bias == 0.0
        and norm.scale == norm.gamma.shape[0] ** 0.5
    )


def _channels_last(x: torch.Tensor) -> bool:
    """Whether each batch entry of ``x [B, C, T, H, W]`` is dense NDHWC: a channels-last tensor
    or a time slice of one (a chunk split off a longer latent)."""
    return x[:1].is_contiguous(memory_format=torch.channels_last_3d)


def _causal_input(past: torch.Tensor | None, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``[B, C, 2 + T, H, W]`` buffer in ``x``'s layout whose first two frames are ``past``
    (``<= 2`` frames), zero-padded in front as diffusers pads (all zeros for None, before a
    stream's first frame); the ``T`` frames after them are left for the caller to write."""
    b, c, t, h, w = x.shape
    layout = torch.channels_last_3d if _channels_last(x) else torch.contiguous_format
    shape = (b, c, _CONTEXT + t, h, w)
    buf = torch.empty(shape, dtype=dtype, device=x.device, memory_format=layout)
    held = 0 if past is None else past.shape[2]
    buf[:, :, : _CONTEXT - held].zero_()
    if held:
        buf[:, :, _CONTEXT - held : _CONTEXT].copy_(past)
    return buf


def _last_frames(past: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The last ``_CONTEXT`` frames of ``past`` then ``x``, copied off the chunk's activations;
    only a chunk shorter than the context needs ``past`` (a whole-chunk copy otherwise)."""
    if past is not None and x.shape[2] < _CONTEXT:
        x = torch.cat([past, x], dim=2)
    return x[:, :, -_CONTEXT:].detach().clone()


def _interleave(doubled: torch.Tensor) -> torch.Tensor:
    """``[B, 2C, t, h, w]`` -> ``[B, C, 2t, h, w]``: the channel halves are the two output frames
    of each input frame. One copy, into ``doubled``'s layout (channels-last stays so)."""
    b, c2, t, h, w = doubled.shape
    pairs = doubled.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, C, t, 2, h, w]
    if doubled.is_contiguous() or not doubled.is_contiguous(memory_format=torch.channels_last_3d):
        return pairs.reshape(b, c2 // 2, 2 * t, h, w)
    # contiguous(): for t == 1 a reshape would be a view with the frames inside each row
    channels_last = pairs.permute(0, 2, 3, 4, 5, 1).contiguous().view(b, 2 * t, h, w, c2 // 2)
    return channels_last.permute(0, 4, 1, 2, 3)


def _per_frame(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of ``[B, C, T, H, W]``.

    Channels-last ``x`` flattens to ``[B*T, C, H, W]`` channels-last as a view, and the result
    comes back the same way: no copy. (In the default layout the flattened frames are strided,
    and a convolution copies them.)
    """
    b, _, t = x.shape[:3]
    y = module(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


def check_wan21_layout(vae: AutoencoderKLWan) -> None:
    """Raise ``ValueError`` unless ``vae`` has the Wan2.1 layout this module walks."""
    if vae.config.patch_size is not None or vae.config.is_residual:
        raise ValueError(
            "only the Wan2.1 VAE layout (no patchify, no residual blocks) is supported, got "
            f"patch_size={vae.config.patch_size}, is_residual={vae.config.is_residual}"
        )


def encode_video(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """The encoder's moments of whole clips, as ``vae.encode`` computes them.

    Args:
        vae: a Wan2.1-layout ``AutoencoderKLWan``.
        video: ``[B, 3, 1 + 4k, H, W]`` in ``[-1, 1]``.

    Returns:
        ``[B, 2 z_dim, 1 + k, H/8, W/8]``: means then log-variances (``quant_conv`` applied), the
        parameters diffusers' ``DiagonalGaussianDistribution`` takes.
    """
    check_wan21_layout(vae)
    return vae.quant_conv(encode_frames(vae, video, []))


def encode_frames(vae: AutoencoderKLWan, video: torch.Tensor, history: History) -> torch.Tensor:
    """Encode the next frames of one stream in one pass, continuing ``history``.

    Args:
        vae: a Wan2.1-layout ``AutoencoderKLWan``.
        video: ``[B, 3, T, H, W]`` in ``[-1, 1]``: ``T = 1 + 4k`` for a stream's first call
            (``history == []``), ``T = 4k`` (``k >= 1``) afterwards.
        history: the stream's :data:`History`, ``[]`` for a new stream; updated in place.

    Returns:
        ``[B, 2 z_dim, T', H/8, W/8]`` before ``quant_conv``, ``T' = 1 + k`` for the first call
        and ``k`` afterwards: concatenated, what :func:`encode_video` computes of all the frames
        before its ``quant_conv``.
    """
    stride, first = vae.config.scale_factor_temporal, not history
    frames = video.shape[2] if video.ndim == 5 else 0
    if frames < (1 if first else stride) or (frames - first) % stride:
        expected = "1 + 4k" if first else "4k (k >= 1) after the first call"
        raise ValueError(f"video must be [B, 3, {expected}, H, W], got {tuple(video.shape)}")
    encoder, walk = vae.encoder, _Walk(history, fused_kernels(video.device))
    x = walk.causal(encoder.conv_in, video)
    for layer in encoder.down_blocks:
        if isinstance(layer, WanResidualBlock):
            x = walk.residual(layer, x)
        elif isinstance(layer, WanAttentionBlock):
            x = layer(x)
        else:
            x = walk.downsample(layer, x)
    x = walk.mid(encoder.mid_block, x)
    return walk.norm_silu_conv(encoder.norm_out, encoder.nonlinearity, encoder.conv_out, x)


def decode_frames(decoder: WanDecoder3d, x: torch.Tensor, history: History) -> torch.Tensor:
    """Decode the next latent frames of one stream in one pass, continuing ``history``.

    Args:
        decoder: ``vae.decoder`` of a Wan2.1-layout ``AutoencoderKLWan``.
        x: ``[B, z_dim, T, h, w]`` after ``post_quant_conv``, ``T >= 1``.
        history: the stream's :data:`History`, ``[]`` for a new stream; updated in place.

    Returns:
        ``[B, 3, T_out, 8h, 8w]`` unclamped, ``T_out = 1 + 4 (T - 1)`` for a stream's first
        call and ``4 T`` afterwards.
    """
    walk = _Walk(history, fused_kernels(x.device))
    x = walk.causal(decoder.conv_in, x)
    x = walk.mid(decoder.mid_block, x)
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            x = walk.residual(resnet, x)
        if block.upsamplers is not None:
            x = walk.upsample(block.upsamplers[0], x)
    return walk.norm_silu_conv(decoder.norm_out, decoder.nonlinearity, decoder.conv_out, x)
