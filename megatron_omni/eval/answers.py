"""The answer text of a model's output, before it is read as emotion words
(`megatron_omni.eval.parsing`).

- `tag_answer` (`--answer-parser tags`, the default): the last `<answer>` block, or the whole
  output when it has none.
- `LLMAnswerParser` (`--answer-parser llm`): the official MER-UniBench step. Every raw output goes
  to an LLM (the official one is Qwen2.5-7B-Instruct) with the official prompt and sampling, and
  the reply, cleaned as the official code cleans it, is the answer text.
"""
from __future__ import annotations

from megatron_omni.eval.llm_endpoint import ChatEndpoint
from megatron_omni.text.completion import extract_answer

# MERTools, MER2025/MER2025_Track23/toolkit/utils/qwen.py, reason_to_openset_qwen: the f-string's
# line continuations leave one line; {reason} is the model's raw output. Sent as the only
# (user) message, as get_completion_qwen_bacth does.
OFFICIAL_OPENSET_PROMPT = (
    "Please assume the role of an expert in the field of emotions. We provide clues that may be related to the "
    "emotions of the characters. Based on the provided clues, please identify the emotional states of the main "
    "character. The main character is the one with the most detailed clues. Please separate different emotional "
    "categories with commas and output only the clearly identifiable emotional categories in a list format. If none "
    "are identified, please output an empty list. Input: We cannot recognize his emotional state; Output: [] "
    "Input: His emotional state is happy, sad, and angry; Output: [happy, sad, angry] Input: {reason}; Output: "
)
# The same file's SamplingParams (MER2025_Track23/evaluation.py, func_read_batch_calling_model);
# repetition_penalty is a vLLM / SGLang extension of the OpenAI request.
OFFICIAL_PARSER_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_tokens": 512}

# func_postprocess_qwen: leading labels the model sometimes echoes, in the official order.
_ECHOED_LABELS = ("输入", "输出", "翻译", "让我们来翻译一下：", "output", "Output", "input", "Input")


def postprocess_reply(reply: str) -> str:
    """The official `func_postprocess_qwen`: strip, drop one echoed label of each kind (in order),
    then one leading colon, and remove newlines."""
    text = reply.strip()
    for label in _ECHOED_LABELS:
        if text.startswith(label):
            text = text[len(label):]
    text = text.strip()
    for colon in (":", "："):
        if text.startswith(colon):
            text = text[len(colon):]
    return text.strip().replace("\n", "").strip()


def tag_answer(output: str) -> str:
    """The `<answer>` block's text, or the whole output when there is no tag."""
    answer = extract_answer(output)
    return output if answer is None else answer


class LLMAnswerParser:
    """Every output through the official LLM parsing prompt (cached and retried by the endpoint)."""

    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint

    def __call__(self, output: str) -> str:
        reply = self.endpoint.complete(OFFICIAL_OPENSET_PROMPT.format(reason=output), sampling=OFFICIAL_PARSER_SAMPLING)
        return postprocess_reply(reply)
