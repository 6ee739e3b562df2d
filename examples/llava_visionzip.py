"""Answer a question about an image with a LLaVA or LLaVA-NeXT checkpoint, with VisionZip.

The checkpoint must already be on disk (this script never downloads), for example::

    hf download llava-hf/llava-1.5-7b-hf --local-dir ~/models/llava-1.5-7b-hf
    python examples/llava_visionzip.py ~/models/llava-1.5-7b-hf photo.jpg "What is in this image?"

    hf download llava-hf/llava-v1.6-mistral-7b-hf --local-dir ~/models/llava-next
    python examples/llava_visionzip.py ~/models/llava-next photo.jpg "Describe it." \\
        --dominant 54 --contextual 10 --device cuda --dtype float16

It prints how many visual tokens the language model sees without and with VisionZip, and the
answer generated with VisionZip.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
)

from visionzip_kernels.integrations import apply_visionzip

MODEL_CLASSES = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_path", type=Path, help="local directory of a llava-hf checkpoint")
    parser.add_argument("image_path", type=Path, help="the image to ask about")
    parser.add_argument("prompt", help="the question")
    parser.add_argument(
        "--dominant", type=int, default=54, help="kept tokens per image (per crop), CLS included"
    )
    parser.add_argument(
        "--contextual", type=int, default=10, help="merged tokens per image (per crop)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs (default: cuda if present, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="default: float16 on CUDA, float32 elsewhere",
    )
    return parser.parse_args()


def load(model_path: Path, device: str, dtype: torch.dtype):
    """The model and processor stored under ``model_path``; exits with a clear message if absent."""
    if not (model_path / "config.json").is_file():
        raise SystemExit(
            f"No checkpoint at {model_path} (no config.json). Download it first, e.g. "
            f"`hf download llava-hf/llava-1.5-7b-hf --local-dir {model_path}`; "
            "this script does not download."
        )
    try:
        config = AutoConfig.from_pretrained(model_path, local_files_only=True)
        if config.model_type not in MODEL_CLASSES:
            raise SystemExit(
                f"{model_path} holds a {config.model_type!r} model; this script runs "
                f"{sorted(MODEL_CLASSES)}"
            )
        processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
        model_class = MODEL_CLASSES[config.model_type]
        model = model_class.from_pretrained(model_path, dtype=dtype, local_files_only=True)
    except OSError as error:
        raise SystemExit(
            f"Could not load the checkpoint at {model_path} (are all weight files there?): {error}"
        )
    return model.to(device).eval(), processor


def build_prompt(processor, question: str) -> str:
    """The checkpoint's chat template around one image and the question, or LLaVA-1.5's format."""
    if processor.chat_template is None:
        return f"USER: {processor.image_token}\n{question} ASSISTANT:"
    content = [{"type": "image"}, {"type": "text", "text": question}]
    conversation = [{"role": "user", "content": content}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def visual_tokens(processor, prompt: str, image: Image.Image) -> int:
    """How many image placeholders the processor writes for ``image``."""
    input_ids = processor(text=prompt, images=image, return_tensors="pt")["input_ids"]
    return int((input_ids == processor.image_token_id).sum())


def main() -> None:
    args = parse_args()
    if not args.image_path.is_file():
        raise SystemExit(f"No image at {args.image_path}")
    if args.dtype is not None:
        dtype = DTYPES[args.dtype]
    else:
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model, processor = load(args.model_path, args.device, dtype)
    image = Image.open(args.image_path).convert("RGB")
    prompt = build_prompt(processor, args.prompt)

    before = visual_tokens(processor, prompt, image)
    with apply_visionzip(model, processor, dominant=args.dominant, contextual=args.contextual):
        after = visual_tokens(processor, prompt, image)
        inputs = processor(text=prompt, images=image, return_tensors="pt").to(model.device, dtype)
        with torch.inference_mode():
            output_ids = model.generate(
                **inputs, max_new_tokens=args.max_new_tokens, do_sample=False
            )
    new_ids = output_ids[0, inputs["input_ids"].shape[1] :]
    answer = processor.decode(new_ids, skip_special_tokens=True)
    print(f"visual tokens: {before} without VisionZip, {after} with it")
    print(answer.strip())


if __name__ == "__main__":
    main()
