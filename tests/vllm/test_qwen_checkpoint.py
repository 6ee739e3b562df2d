"""``benchmarks/qwen2_5_vl_checkpoint.py``: Qwen2.5-VL-7B's geometry, which vLLM resolves to the
VisionZip subclass with the switch on, and its processor's placeholder for one image."""
from __future__ import annotations

import sys
from pathlib import Path

from vllm.engine.arg_utils import EngineArgs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import qwen2_5_vl_checkpoint as checkpoint  # noqa: E402


def test_the_checkpoint_is_qwen2_5_vl_7b_with_few_layers(tmp_path):
    checkpoint.write_checkpoint(tmp_path, lm_layers=2)
    arguments = EngineArgs(model=str(tmp_path), load_format="dummy", hf_overrides={"visionzip": {}})
    config = arguments.create_model_config()
    assert config.architecture == "Qwen2_5_VLForConditionalGeneration"
    vision, text = config.hf_config.vision_config, config.hf_config.text_config
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.out_hidden_size) == (32, 1280, 16, 3584)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (3584, 2, 28)
    processor = checkpoint.make_processor()
    ids = processor.tokenizer(checkpoint.make_prompt("w1 w2"))["input_ids"]
    assert ids.count(config.hf_config.image_token_id) == 1
