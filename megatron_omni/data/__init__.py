"""The omni data pipeline: manifest -> decoded media -> chat-template tokens with TMRoPE ids -> batches.

    tokenizer = load_tokenizer(model_dir)                 # or a toy set's tokenizer folder
    processor = OmniProcessor(tokenizer, DataConfig(packing=True))
    dataset = OmniDataset.from_manifest("train.jsonl", processor)
    loader = OmniLoader.from_config(dataset, ResumableBatchSampler(len(dataset), 32, dp_rank, dp_size, seed),
                                    micro_batch_size=4)
    for micro_batch in loader.next_step(): ...           # OmniBatch

See docs/DATA.md.
"""
from megatron_omni.data.batch import OmniBatch, SkippedSample, pack, pad
from megatron_omni.data.config import DataConfig
from megatron_omni.data.dataset import Collator, OmniDataset
from megatron_omni.data.errors import DataError, ManifestError, MediaError, SampleTooLongError
from megatron_omni.data.loader import OmniLoader
from megatron_omni.data.manifest import ExtractedClues, OmniSample, load_manifest, write_manifest
from megatron_omni.data.media import SampleMedia, load_media
from megatron_omni.data.processor import OmniProcessor, ProcessedSample, attach_completion
from megatron_omni.data.rope_index import RopeIndexSpec, extend_positions, get_rope_index
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.data.tokenizer import SpecialTokenIds, build_tokenizer, load_tokenizer, special_token_ids
from megatron_omni.data.toy import ToyDatasetPaths, make_toy_dataset
from megatron_omni.data.toy_wheel import write_toy_emotion_wheel

__all__ = [
    "Collator", "DataConfig", "DataError", "ExtractedClues", "ManifestError", "MediaError", "OmniBatch",
    "OmniDataset", "OmniLoader", "OmniProcessor", "OmniSample", "ProcessedSample", "ResumableBatchSampler",
    "RopeIndexSpec", "SampleMedia", "SampleTooLongError", "SkippedSample", "SpecialTokenIds", "ToyDatasetPaths",
    "attach_completion", "build_tokenizer", "extend_positions", "get_rope_index", "load_manifest", "load_media",
    "load_tokenizer", "make_toy_dataset", "pack", "pad", "special_token_ids", "write_manifest",
    "write_toy_emotion_wheel",
]
