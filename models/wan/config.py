"""Configuration of the Wan2.1 text-to-video DiT, with named presets."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WAN_PRESETS", "WanConfig", "wan_config"]


@dataclass(frozen=True)
class WanConfig:
    """Sizes of a Wan2.1 DiT; the constructor arguments of :class:`CausalWanModel`.

    Attributes:
        dim: hidden size of the transformer (1.3B: 1536).
        ffn_dim: hidden size of each block's feed-forward network.
        num_heads: attention heads; ``dim // num_heads`` is the head size.
        num_layers: transformer blocks.
        freq_dim: size of the sinusoidal timestep embedding.
        in_channels, out_channels: latent channels in and out (the Wan VAE has 16).
        patch_size: (frames, rows, columns) of latent per token.
        text_dim: width of the text encoder's output (umT5-XXL: 4096).
        text_len: text tokens per prompt, padding included (umT5: 512).
        eps: epsilon of every LayerNorm and RMSNorm.
    """

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not a multiple of num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for the rotary embedding")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even")
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size={self.patch_size} must be (frames, rows, columns)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def token_grid(self, rows: int, columns: int) -> tuple[int, int]:
        """Tokens per latent frame of ``rows`` x ``columns`` latent pixels, as (rows, columns)."""
        return (rows // self.patch_size[1], columns // self.patch_size[2])


WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "tiny": WanConfig(
        dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=64
    ),
    # the shipped toy-world generator (models/toyworld/checkpoints/generator): the text encoder
    # of ``tiny``, enough width and depth to tie colours and shapes to the prompt, and room for
    # the longest toy-world prompt in bytes (130 with its eos): at 64, over half the training
    # prompts lost their second sprite and their background to truncation
    "toyworld": WanConfig(
        dim=128, ffn_dim=512, num_heads=4, num_layers=4, freq_dim=64, text_dim=32, text_len=160
    ),
    # a wider, deeper candidate for the toy-world generator (issue 26's training runs)
    "toyworld-m": WanConfig(
        dim=192, ffn_dim=768, num_heads=3, num_layers=6, freq_dim=64, text_dim=32, text_len=160
    ),
    # the two reading a prompt as words (a closed vocabulary, models.text.WordTokenizer): the
    # longest toy-world prompt is 27 words and its eos
    "toyworld-words": WanConfig(
        dim=128, ffn_dim=512, num_heads=4, num_layers=4, freq_dim=64, text_dim=32, text_len=32
    ),
    "toyworld-m-words": WanConfig(
        dim=192, ffn_dim=768, num_heads=3, num_layers=6, freq_dim=64, text_dim=32, text_len=32
    ),
    # twice as deep, grown from a trained toyworld-m-words (models/toyworld/deepen.py)
    "toyworld-l-words": WanConfig(
        dim=192, ffn_dim=768, num_heads=3, num_layers=12, freq_dim=64, text_dim=32, text_len=32
    ),
    # the same two with a token per latent pixel: 64x64 video is an 8x8 latent, so Wan's 2x2
    # patch leaves 4x4 tokens a frame, each wider than a sprite
    "toyworld-p1": WanConfig(
        dim=128,
        ffn_dim=512,
        num_heads=4,
        num_layers=4,
        freq_dim=64,
        patch_size=(1, 1, 1),
        text_dim=32,
        text_len=160,
    ),  # fmt: skip
    "toyworld-m-p1": WanConfig(
        dim=192,
        ffn_dim=768,
        num_heads=3,
        num_layers=6,
        freq_dim=64,
        patch_size=(1, 1, 1),
        text_dim=32,
        text_len=160,
    ),  # fmt: skip
}


def wan_config(name: str) -> WanConfig:
    """The preset called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return WAN_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown Wan preset {name!r}; known: {sorted(WAN_PRESETS)}") from None
