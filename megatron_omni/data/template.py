"""The Qwen-Omni chat template for emotion reasoning: prompt text and assistant target.

Rendered exactly as the model's own Jinja template renders a system message and a user turn
whose content is [image] [video] [audio] text (``<|im_start|>role\\n ... <|im_end|>\\n``), followed
by the generation prompt ``<|im_start|>assistant\\n``. Media appear as one placeholder each in the
tokenizer's own strings (``ModalityTokens.placeholder``: Qwen2.5-Omni's
``<|vision_bos|><|VIDEO|><|vision_eos|>``, Qwen3-Omni's ``<|vision_start|><|video_pad|><|vision_end|>``...);
the processor expands them to the right number of tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from megatron_omni.data.tokenizer import IM_END, IM_START, QWEN2_5_OMNI_TOKENS, ModalityTokens

QWEN_OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
EMOTION_QUESTION = (
    "As an expert in emotion analysis, use the person's facial expressions, the tone of the voice and "
    "the subtitle to infer their emotional state. Write the visual and audio evidence you rely on "
    "inside <think> </think>, then give every fitting emotion word, separated by commas, inside "
    "<answer> </answer>."
)


@dataclass
class PromptConfig:
    system_prompt: str = QWEN_OMNI_SYSTEM_PROMPT
    question: str = EMOTION_QUESTION
    subtitle_prefix: str = "Subtitle: "
    # OmniOPSD's teacher sees the evidence-aware rationale after the question; the student never
    # does. "{description}" is replaced by the sample's rationale.
    privileged_template: str = "Reference analysis: {description}"


def user_text(subtitle: str, cfg: PromptConfig, privileged_context: str | None = None) -> str:
    parts = []
    if subtitle.strip():
        parts.append(f'{cfg.subtitle_prefix}"{subtitle.strip()}"')
    parts.append(cfg.question)
    if privileged_context:
        parts.append(cfg.privileged_template.replace("{description}", privileged_context.strip()))
    return "\n".join(parts)


def render_prompt(*, has_video: bool, has_audio: bool, subtitle: str, cfg: PromptConfig,
                  privileged_context: str | None = None, has_image: bool = False,
                  tokens: ModalityTokens = QWEN2_5_OMNI_TOKENS) -> str:
    """System + user turn + generation prompt, with one placeholder per medium in ``tokens``' strings.

    ``has_audio`` means a separate audio block; audio carried inside the video (interleaved with
    it) has no placeholder of its own.
    """
    present = {"image": has_image, "video": has_video, "audio": has_audio}
    media = "".join(tokens.placeholder(medium) for medium, present in present.items() if present)
    return (
        f"{IM_START}system\n{cfg.system_prompt}{IM_END}\n"
        f"{IM_START}user\n{media}{user_text(subtitle, cfg, privileged_context)}{IM_END}\n"
        f"{IM_START}assistant\n"
    )


def format_target(reasoning: str, emotions: Iterable[str]) -> str:
    """The assistant's answer in the trained format (without the closing ``<|im_end|>``)."""
    return f"<think>{reasoning.strip()}</think><answer>{', '.join(emotions)}</answer>"
