"""The causal Wan2.1 text-to-video DiT (LongLive / Self-Forcing weights, original key names)."""

from models.wan.config import WAN_PRESETS, WanConfig, wan_config
from models.wan.model import CausalWanModel, TextConditioning

__all__ = ["WAN_PRESETS", "CausalWanModel", "TextConditioning", "WanConfig", "wan_config"]
