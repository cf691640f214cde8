"""megatron_omni: megatron-core training of omni-modal emotion-reasoning language models."""
import warnings

# megatron-core announces each fallback it takes when Transformer Engine / apex are absent (the
# normal state of a CPU machine); the fallbacks are expected, the repeated warnings are noise.
for _pattern in (
    r".*Transformer Engine and Apex are not installed.*",
    r".*Apex is not installed.*",
    r".*full scope is deprecated.*",
    r".*CUDA_DEVICE_MAX_CONNECTIONS.*",
):
    warnings.filterwarnings("ignore", message=_pattern, category=UserWarning)
