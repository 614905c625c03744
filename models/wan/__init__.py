"""The causal Wan2.1 text-to-video DiT (LongLive / Self-Forcing weights, original key names)."""

from framestream.models.wan.checkpoint_error import CheckpointError
from framestream.models.wan.checkpoint_lora import merge_lora
from framestream.models.wan.checkpoint_wan import expected_wan_shapes
from framestream.models.wan.config import WAN_PRESETS, WanConfig, wan_config
from framestream.models.wan.loader import (
    check_state_dict,
    detect_wan_layout,
    load_wan_weights,
    read_wan_state_dict,
)
from framestream.models.wan.model import CausalWanModel, TextConditioning

__all__ = [
    "WAN_PRESETS",
    "CausalWanModel",
    "CheckpointError",
    "TextConditioning",
    "WanConfig",
    "check_state_dict",
    "detect_wan_layout",
    "expected_wan_shapes",
    "load_wan_weights",
    "merge_lora",
    "read_wan_state_dict",
    "wan_config",
]
