"""The SANA-WM miniature: config, camera conditioning, layers, streaming state, backbone."""

from world_model.model.backbone import WorldModelBackbone, timestep_embedding
from world_model.model.camera import CameraInputs, camera_inputs
from world_model.model.config import WorldModelConfig
from world_model.model.state import StreamState, init_state, state_nbytes

__all__ = [
    "CameraInputs",
    "StreamState",
    "WorldModelBackbone",
    "WorldModelConfig",
    "camera_inputs",
    "init_state",
    "state_nbytes",
    "timestep_embedding",
]
