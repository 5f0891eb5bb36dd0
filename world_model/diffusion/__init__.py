"""Flow matching: schedules, the chunk-causal training objective, the few-step sampler."""

from world_model.diffusion.flow_matching import FlowMatchingConfig, flow_matching_loss, sample_chunk_times
from world_model.diffusion.sampler import commit_chunk, sample_chunk
from world_model.diffusion.schedule import logit_normal_times, sampling_times, shift_time

__all__ = [
    "FlowMatchingConfig",
    "commit_chunk",
    "flow_matching_loss",
    "logit_normal_times",
    "sample_chunk",
    "sample_chunk_times",
    "sampling_times",
    "shift_time",
]
